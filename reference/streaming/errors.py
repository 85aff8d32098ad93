"""What the coordinator raises to its callers (the server, the adapter, commands)."""

from __future__ import annotations

from collections.abc import Sequence


class UnknownTask(LookupError):
    """No such task model, or no task with that id."""

    def __init__(self, message: str, *, known: Sequence[str] = ()) -> None:
        super().__init__(message)
        #: The task models there are, for a message to someone allowed to know.
        self.known = tuple(known)


class CoordinatorClosed(RuntimeError):
    """The coordinator refuses new work: it is shutting down or has shut down."""


class NothingMissed(Exception):
    """A client resumed from the terminal event of a finished task, or past it."""
