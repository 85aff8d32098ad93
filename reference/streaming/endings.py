"""How a task's ending is written: its terminal row and final event, in one UPDATE.

A task ends in one of three places: a run of this process ends (the
coordinator), a READY task is cancelled before anyone started it (the
coordinator), a run is found lost with its process (the keeper). Each says
which ending it was (an :class:`~streaming.outcomes.Outcome`) and under what
guard; this module writes it, always the same way: the status, the error,
the completion time, the final event, the id ceiling lowered to that event's
id, and the owner and lease cleared. So no reader ever sees a finished status
without its final event, or the other way round.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from django.db.models import Q

from .events import Event, now_iso
from .models import StreamTask
from .outcomes import Outcome
from .states import TaskStatus


def final_event(model: str, pk: Any, outcome: Outcome, event_id: int) -> Event:
    """The terminal event ``outcome`` sends, numbered ``event_id``."""
    return Event(event_id, outcome.event_type, outcome.data, pk, model, now_iso())


async def write(
    model: type[StreamTask],
    pk: Any,
    outcome: Outcome,
    event: Event,
    *,
    fence: int | None = None,
    sources: frozenset[TaskStatus] | None = None,
    where: Q | None = None,
) -> bool:
    """Record ``outcome`` with ``event`` as the task's final event; False if the guard refused.

    ``fence``: only while the row's attempt is still this run's; ``sources``:
    only from these statuses; ``where``: only if this holds too (a lease
    that has expired). See :meth:`StreamTask.atransition`.
    """
    return await model.atransition(
        pk,
        outcome.status,
        fence=fence,
        sources=sources,
        where=where,
        completed_at=datetime.now(UTC),
        error=outcome.error,
        final_event=event.to_json(),
        event_id_ceiling=event.id,
        owner="",
        lease_expires_at=None,
    )


async def stored(model: type[StreamTask], pk: Any) -> tuple[str | None, Event | None]:
    """The task's status and final event as the database has them; (None, None) if no row."""
    row = await model._default_manager.filter(pk=pk).values("status", "final_event").afirst()
    if row is None:
        return None, None
    final = row["final_event"]
    return row["status"], Event.from_json(final) if final is not None else None
