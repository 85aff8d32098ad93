"""Events as the implementation carries them: an envelope per event, and its SSE frame.

A contract :class:`~conformance.contract.Event` is what a client sees. The
:class:`Envelope` around it adds what fan-out needs: a size estimate (for the
memory bounds), whether the event is a control event (farewell, overflow,
stream-reset: never counted against a client's queue, never kept in history),
and the event's SSE frame, encoded once however many clients stream it.

Frames are JSON with ``ensure_ascii``: newlines, carriage returns, NUL and
astral characters all leave as escapes, so no data can end an SSE line early
or forge a field (EDGE-19).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from conformance.contract import (
    FAREWELL_EVENT,
    OVERFLOW_EVENT,
    STREAM_RESET_EVENT,
    TERMINAL_EVENTS,
    Event,
)

__all__ = [
    "RESERVED_EVENTS",
    "Envelope",
    "approx_size",
    "check_event_type",
    "check_json",
    "envelope",
    "envelope_from_record",
    "model_name",
    "now",
    "record_of",
]

#: Event types only the implementation sends.
RESERVED_EVENTS = TERMINAL_EVENTS | {FAREWELL_EVENT, OVERFLOW_EVENT, STREAM_RESET_EVENT}

#: SPEC FUNC-19: 1 to 64 ASCII letters, digits, "-", "_" or ".".
_EVENT_TYPE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_NOT_A_NAME = re.compile(r"[^A-Za-z0-9_]+")


def now() -> str:
    """The current time, ISO 8601 with a UTC offset (FUNC-3)."""
    return datetime.now(UTC).isoformat()


def model_name(path: str) -> str:
    """The model (URL segment) of the task kind whose behaviour is at ``path``.

    The function's name keeps URLs readable; a digest of the whole
    ``module:qualname`` keeps two kinds whose functions share a name apart.
    """
    readable = _NOT_A_NAME.sub("_", path.rpartition(":")[2].rpartition(".")[2]).strip("_")
    digest = hashlib.sha1(path.encode(), usedforsecurity=False).hexdigest()[:8]
    return f"{readable or 'task'}-{digest}"


def check_event_type(type: str) -> None:
    """Refuse an event type a task may not send: reserved, or outside SPEC's characters."""
    if not isinstance(type, str) or not _EVENT_TYPE.fullmatch(type):
        raise ValueError(
            f"Cannot send an event of type {type!r}: a type is 1 to 64 ASCII letters, "
            "digits, '-', '_' or '.'."
        )
    if type in RESERVED_EVENTS:
        raise ValueError(
            f"Cannot send a {type!r} event: the implementation sends {sorted(RESERVED_EVENTS)} "
            "itself. Send another type, or return from the task to complete it."
        )


def approx_size(value: Any, depth: int = 0) -> int:
    """Roughly how many bytes ``value`` takes in JSON: enough to bound memory, never exact."""
    if isinstance(value, str | bytes):
        return len(value) + 2
    if depth > 32:
        return 64
    if isinstance(value, Mapping):
        return 2 + sum(len(str(k)) + 4 + approx_size(v, depth + 1) for k, v in value.items())
    if isinstance(value, list | tuple):
        return 2 + sum(1 + approx_size(v, depth + 1) for v in value)
    return 16


@dataclass(slots=True, eq=False)
class Envelope:
    """One event on its way to clients."""

    event: Event
    size: int
    #: Farewell, overflow and stream-reset: per-client notices, not events of the task.
    control: bool = False
    _frame: bytes | None = field(default=None, repr=False)

    @property
    def id(self) -> int:
        return self.event.id

    @property
    def is_terminal(self) -> bool:
        return self.event.type in TERMINAL_EVENTS

    def frame(self, retry_ms: int | None = None) -> bytes:
        """The SSE frame; ``retry_ms`` adds a ``retry:`` field (the farewell's)."""
        if retry_ms is not None:
            return _encode(self.event, retry_ms)
        if self._frame is None:
            self._frame = _encode(self.event, None)
        return self._frame


def _encode(event: Event, retry_ms: int | None) -> bytes:
    payload = dict(event.data)
    payload.update(_task_id=event.task_id, _model=event.model, _timestamp=event.timestamp)
    data = json.dumps(payload, default=str)
    lines = [f"event: {event.type}", f"data: {data}", f"id: {event.id}"]
    if retry_ms is not None:
        lines.append(f"retry: {retry_ms}")
    return ("\n".join(lines) + "\n\n").encode()


def envelope(
    task_id: int,
    model: str,
    event_id: int,
    type: str,
    data: Mapping[str, Any],
    *,
    control: bool = False,
    timestamp: str | None = None,
) -> Envelope:
    """A new envelope; ``data`` is copied, so the sender may reuse its mapping."""
    copied = dict(data)
    event = Event(event_id, type, copied, str(task_id), model, timestamp or now())
    return Envelope(event, approx_size(copied), control)


def check_json(what: str, data: Mapping[str, Any]) -> None:
    """Refuse data that is not strict JSON (SPEC FUNC-20: no NaN, no infinity)."""
    try:
        json.dumps(data, default=str, allow_nan=False)
    except ValueError as exc:
        raise ValueError(f"Cannot send {what}: its data is not strict JSON ({exc}).") from None


def record_of(event: Event) -> dict[str, Any]:
    """The JSON-ready form a terminal event is stored in."""
    return {"id": event.id, "type": event.type, "data": dict(event.data), "at": event.timestamp}


def envelope_from_record(task_id: int, model: str, record: Mapping[str, Any]) -> Envelope:
    """An envelope for an event read back from the database."""
    return envelope(
        task_id,
        model,
        int(record["id"]),
        str(record["type"]),
        record.get("data") or {},
        timestamp=str(record["at"]),
    )
