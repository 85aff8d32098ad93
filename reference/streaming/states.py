"""Task states and the one guard every status change goes through.

The allowed paths::

    READY -> RUNNING -> SUCCESSFUL | FAILED | CANCELLED | TIMED_OUT | INTERRUPTED
    READY -> CANCELLED                 (cancelled before it started)
    FAILED | CANCELLED | TIMED_OUT | INTERRUPTED -> RUNNING
                                       (run again: retry_task(), or an interrupted
                                        run with attempts left, see leases.py)

The guard is enforced twice, both in :meth:`StreamTask.atransition`: in
Python, each status a caller moves from is checked with
:func:`check_transition` before anything is written, so a caller asking for
a path the model does not have raises :class:`InvalidTransition`; in the
database, the change is one ``UPDATE ... WHERE status IN (sources)``, so two
processes racing for the same task cannot both win.
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


#: Where each way of starting a run moves a task from.
START_FROM = frozenset({TaskStatus.READY})
RETRY_FROM = frozenset(
    {TaskStatus.FAILED, TaskStatus.CANCELLED, TaskStatus.TIMED_OUT, TaskStatus.INTERRUPTED}
)
RERUN_FROM = frozenset({TaskStatus.INTERRUPTED})

#: target -> the statuses it may be reached from.
SOURCES: dict[TaskStatus, frozenset[TaskStatus]] = {
    TaskStatus.RUNNING: START_FROM | RETRY_FROM,
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
