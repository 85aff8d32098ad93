"""The event as the reference carries it, and the kinds of event it sends itself."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

#: The event types that end a run; the coordinator records exactly one per run.
TERMINAL_TYPES = frozenset({"complete", "error", "cancelled", "timeout", "interrupted"})
#: Control events that end one client's stream without ending the task.
FAREWELL = "shutdown"
OVERFLOW = "overflow"
#: Says that some events a resuming client asked for are gone.
STREAM_RESET = "stream-reset"
#: Tells clients what the server waits on (a lost run's lease) before the task can end.
WAITING = "waiting"
#: Events about one client's stream, outside the task's sequence of ids: each
#: carries the id of the last event before it, so that a client's
#: ``Last-Event-ID`` stays the id of a real event.
CONTROL_TYPES = frozenset({FAREWELL, OVERFLOW, STREAM_RESET, WAITING})
#: What a task's event type may be. It is written into the SSE frame as it is
#: (``event: <type>``), so a line break in it would write frames of its own
#: into every client's stream; SPEC's FUNC-19 allows these characters only.
EVENT_TYPE = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def encode_data(data: Mapping[str, Any]) -> str:
    """``data`` as strict JSON text (RFC 8259); ValueError for NaN or an infinity.

    Browsers read event data with ``JSON.parse``, which refuses the ``NaN``
    and ``Infinity`` that Python's encoder writes by default (FUNC-20).
    Values JSON has no type for are written as their ``str()``.
    """
    return json.dumps(data, default=str, allow_nan=False)


def now_iso() -> str:
    return datetime.now(UTC).isoformat()


@dataclass(frozen=True, slots=True)
class Event:
    """One event of one task. Ids increase by one per event of a run, never reused."""

    id: int
    type: str
    data: Mapping[str, Any]
    task_id: int | str
    model: str
    timestamp: str
    #: Reconnect delay hint in milliseconds (SSE ``retry:``), for farewells.
    retry: int | None = None

    @property
    def key(self) -> str:
        return f"{self.model}:{self.task_id}"

    def to_json(self) -> str:
        """The event as stored in a task's ``final_event``."""
        return json.dumps(
            {
                "id": self.id,
                "type": self.type,
                "data": dict(self.data),
                "task_id": self.task_id,
                "model": self.model,
                "timestamp": self.timestamp,
            },
            default=str,
        )

    @classmethod
    def from_json(cls, stored: str) -> Event:
        fields = json.loads(stored)
        return cls(
            id=fields["id"],
            type=fields["type"],
            data=fields["data"],
            task_id=fields["task_id"],
            model=fields["model"],
            timestamp=fields["timestamp"],
        )
