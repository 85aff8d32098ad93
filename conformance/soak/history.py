"""The soak's history: one JSON object a line, everything the harness did and saw.

A soak writes it as it goes, and the checker (:mod:`.checker`) judges it
afterwards, or later on a saved file. Every record has ``kind`` and ``t``,
seconds since the soak began on the harness's monotonic clock; a request and
a state read also have ``t0``, when they were sent, so the checker can order
an answer against what was sent after it. The kinds:

``meta``
    The first line: implementation, seed, duration, workers, the declared
    timings, the fault schedule, and the bounds the checker holds the run
    to (``recovery_bound`` seconds, ``memory_bound`` bytes), stated up front.
``task``
    A task created: ``task`` (``model/id``), ``behaviour``, ``timeout``,
    ``max_attempts``.
``request``
    A command sent to a worker: ``op`` (``start``, ``cancel``, ``retry``),
    ``task``, ``worker``, and the answer: ``status`` and ``answer`` (its JSON
    or text), or ``error`` when none came.
``state``
    A read of a task's stored state: ``status``, ``attempt``; ``final`` on
    the reads made after the run, the final rows.
``open`` / ``event`` / ``close``
    One connection of a client (``client``, ``conn``): opened on ``worker``
    with ``last_event_id`` (null for none), answered ``status``; each event
    with its ``id`` and ``type`` (and, for the control events, the ids they
    name); how it ended (``how``: ``end``, ``left``, ``cut``, ``error``).
``client``
    A client is done: ``role`` and ``stayed``, whether it meant to read its
    task's stream to the end (the checker holds only those to a terminal event).
``fault``
    A fault: ``fault``, ``target``, ``phase`` (``start`` or ``end``).
``worker``
    A worker process up (``pid``) or gone (``code``).
``memory``
    A worker's resident memory: ``worker``, ``pid``, ``rss`` bytes.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, TextIO

#: One record of a history.
Record = dict[str, Any]

__all__ = ["History", "Record", "read_history"]


class History:
    """Writes records to a JSON-lines file as they happen, each flushed at once.

    ``t`` is stamped here, from one monotonic clock, unless the record
    brings its own. A crash of the harness still leaves every line so far.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file: TextIO = self.path.open("w", encoding="utf-8")
        self._began = time.monotonic()
        self._lock = threading.Lock()
        self.counts: dict[str, int] = {}

    def now(self) -> float:
        """Seconds since the history began."""
        return round(time.monotonic() - self._began, 4)

    def write(self, kind: str, /, **fields: Any) -> Record:
        """Append one record of ``kind``; return it."""
        t = fields.pop("t") if "t" in fields else self.now()
        record: Record = {"kind": kind, "t": t, **fields}
        line = json.dumps(record, separators=(",", ":"), default=str)
        with self._lock:
            self._file.write(line + "\n")
            self._file.flush()
            self.counts[kind] = self.counts.get(kind, 0) + 1
        return record

    def close(self) -> None:
        with self._lock:
            self._file.close()

    def __enter__(self) -> History:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_history(path: str | Path) -> list[Record]:
    """Every record of a saved history, each with ``line``, its line number."""
    records = []
    with Path(path).open(encoding="utf-8") as file:
        for number, line in enumerate(file, 1):
            if line.strip():
                record = json.loads(line)
                record["line"] = number
                records.append(record)
    return records


def iter_kind(records: list[Record], *kinds: str) -> Iterator[Record]:
    """The records of the given kinds, in order."""
    return (r for r in records if r["kind"] in kinds)


def format_record(record: Mapping[str, Any]) -> str:
    """One record as the checker quotes it: its line number, then its JSON."""
    rest = {k: v for k, v in record.items() if k != "line"}
    return f"{record.get('line', '?'):>6}: {json.dumps(rest, separators=(',', ':'), default=str)}"
