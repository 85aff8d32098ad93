"""Requirement IDs, read from ``SPEC.md``: the single source the cases cite."""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

SPEC_PATH = Path(__file__).with_name("SPEC.md")

_LINE = re.compile(r"^- \*\*(?P<id>[A-Z]+-\d+)\*\* (?P<level>MUST|SHOULD): (?P<text>.+)$")


class Level(enum.StrEnum):
    MUST = "MUST"
    SHOULD = "SHOULD"


@dataclass(frozen=True, slots=True)
class Requirement:
    id: str
    level: Level
    text: str

    @property
    def suite(self) -> str:
        return self.id.partition("-")[0]


class SpecError(ValueError):
    """SPEC.md is malformed, or a case cites an ID it does not state."""


@cache
def requirements() -> dict[str, Requirement]:
    """Every requirement in SPEC.md, by ID, in document order."""
    return parse(SPEC_PATH)


def parse(path: Path) -> dict[str, Requirement]:
    """Every requirement stated in the file at ``path``, by ID, in document order."""
    found: dict[str, Requirement] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.startswith("- **"):
            continue
        match = _LINE.match(line)
        if match is None:
            raise SpecError(f"{path.name}:{number}: cannot parse requirement line: {line!r}")
        req = Requirement(match["id"], Level(match["level"]), match["text"])
        if req.id in found:
            raise SpecError(f"{path.name}:{number}: {req.id} is stated twice.")
        found[req.id] = req
    return found


def requirement(case_id: str) -> Requirement:
    try:
        return requirements()[case_id]
    except KeyError:
        raise SpecError(f"Case ID {case_id!r} is not stated in SPEC.md.") from None


def matches_prefix(case_id: str, prefix: str) -> bool:
    """Whether ``case_id`` is selected by ``prefix``.

    ``FUNC`` and ``FUNC-1`` select FUNC-1; ``FUNC-1`` does not select FUNC-10.
    """
    return (
        case_id == prefix
        or case_id.startswith(prefix + "-")
        or (prefix.endswith("-") and case_id.startswith(prefix))
    )
