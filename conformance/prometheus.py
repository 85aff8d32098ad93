"""Read Prometheus' text exposition format (0.0.4), for the metrics cases (OPS-10, OPS-11).

The suite grades any implementation's ``/metrics``, so it reads the format
itself instead of depending on one client library. Each line is a comment
(``# HELP``, ``# TYPE``, or any other ``#``), blank, or one sample::

    name{label="value",other="v"} 1.5 [timestamp]

A line that is none of these fails the case, saying which line it was.
"""

from __future__ import annotations

import math
import re

#: A sample: the metric's name and its labels, to its value.
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]

_SAMPLE = re.compile(
    r"(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)"
    r"(?:\{(?P<labels>.*)\})?"
    r"[ \t]+(?P<value>\S+)"
    r"(?:[ \t]+-?\d+)?[ \t]*"
)
_LABEL = re.compile(
    r'[ \t]*(?P<name>[a-zA-Z_][a-zA-Z0-9_]*)[ \t]*=[ \t]*"(?P<value>(?:[^"\\]|\\.)*)"'
)
_ESCAPES = {"\\\\": "\\", '\\"': '"', "\\n": "\n"}
_VALUES = {"+Inf": math.inf, "-Inf": -math.inf, "NaN": math.nan}


class ExpositionError(AssertionError):
    """The text is not in Prometheus' exposition format."""


def parse(text: str) -> Samples:
    """Every sample of ``text``; :class:`ExpositionError` at the first line that is not one."""
    samples: Samples = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        match = _SAMPLE.fullmatch(line)
        if match is None:
            raise ExpositionError(f"line {number} of the metrics is not a sample: {line!r}")
        labels = _labels(match["labels"] or "", number, line)
        samples[(match["name"], labels)] = _value(match["value"], number, line)
    return samples


def _labels(text: str, number: int, line: str) -> frozenset[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    position = 0
    while position < len(text.rstrip(", \t")):
        match = _LABEL.match(text, position)
        if match is None:
            raise ExpositionError(f"line {number} of the metrics has bad labels: {line!r}")
        value = re.sub(r"\\[\\\"n]", lambda m: _ESCAPES[m[0]], match["value"])
        found.append((match["name"], value))
        position = match.end()
        while position < len(text) and text[position] in ", \t":
            position += 1
    return frozenset(found)


def _value(text: str, number: int, line: str) -> float:
    if text in _VALUES:
        return _VALUES[text]
    try:
        return float(text)
    except ValueError:
        raise ExpositionError(f"line {number} of the metrics has no number: {line!r}") from None


__all__ = ["ExpositionError", "Samples", "parse"]
