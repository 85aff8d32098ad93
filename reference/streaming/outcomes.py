"""How a run ends: the status to record and the terminal event to send.

One constructor per way of ending, so the coordinator states *which* ending
happened and this module states what each one looks like to a client.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from .events import encode_data
from .states import TaskStatus


@dataclass(frozen=True, slots=True)
class Outcome:
    status: TaskStatus
    #: The terminal event's type.
    event_type: str
    data: Mapping[str, Any]
    #: Recorded in the task's ``error`` column.
    error: str = ""

    def noting(self, detail: str, **data: Any) -> Outcome:
        """The same ending, with more said about it."""
        return replace(self, data={**self.data, **data}, error=f"{self.error}{detail}")


def completed(result: object) -> Outcome:
    """The ``complete`` event with the mapping returned, or a failure if JSON cannot carry it."""
    data: dict[str, Any] = {"message": "Task completed successfully"}
    if isinstance(result, Mapping):
        data.update(result)
        try:
            encode_data(data)
        except (ValueError, TypeError) as exc:
            return failed(ValueError(f"process() returned data that is not strict JSON: {exc}"))
    return Outcome(TaskStatus.SUCCESSFUL, "complete", data)


def cancelled(reason: str) -> Outcome:
    return Outcome(
        TaskStatus.CANCELLED,
        "cancelled",
        {"message": "Task was cancelled", "reason": reason},
        error=f"cancelled: {reason}",
    )


def interrupted(why: str) -> Outcome:
    # Stopped by a shutdown, or lost with its process: the work was
    # interrupted, not refused, and may be run again.
    return Outcome(
        TaskStatus.INTERRUPTED,
        "interrupted",
        {"message": "Task was interrupted; it may be run again", "reason": why},
        error=f"interrupted: {why}",
    )


def timed_out(seconds: float) -> Outcome:
    return Outcome(
        TaskStatus.TIMED_OUT,
        "timeout",
        {"message": f"Task exceeded its timeout of {seconds:g}s", "timeout": seconds},
        error=f"timed out after {seconds:g}s",
    )


def failed(exc: BaseException) -> Outcome:
    """An ``error`` event naming the exception; a group lists its leaves in ``errors``."""
    data: dict[str, Any] = {"error_type": type(exc).__name__, "message": str(exc)}
    if isinstance(exc, BaseExceptionGroup):
        data["errors"] = [
            {"error_type": type(leaf).__name__, "message": str(leaf)} for leaf in _leaves(exc)
        ]
    return Outcome(TaskStatus.FAILED, "error", data, error=f"{type(exc).__name__}: {exc}")


def _leaves(group: BaseExceptionGroup[Any]) -> list[BaseException]:
    leaves: list[BaseException] = []
    for exc in group.exceptions:
        leaves.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return leaves
