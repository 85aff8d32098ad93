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
from collections.abc import Iterable
from datetime import timedelta
from functools import partial
from typing import Any, Protocol

from django.db.models import Q
from django.db.models.functions import Now

from . import db, endings, outcomes
from .bus import Bus
from .config import Config
from .errors import CoordinatorClosed, UnknownTask
from .events import Event
from .hub import Message
from .keys import TaskKey
from .kinds import task_models
from .models import StreamTask
from .runs import Run
from .states import TaskStatus

logger = logging.getLogger(__name__)

#: Rows past their lease, or RUNNING with none at all (written before leases existed).
EXPIRED = Q(lease_expires_at__lt=Now()) | Q(lease_expires_at__isnull=True)


class KeeperHost(Protocol):
    """What a keeper needs of the coordinator it keeps leases for."""

    @property
    def owner(self) -> str: ...

    @property
    def config(self) -> Config: ...

    @property
    def bus(self) -> Bus: ...

    def running(self) -> Iterable[Run]:
        """This coordinator's runs."""
        ...

    def runs_here(self, key: str) -> bool:
        """Whether task ``key`` has a run of this coordinator."""
        ...

    def lose(self, run: Run, why: str) -> None: ...

    def cancel_asked(self, key: str, reason: str) -> None: ...

    async def rerun(self, model: type[StreamTask], pk: Any) -> bool: ...

    async def publish(
        self, key: TaskKey, event: Event, *, final: bool = False, json_data: str | None = None
    ) -> Message: ...


class Keeper:
    """Renews this coordinator's leases and recovers runs that other owners lost."""

    def __init__(self, coordinator: KeeperHost) -> None:
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
        for run in list(coordinator.running()):
            if run.supervisor is not None and not run.finished:
                by_model[type(run.task)].append(run)
        lease = timedelta(seconds=coordinator.config.lease)
        for model, runs in by_model.items():
            ours = model._default_manager.filter(
                pk__in=[run.task.pk for run in runs],
                owner=coordinator.owner,
                status=TaskStatus.RUNNING,
            )
            await db.run(partial(ours.aupdate, lease_expires_at=Now() + lease))
            rows = await db.run(partial(db.listed, ours.values_list("pk", "cancel_requested")))
            asked = dict(rows)
            for run in runs:
                if run.task.pk not in asked:
                    coordinator.lose(run, "its row names another owner or another status")
                elif (reason := asked[run.task.pk]) is not None:
                    coordinator.cancel_asked(run.key, reason)

    # -- 2. runs lost with their process -----------------------------------------------

    async def recover_lost(self) -> None:
        coordinator = self.coordinator
        for model in task_models().values():
            expired = model._default_manager.filter(EXPIRED, status=TaskStatus.RUNNING)
            columns = ("pk", "attempt", "owner", "event_id_ceiling", "cancel_requested")
            rows = await db.run(partial(db.listed, expired.values(*columns)))
            for row in rows:
                if not coordinator.runs_here(TaskKey(model.__name__, row["pk"])):
                    await self._interrupt(model, row)

    async def _interrupt(self, model: type[StreamTask], row: dict[str, Any]) -> None:
        owner = row["owner"] or "an unknown owner"
        if row["cancel_requested"] is not None:
            # Cancelled from another worker, which was told true: it ends so.
            outcome = outcomes.cancelled(row["cancel_requested"]).noting(
                f" (its process, {owner}, was lost before it stopped)"
            )
        else:
            outcome = outcomes.interrupted(f"lost with its process ({owner}): its lease expired")
        pk = row["pk"]
        event = endings.final_event(model.__name__, pk, outcome, row["event_id_ceiling"] + 1)
        recorded = await db.run(
            lambda: endings.write(model, pk, outcome, event, fence=row["attempt"], where=EXPIRED)
        )
        if recorded:
            key = TaskKey(model.__name__, pk)
            logger.warning("%s: run %d %s", key, row["attempt"], outcome.error)
            await self.coordinator.publish(key, event, final=True)

    # -- 3. interrupted runs with attempts left -------------------------------------------

    async def rerun(self) -> None:
        coordinator = self.coordinator
        for model in task_models().values():
            again = model._default_manager.filter(
                model.attempts_left(coordinator.config.max_attempts),
                status=TaskStatus.INTERRUPTED,
            )
            pks = await db.run(partial(db.listed, again.values_list("pk", flat=True)[:50]))
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
        models = task_models()
        by_model: dict[str, list[str]] = defaultdict(list)
        for watched in bus.watched_elsewhere():
            key = TaskKey.parse(watched)
            if key.model in models and not coordinator.runs_here(key):
                by_model[key.model].append(key.pk)
        for name, pks in by_model.items():
            ended = models[name]._default_manager.filter(pk__in=pks, final_event__isnull=False)
            rows = await db.run(partial(db.listed, ended.values_list("final_event", flat=True)))
            for stored in rows:
                if stored is None:  # filtered out above; the type does not know it
                    continue
                event = Event.from_json(stored)
                key = TaskKey(event.model, event.task_id)
                if not coordinator.runs_here(key):
                    bus.deliver(key, event)
