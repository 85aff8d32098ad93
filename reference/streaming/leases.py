"""Leases on running tasks, and the recovery of runs whose process died.

A run's claim makes its coordinator the task's *owner* and gives it a lease
(``lease_expires_at``, in database time). Every coordinator has one
:class:`Keeper`, which every ``lease / 3`` seconds (the *heartbeat*):

1. renews the leases of its own runs; a run whose row no longer names it
   (another coordinator found the lease expired) is stopped: its outcome
   write would be refused by the attempt fence anyway; a run whose row holds
   a cancel asked for by another worker is cancelled;
2. records INTERRUPTED every run of another owner whose lease has expired,
   with a terminal ``interrupted`` event its waiting clients receive (or
   CANCELLED, with ``cancelled``, if a cancel was asked for it);
3. runs again INTERRUPTED tasks that have attempts left (``max_attempts``);
4. gives clients that wait here on a task running elsewhere its terminal
   event once the database has it, and, while that run looks lost (its
   process has exited, or it missed a renewal), a ``waiting`` notice that
   says what the wait is for and how long it may last.

The renewals (1) keep their own beat, started every heartbeat whatever the
rest costs: the sweep (2-4) reads every task model, and on a loaded machine
it took two seconds of a 3 s lease, so a renewal that waited for it let a
live run's lease lapse.

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
import os
import socket
from collections import defaultdict
from collections.abc import Iterable, Mapping
from datetime import timedelta
from functools import partial
from typing import Any, Protocol

from django.db.models import DurationField, ExpressionWrapper, F, Q
from django.db.models.functions import Now

from . import db, endings, outcomes
from .bus import Bus
from .config import Config
from .errors import CoordinatorClosed, UnknownTask
from .events import WAITING, Event
from .hub import Message
from .keys import TaskKey
from .kinds import task_models
from .models import StreamTask
from .runs import Run
from .states import TaskStatus

logger = logging.getLogger(__name__)

#: Rows past their lease, or RUNNING with none at all (written before leases existed).
EXPIRED = Q(lease_expires_at__lt=Now()) | Q(lease_expires_at__isnull=True)
#: How long a row's lease has left, in the database's time (negative once past).
LEASE_LEFT = ExpressionWrapper(F("lease_expires_at") - Now(), output_field=DurationField())


def lease_wait(row: Mapping[str, Any], config: Config) -> dict[str, Any] | None:
    """The ``waiting`` notice for a run elsewhere that looks lost; None while it looks alive.

    ``row`` holds the run's ``owner`` and its lease's time ``left`` (as
    :data:`LEASE_LEFT` reads it). A live owner renews every heartbeat, so its
    lease never has much less than ``lease - heartbeat`` left: less than that
    by half a heartbeat is a missed renewal. An owner on this host whose
    process is gone is known lost at once, whatever its lease says.
    """
    owner = row["owner"] or "an unknown owner"
    left = row["left"].total_seconds() if row["left"] is not None else 0.0
    if _exited(owner):
        why = f"its process ({owner}) has exited"
    elif left < config.lease - 1.5 * config.heartbeat:
        why = f"its process ({owner}) has stopped renewing its lease"
    else:
        return None
    # Found at the first keeper tick after the lease lapses.
    wait = max(left, 0.0) + config.heartbeat
    return {
        "reason": "lease",
        "message": (
            f"This task's run looks lost: {why}. It is recorded interrupted when the lease "
            f"lapses, within about {wait:.0f}s."
        ),
        "owner": owner,
        "seconds": round(wait, 1),
    }


def _exited(owner: str) -> bool:
    """Whether ``owner`` (host:pid:nonce) names a process of this host that no longer exists."""
    host, _, rest = owner.partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # it exists, as another user's
        return False
    return False


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
        #: The run (attempt) of each watched task its clients were told looks lost.
        self._told: dict[TaskKey, int] = {}
        #: The sweep's loop (2-4), and the renewals' (1).
        self._task: asyncio.Task[None] | None = None
        self._renewing: asyncio.Task[None] | None = None
        self._failing = False
        #: Loop time before which no lease is taken as lost (see the module docstring).
        self._trust_from = 0.0

    def start(self) -> None:
        if self._task is None:
            self._trust_from = asyncio.get_running_loop().time()
            self._renewing = asyncio.create_task(self._renew(), name="streaming:keeper:renew")
            self._task = asyncio.create_task(self._keep(), name="streaming:keeper")

    async def stop(self) -> None:
        loops = [task for task in (self._task, self._renewing) if task is not None]
        for task in loops:
            task.cancel()
        await asyncio.gather(*loops, return_exceptions=True)
        self._task = self._renewing = None

    async def _renew(self) -> None:
        loop = asyncio.get_running_loop()
        heartbeat = self.coordinator.config.heartbeat
        while True:
            began = loop.time()
            try:
                await self.renew()
            except db.DatabaseUnavailable:
                pass  # the sweep's write probe fails too, and says so once
            except Exception:
                logger.exception("keeper: renewal failed")
            # From the start of this renewal, not its end: a slow database
            # delays one renewal, not every one after it.
            await asyncio.sleep(max(0.0, began + heartbeat - loop.time()))

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
        """One sweep: lost runs (2), reruns (3), clients waiting on runs elsewhere (4)."""
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
        # Only as read: a cancel that landed since (answered true) must end it
        # CANCELLED, at the next look. Found by the soak (issue 27).
        where = EXPIRED & Q(cancel_requested=row["cancel_requested"])
        if row["cancel_requested"] is None:
            where = EXPIRED & Q(cancel_requested__isnull=True)
        recorded = await db.run(
            lambda: endings.write(model, pk, outcome, event, fence=row["attempt"], where=where)
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
        waiting = {TaskKey(name, pk) for name, pks in by_model.items() for pk in pks}
        self._told = {key: told for key, told in self._told.items() if key in waiting}
        for name, pks in by_model.items():
            await self._tell_waits(models[name], pks)
            ended = models[name]._default_manager.filter(pk__in=pks, final_event__isnull=False)
            rows = await db.run(partial(db.listed, ended.values_list("final_event", flat=True)))
            for stored in rows:
                if stored is None:  # filtered out above; the type does not know it
                    continue
                event = Event.from_json(stored)
                key = TaskKey(event.model, event.task_id)
                if not coordinator.runs_here(key):
                    bus.deliver(key, event)

    async def _tell_waits(self, model: type[StreamTask], pks: list[str]) -> None:
        """Tell the clients of runs elsewhere that look lost what they wait for, once a run."""
        coordinator = self.coordinator
        running = (
            model._default_manager.filter(pk__in=pks, status=TaskStatus.RUNNING)
            .exclude(owner=coordinator.owner)
            .annotate(left=LEASE_LEFT)
        )
        rows = await db.run(partial(db.listed, running.values("pk", "owner", "attempt", "left")))
        for row in rows:
            key = TaskKey(model.__name__, row["pk"])
            if self._told.get(key) == row["attempt"] or coordinator.runs_here(key):
                continue
            notice = lease_wait(row, coordinator.config)
            if notice is not None:
                coordinator.bus.notify(key, WAITING, notice)
                self._told[key] = row["attempt"]
