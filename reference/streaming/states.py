"""Task states and the one guard every status change goes through.

The allowed paths::

    READY -> RUNNING -> SUCCESSFUL | FAILED | CANCELLED | TIMED_OUT | INTERRUPTED
    READY -> CANCELLED                 (cancelled before it started)
    INTERRUPTED -> RUNNING             (started again after a shutdown or crash)

The guard is enforced twice: :func:`check_transition` in Python, and in the
database by writing every change as ``UPDATE ... WHERE status IN (sources)``
(see :meth:`StreamTask.atransition`), so two processes racing for the same
task cannot both win.
"""

from __future__ import annotations

from django.db import models


class TaskStatus(models.TextChoices):
    # Created, not started yet.
    READY = "READY"
    # Started; process() is running on some coordinator.
    RUNNING = "RUNNING"
    # process() returned.
    SUCCESSFUL = "SUCCESSFUL"
    # process() raised.
    FAILED = "FAILED"
    # Stopped on request; Django's django.tasks has no such state.
    CANCELLED = "CANCELLED"
    # Ran past its timeout.
    TIMED_OUT = "TIMED_OUT"
    # Stopped by a shutdown or a lost worker, not by request; may run again.
    INTERRUPTED = "INTERRUPTED"

    @property
    def is_finished(self) -> bool:
        return self not in (TaskStatus.READY, TaskStatus.RUNNING)


#: target -> the statuses it may be reached from.
SOURCES: dict[TaskStatus, frozenset[TaskStatus]] = {
    TaskStatus.RUNNING: frozenset({TaskStatus.READY, TaskStatus.INTERRUPTED}),
    TaskStatus.SUCCESSFUL: frozenset({TaskStatus.RUNNING}),
    TaskStatus.FAILED: frozenset({TaskStatus.RUNNING}),
    TaskStatus.CANCELLED: frozenset({TaskStatus.READY, TaskStatus.RUNNING}),
    TaskStatus.TIMED_OUT: frozenset({TaskStatus.RUNNING}),
    TaskStatus.INTERRUPTED: frozenset({TaskStatus.RUNNING}),
}


class InvalidTransition(Exception):
    """A status change the state model does not allow."""


def check_transition(current: str, target: TaskStatus) -> None:
    """Raise :class:`InvalidTransition` unless ``current -> target`` is allowed."""
    if current not in SOURCES.get(target, ()):
        allowed = ", ".join(sorted(SOURCES.get(target, ())))
        raise InvalidTransition(
            f"Cannot move a task from {current} to {target}: "
            f"{target} is reached only from {allowed or 'nowhere'}."
        )
