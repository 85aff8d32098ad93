"""Leases on running tasks, and the recovery of runs whose process died.

A run's claim makes its coordinator the task's *owner* and gives it a lease
(``lease_expires_at``, in database time). Every coordinator has one
:class:`Keeper`, which every ``lease / 3`` seconds:

1. renews the leases of its own runs; a run whose row no longer names it
   (another coordinator found the lease expired) is stopped: its outcome
   write would be refused by the attempt fence anyway; a run whose row holds
   a cancel asked for by another worker is cancelled;
2. records INTERRUPTED every run of another owner whose lease has expired,
   with a terminal ``interrupted`` event its waiting clients receive (or
   CANCELLED, with ``cancelled``, if a cancel was asked for it);
3. runs again INTERRUPTED tasks that have attempts left (``max_attempts``);
4. gives clients that wait here on a task running elsewhere its terminal
   event once the database has it.

So a run lost with its process is recorded within ``lease + lease / 3``
seconds of its last renewal (15 + 5 s by default), by whichever live
coordinator looks first; the guarded UPDATE lets only one of them do it.
After the keeper's own database calls have failed or crawled (an outage, a
write lock), it waits a whole lease before it records anything: the owners
could not renew either.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from django.db.models import Q
from django.db.models.functions import Now

from . import db, outcomes
from .events import Event, now_iso
from .states import TaskStatus

if TYPE_CHECKING:
    from .coordinator import Coordinator, Run
    from .models import StreamTask

logger = logging.getLogger(__name__)

#: Rows past their lease, or RUNNING with none at all (written before leases existed).
EXPIRED = Q(lease_expires_at__lt=Now()) | Q(lease_expires_at__isnull=True)


class Keeper:
    """Renews this coordinator's leases and recovers runs that other owners lost."""

    def __init__(self, coordinator: Coordinator) -> None:
        self.coordinator = coordinator
        self._task: asyncio.Task[None] | None = None
        self._failing = False
        #: Loop time before which no lease is taken as lost (see the module docstring).
        self._trust_from = 0.0

    def start(self) -> None:
        if self._task is None:
            self._trust_from = asyncio.get_running_loop().time()
            self._task = asyncio.create_task(self._keep(), name="streaming:keeper")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _keep(self) -> None:
        config = self.coordinator.config
        while True:
            try:
                await self.tick()
            except db.DatabaseUnavailable as exc:
                if not self._failing:
                    logger.warning("keeper: database unavailable (%s)", exc)
                    self._failing = True
            except Exception:
                logger.exception("keeper: tick failed")
            await asyncio.sleep(config.heartbeat)  # the keeper's period

    def _distrust(self, why: str) -> None:
        lease = self.coordinator.config.lease
        self._trust_from = asyncio.get_running_loop().time() + lease
        logger.info("keeper: %s; no lease is taken as lost for %gs", why, lease)

    async def tick(self) -> None:
        # A write probe first: reads keep working on a SQLite file another
        # process holds locked, and a keeper that only read would not notice.
        loop = asyncio.get_running_loop()
        began = loop.time()
        await db.check()
        if self._failing:
            self._failing = False
            self._distrust("the database is back")
        elif loop.time() - began > self.coordinator.config.heartbeat:
            # As good as an outage: if this keeper could not write in time,
            # the owners could not renew in time either.
            self._distrust("the database was slow to take a write")
        await self.renew()
        if asyncio.get_running_loop().time() >= self._trust_from:
            await self.recover_lost()
        await self.rerun()
        await self.tell_watchers()

    # -- 1. our own leases ---------------------------------------------------------

    async def renew(self) -> None:
        coordinator = self.coordinator
        by_model: dict[type[StreamTask], list[Run]] = defaultdict(list)
        for run in list(coordinator._runs.values()):
            if run.supervisor is not None and not run.finished:
                by_model[type(run.task)].append(run)
        lease = timedelta(seconds=coordinator.config.lease)
        for model, runs in by_model.items():
            ours = model._default_manager.filter(
                pk__in=[run.task.pk for run in runs],
                owner=coordinator.owner,
                status=TaskStatus.RUNNING,
            )
            await db.run(lambda ours=ours: ours.aupdate(lease_expires_at=Now() + lease))
            rows = await db.run(
                lambda ours=ours: _listed(ours.values_list("pk", "cancel_requested"))
            )
            asked = dict(rows)
            for run in runs:
                if run.task.pk not in asked:
                    coordinator.lose(run, "its row names another owner or another status")
                elif (reason := asked[run.task.pk]) is not None:
                    coordinator._cancel_asked(run.key, reason)

    # -- 2. runs lost with their process -----------------------------------------------

    async def recover_lost(self) -> None:
        coordinator = self.coordinator
        from .coordinator import task_models

        for model in task_models().values():
            expired = model._default_manager.filter(EXPIRED, status=TaskStatus.RUNNING)
            rows = await db.run(
                lambda expired=expired: _listed(
                    expired.values("pk", "attempt", "owner", "event_id_ceiling", "cancel_requested")
                )
            )
            for row in rows:
                if f"{model.__name__}:{row['pk']}" not in coordinator._runs:
                    await self._interrupt(model, row)

    async def _interrupt(self, model: type[StreamTask], row: dict) -> None:
        owner = row["owner"] or "an unknown owner"
        if row["cancel_requested"] is not None:
            # Cancelled from another worker, which was told true: it ends so.
            outcome = outcomes.cancelled(row["cancel_requested"]).noting(
                f" (its process, {owner}, was lost before it stopped)"
            )
        else:
            outcome = outcomes.interrupted(f"lost with its process ({owner}): its lease expired")
        event = Event(
            row["event_id_ceiling"] + 1,
            outcome.event_type,
            outcome.data,
            row["pk"],
            model.__name__,
            now_iso(),
        )
        recorded = await db.run(
            lambda: model.atransition(
                row["pk"],
                outcome.status,
                fence=row["attempt"],
                where=EXPIRED,
                completed_at=datetime.now(UTC),
                error=outcome.error,
                final_event=event.to_json(),
                event_id_ceiling=event.id,
                owner="",
                lease_expires_at=None,
            )
        )
        if recorded:
            logger.warning("%s: run %d %s", event.key, row["attempt"], outcome.error)
            await self.coordinator._publish(event, final=True)

    # -- 3. interrupted runs with attempts left -------------------------------------------

    async def rerun(self) -> None:
        coordinator = self.coordinator
        from .coordinator import CoordinatorClosed, UnknownTask, task_models

        for model in task_models().values():
            again = model._default_manager.filter(
                model.attempts_left(coordinator.config.max_attempts),
                status=TaskStatus.INTERRUPTED,
            )
            pks = await db.run(lambda again=again: _listed(again.values_list("pk", flat=True)[:50]))
            for pk in pks:
                try:
                    if await coordinator.rerun(model, pk):
                        logger.info("%s:%s: interrupted, run again", model.__name__, pk)
                except CoordinatorClosed:
                    return
                except UnknownTask:
                    continue

    # -- 4. clients waiting here on runs elsewhere ------------------------------------------

    async def tell_watchers(self) -> None:
        coordinator = self.coordinator
        bus = coordinator.bus
        from .coordinator import task_models

        models = task_models()
        by_model: dict[str, list[str]] = defaultdict(list)
        for key in bus.watched_elsewhere():
            name, _, pk = key.partition(":")
            if name in models and key not in coordinator._runs:
                by_model[name].append(pk)
        for name, pks in by_model.items():
            ended = models[name]._default_manager.filter(pk__in=pks, final_event__isnull=False)
            rows = await db.run(
                lambda ended=ended: _listed(ended.values_list("final_event", flat=True))
            )
            for stored in rows:
                event = Event.from_json(stored)
                if event.key not in coordinator._runs:
                    bus.deliver(event.key, event)


async def _listed(rows: object) -> list:
    """Evaluate a queryset in the ORM's thread."""
    from asgiref.sync import sync_to_async

    return await sync_to_async(list, thread_sensitive=True)(rows)
