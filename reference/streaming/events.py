"""The event as the reference carries it, and the terminal event types."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

#: The event types that end a task's stream; the coordinator sends exactly one per run.
TERMINAL_TYPES = frozenset({"complete", "error", "cancelled", "timeout"})
#: Control events that end one client's stream without ending the task.
FAREWELL = "shutdown"
OVERFLOW = "overflow"
STREAM_RESET = "stream-reset"


def now_iso() -> str:
    return datetime.now(UTC).isoformat()


@dataclass(frozen=True, slots=True)
class Event:
    """One event of one task. ``id`` increases by one per event, from 1."""

    id: int
    type: str
    data: Mapping[str, Any]
    task_id: int | str
    model: str
    timestamp: str
    #: Reconnect delay hint in milliseconds (SSE ``retry:``), for farewells.
    retry: int | None = None

    def payload(self) -> dict[str, Any]:
        """The JSON object a client receives: the data plus the ``_``-prefixed metadata."""
        return {
            **self.data,
            "_task_id": self.task_id,
            "_model": self.model,
            "_timestamp": self.timestamp,
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": self.type,
            "data": dict(self.data),
            "task_id": self.task_id,
            "model": self.model,
            "timestamp": self.timestamp,
        }

    @classmethod
    def from_dict(cls, stored: Mapping[str, Any]) -> Event:
        return cls(
            id=stored["id"],
            type=stored["type"],
            data=stored["data"],
            task_id=stored["task_id"],
            model=stored["model"],
            timestamp=stored["timestamp"],
        )
