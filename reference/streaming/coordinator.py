"""Runs tasks on asyncio: start, retry, cancel, timeout, shutdown.

One :class:`Run` per running task, one supervising asyncio task per run.
Every run ends through :meth:`Coordinator._finish`, which records the outcome
in the database first and then publishes the terminal event, so a client that
has seen ``cancelled`` can read CANCELLED back. That write is shielded, and
waits out a database outage: a run that ends while the database is away has
its outcome written once it is back.

A run holds a lease on its task (``leases.py``): the owner's keeper renews
it, and any live coordinator that finds it expired records the run
INTERRUPTED. Each run's claim moves the task to RUNNING with one guarded
UPDATE and a new attempt number, which fences every later write of the run.

The coordinator's own state, one :class:`State`::

    NEW -> OPEN -> DRAINING -> CLOSED        (open(), then shutdown(); idempotent)
    NEW | OPEN -> ABANDONED -> DRAINING      (abandon(), a second signal)

It accepts work while NEW or OPEN. abandon() stops every run at once but
closes nothing itself, so a shutdown() after it still does the closing.

Who does what: a :class:`~streaming.runs.Run` numbers and publishes a task's
events; ``endings`` writes how a task ended; the
:class:`~streaming.leases.Keeper` keeps leases and recovers lost runs. Both
of the latter know this class only through the small Protocols they declare.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import os
import socket
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from asgiref.sync import sync_to_async
from django.db.models import Q
from django.db.models.functions import Now

from . import db, endings, listing, outcomes
from .bus import Bus, InMemoryBus
from .config import Config
from .errors import CoordinatorClosed, NothingMissed, UnknownTask
from .eventlog import EventLog
from .events import CONTROL_TYPES, FAREWELL, WAITING, Event, now_iso
from .hub import Hub, Message, Subscriber, control_event
from .keys import TaskKey
from .kinds import resolve_model, task_models
from .leases import LEASE_LEFT, Keeper, lease_wait
from .listing import TaskPage, TaskQuery
from .locks import KeyedLocks
from .models import StreamTask
from .outcomes import Outcome
from .runs import ID_BLOCK, Run
from .states import RERUN_FROM, RETRY_FROM, START_FROM, TaskStatus

__all__ = [
    "Coordinator",
    "CoordinatorClosed",
    "NothingMissed",
    "State",
    "TaskHistory",
    "UnknownTask",
    "make_bus",
    "make_owner",
    "resolve_model",
    "task_models",
]

logger = logging.getLogger(__name__)

#: Reads a cancel makes of a task's row while other workers' writes keep
#: changing it under its guarded writes (see ``Coordinator._cancel``).
_CANCEL_READS = 3


@dataclass(frozen=True, slots=True)
class TaskHistory:
    """What a task's watch page shows first (:meth:`Coordinator.task_history`)."""

    status: TaskStatus
    #: The last run's terminal event, once the task has ended.
    final: Event | None
    #: The events still kept, oldest first.
    events: list[Message]


class State(enum.Enum):
    """Where a coordinator is in its life (see the module docstring)."""

    NEW = "new"
    OPEN = "open"
    ABANDONED = "abandoned"
    DRAINING = "draining"
    CLOSED = "closed"


#: The states in which a coordinator takes new work.
ACCEPTING = frozenset({State.NEW, State.OPEN})


def make_bus(config: Config) -> Bus:
    """The bus the configuration asks for: Redis when it names one, else in memory."""
    hub = Hub(
        queue_size=config.client_queue_size,
        history_size=config.history_size,
        history_bytes=config.history_bytes,
        closed_history_bytes=config.closed_history_bytes,
    )
    if config.redis_url:
        from .redisbus import STREAM_LENGTH, RedisBus

        # The shared stream is also what another worker's reader catches up
        # from: it keeps more than a resume needs, so a reader that falls
        # behind a burst still finds every entry (if not, its clients are
        # told with a stream-reset).
        keep = max(config.history_size, STREAM_LENGTH)
        return RedisBus(hub, config.redis_url, prefix=config.redis_prefix, keep=keep)
    return InMemoryBus(hub)


def make_owner() -> str:
    """Who runs a task: this host and process, and a random part for this coordinator."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Coordinator:
    """Starts tasks by model and id, fans their events out, stops them on request."""

    def __init__(
        self, *, config: Config | None = None, bus: Bus | None = None, **overrides: Any
    ) -> None:
        self.config = config if config is not None else Config.from_settings(**overrides)
        config = self.config
        self.bus = bus if bus is not None else make_bus(config)
        self.owner = make_owner()
        self.log = EventLog(
            keep=config.history_size,
            max_event_bytes=config.event_log_max_event_bytes,
            enabled=config.event_log,
        )
        self.keeper = Keeper(self)
        self._state = State.NEW
        self._runs: dict[str, Run] = {}  # by TaskKey
        #: Runs this shutdown or abandon stopped: their farewell says so.
        self._stopped: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._serial = KeyedLocks()
        #: Set once CLOSED, for a second shutdown() to wait on.
        self._closed = asyncio.Event()
        #: Told of every event this coordinator publishes (ops.metrics counts them).
        self.on_publish: Callable[[Event], None] | None = None

    def __repr__(self) -> str:
        return f"<Coordinator {self._state.value} runs={len(self._runs)} owner={self.owner}>"

    @property
    def state(self) -> State:
        return self._state

    @property
    def accepting(self) -> bool:
        """Whether it takes new work (starts, retries, new streams)."""
        return self._state in ACCEPTING

    def open(self) -> None:
        """Start the keeper (leases, lost runs), the event log's writer and the bus. Idempotent."""
        if self._state is State.NEW:
            self._state = State.OPEN
            self.keeper.start()
            self.log.start()
            self.bus.start(self.owner, self.cancel_asked)

    def running(self) -> list[Run]:
        """This coordinator's runs, as they are now."""
        return list(self._runs.values())

    def run_of(self, key: str) -> Run | None:
        """The run of task ``key`` here, if it has one."""
        return self._runs.get(key)

    def tracked(self) -> set[asyncio.Task[None]]:
        """Work of this coordinator still under way: runs, outcome writes, id reservations."""
        return {task for task in self._tasks if not task.done()}

    def runs_here(self, key: str) -> bool:
        """Whether task ``key`` has a run of this coordinator."""
        return key in self._runs

    async def started(self) -> None:
        """:meth:`open`, then wait until the bus is connected: the coordinator is ready."""
        self.open()
        await self.bus.ready()

    async def health(self, timeout: float = 2.0) -> str | None:
        """None while the coordinator accepts work and its database answers; else why not."""
        if not self.accepting:
            return "draining"
        return await db.probe(timeout)

    async def readiness(self) -> list[str]:
        """What keeps this coordinator from serving now: draining, the database, the bus."""
        if not self.accepting:
            return ["draining"]
        found = [await db.probe(2.0), await self.bus.problem()]
        return [problem for problem in found if problem is not None]

    # -- starting -------------------------------------------------------------

    async def start_task(self, model: type[StreamTask] | str, pk: Any) -> bool:
        """Start READY task ``pk``; False when it is not READY (running, finished)."""
        return await self._start(model, pk, START_FROM)

    async def retry_task(self, model: type[StreamTask] | str, pk: Any) -> bool:
        """Run a FAILED, CANCELLED, TIMED_OUT or INTERRUPTED task again, as a new attempt."""
        return await self._start(model, pk, RETRY_FROM)

    async def rerun(self, model: type[StreamTask], pk: Any) -> bool:
        """Run an INTERRUPTED task again if it has attempts left (the keeper asks)."""
        return await self._start(
            model, pk, RERUN_FROM, where=model.attempts_left(self.config.max_attempts)
        )

    async def _start(
        self, model: type[StreamTask] | str, pk: Any, sources: frozenset[TaskStatus], **claim: Any
    ) -> bool:
        if isinstance(model, str):
            model = resolve_model(model)
        key = TaskKey(model.__name__, pk)
        if not self.accepting:
            raise CoordinatorClosed(f"Cannot start {key}: the coordinator is {self._state.value}.")
        async with self._serial.hold(key):
            return await self._launch(model, key, pk, sources, **claim)

    async def _launch(
        self,
        model: type[StreamTask],
        key: TaskKey,
        pk: Any,
        sources: frozenset[TaskStatus],
        **claim: Any,
    ) -> bool:
        if key in self._runs:
            return False
        task = await db.run(lambda: model._default_manager.filter(pk=pk).afirst())
        if task is None:
            raise UnknownTask(f"{model.__name__} {pk} does not exist.")
        if key in self._runs or not self.accepting or task.status not in sources:
            return False
        self.open()
        # The guarded UPDATE is the start: across processes exactly one caller
        # moves the row to RUNNING, and its new attempt number fences the run.
        timeout = task.effective_timeout(self.config.task_timeout)
        run = Run(self, task, attempt=task.attempt + 1, timeout=timeout)
        self._runs[key] = run
        claimed = False
        try:
            claimed = await self._claim(model, task, sources, **claim)
        finally:
            if not claimed and self._runs.get(key) is run:
                del self._runs[key]
        if not claimed:
            return False
        task.bind(run)
        self.bus.open(key)
        supervisor = self.spawn(self._supervise(run), f"streaming:{key}")
        run.supervisor = supervisor
        supervisor.add_done_callback(lambda _: self._release(run))
        logger.info("started %s (attempt %d)", key, run.attempt)
        return True

    async def _claim(
        self,
        model: type[StreamTask],
        task: StreamTask,
        sources: frozenset[TaskStatus],
        **claim: Any,
    ) -> bool:
        return await db.run(
            lambda: model.atransition(
                task.pk,
                TaskStatus.RUNNING,
                fence=task.attempt,
                sources=sources,
                attempt=task.attempt + 1,
                owner=self.owner,
                lease_expires_at=Now() + timedelta(seconds=self.config.lease),
                event_id_ceiling=task.event_id_ceiling + ID_BLOCK,
                started_at=datetime.now(UTC),
                completed_at=None,
                error="",
                final_event=None,
                cancel_requested=None,
                **claim,
            )
        )

    # -- running --------------------------------------------------------------

    async def _supervise(self, run: Run) -> None:
        # Set here too: under an eager task factory this body runs inside
        # create_task(), before start_task() could assign it.
        run.supervisor = supervisor = asyncio.current_task()
        overrun = None
        try:
            scope = asyncio.timeout(run.timeout)
            if run.timeout is not None and supervisor is not None:
                overrun = asyncio.get_running_loop().call_later(
                    run.timeout + self.config.cancel_grace, self._overran, run, supervisor, scope
                )
            try:
                async with scope:
                    result = await run.task.process()
            except asyncio.CancelledError as exc:
                if supervisor is not None and supervisor.cancelling():
                    await self._finish(run, self._stopped_outcome(run))
                    raise  # never swallowed: whoever cancelled us sees it
                # Raised by the task's own code, not by a cancel: a failure.
                outcome = self._failed_outcome(run, scope, exc)
            except BaseException as exc:  # SystemExit and co. end the run, not the server
                outcome = self._failed_outcome(run, scope, exc)
            else:
                if run.cancel_reason is not None:
                    # It swallowed the cancel and returned. cancel_task() said
                    # True, so the task ends CANCELLED: one answer everywhere.
                    outcome = self._stopped_outcome(run)
                else:
                    outcome = outcomes.completed(result)
            await self._finish(run, outcome)
        finally:
            if overrun is not None:
                overrun.cancel()
            self._release(run)

    def _overran(self, run: Run, supervisor: asyncio.Task[None], scope: asyncio.Timeout) -> None:
        """The task ignored its timeout's cancellation for the whole grace: record it timed out.

        As :meth:`_give_up` does for a cancel (CANCEL-9): found by the soak
        (issue 27), a task that swallowed it ran on, RUNNING, for good.
        """
        if supervisor.done() or run.finished or run.cancel_reason is not None:
            return  # ended, or a cancel's own grace is running
        if not scope.expired():
            return
        assert run.timeout is not None
        grace = self.config.cancel_grace
        logger.error("%s ignored its timeout for %ss; recording it as timed out", run.key, grace)
        outcome = outcomes.timed_out(run.timeout).noting(
            f" (did not stop within {grace:g}s)", forced=True
        )
        self.spawn(self._finish(run, outcome), f"streaming:overran:{run.key}")
        supervisor.cancel()

    def _release(self, run: Run) -> None:
        """Forget a run whose supervisor has ended; record it if it never could.

        A supervisor cancelled before its first step never runs its body, so
        neither its ``except`` nor its ``finally``: this done-callback is what
        records such a run, so no path leaves a task RUNNING.
        """
        run.task.bind(None)
        if self._runs.get(run.key) is run:
            del self._runs[run.key]
        if not run.finished:
            self.spawn(
                self._finish(run, self._stopped_outcome(run)), f"streaming:stopped:{run.key}"
            )

    def _failed_outcome(self, run: Run, scope: asyncio.Timeout, exc: BaseException) -> Outcome:
        if run.cancel_reason is not None:
            # Cancelled, and its cleanup then raised: the cancel is what the
            # client asked for and what it is told; the error is kept.
            return outcomes.cancelled(run.cancel_reason).noting(
                f"; cleanup raised {type(exc).__name__}: {exc}"
            )
        if isinstance(exc, TimeoutError) and scope.expired():
            # Only our own deadline is a timeout: a TimeoutError from the task's
            # own code (its inner asyncio.timeout, a library) is a failure.
            assert run.timeout is not None
            return outcomes.timed_out(run.timeout)
        logger.error("%s failed (attempt %d)", run.key, run.attempt, exc_info=exc)
        return outcomes.failed(exc)

    def _stopped_outcome(self, run: Run) -> Outcome:
        if run.cancel_reason is not None:
            return outcomes.cancelled(run.cancel_reason)
        return outcomes.interrupted("stopped by the server's shutdown")

    def spawn(self, work: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        """A task of ours: shutdown() waits for it and hygiene can name it."""
        task = asyncio.create_task(work, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def publish(
        self, key: TaskKey, event: Event, *, final: bool = False, json_data: str | None = None
    ) -> Message:
        """Send ``event`` to every client of task ``key``, here and on other workers."""
        message = await self.bus.publish(key, event, final=final, json_data=json_data)
        self.log.append(message)
        if self.on_publish is not None:
            self.on_publish(event)
        return message

    async def _finish(self, run: Run, outcome: Outcome) -> None:
        """Record the outcome, then publish the terminal event: once per run."""
        if run.finished:
            return
        run.finished = True
        # Shielded: the record must be written even if we are cancelled again
        # (shutdown while a cancel is being recorded); tracked, so that
        # shutdown() still waits for it.
        await asyncio.shield(self.spawn(self._record(run, outcome), f"streaming:record:{run.key}"))

    async def _record(self, run: Run, outcome: Outcome) -> None:
        model, pk = type(run.task), run.task.pk
        event = run.event(outcome.event_type, outcome.data)
        try:
            outcome, event, recorded = await db.run_until_available(
                lambda: self._write_ending(run, outcome, event),
                what=f"{run.key}: recording {outcome.status}",
                keep_trying=lambda: self._state is not State.CLOSED,
            )
        except db.DatabaseUnavailable:
            logger.error("%s: outcome %s lost: the database stayed away", run.key, outcome.status)
            self.bus.release(run.key)
            return
        if not recorded:
            # Someone else settled this run (a cancel from another process, a
            # keeper that found its lease expired): tell clients what the
            # database says, not what we would have said.
            status, final = await db.run(lambda: endings.stored(model, pk))
            logger.warning(
                "%s: outcome %s not recorded; the task is %s", run.key, outcome.status, status
            )
            if final is None:
                self.bus.release(run.key)
                return
            event = final
        elif outcome.status is TaskStatus.INTERRUPTED and not self.accepting:
            # Stopped by our shutdown: its clients here get the farewell, which
            # says "reconnect"; those who do are sent this event from the
            # database. Clients on other workers are told now.
            self.bus.release(run.key)
            self.log.append(Message(event))
            await self.bus.announce(run.key, event)
            logger.info("finished %s: %s", run.key, outcome.status)
            return
        await self.publish(run.key, event, final=True)
        logger.info("finished %s: %s", run.key, outcome.status)

    async def _write_ending(
        self, run: Run, outcome: Outcome, event: Event
    ) -> tuple[Outcome, Event, bool]:
        """Write the run's ending; a cancel already promised in its row wins over any other.

        A cancel answered true leaves its reason in the row first (here, or
        from another worker while this one was too busy to hear it): SPEC says
        true means the task ends CANCELLED, so the run's own ending (success,
        failure, timeout, shutdown) is written only where no cancel waits, and
        otherwise becomes that cancel, keeping the event's id. The database
        orders the two writes, so the cancel's answer and the ending agree.
        Found by the soak (issue 27).
        """
        model, pk = type(run.task), run.task.pk
        if outcome.status is TaskStatus.CANCELLED:
            return outcome, event, await endings.write(model, pk, outcome, event, fence=run.attempt)
        unasked = Q(cancel_requested__isnull=True)
        if await endings.write(model, pk, outcome, event, fence=run.attempt, where=unasked):
            return outcome, event, True
        reason = await (
            model._default_manager.filter(pk=pk, attempt=run.attempt, status=TaskStatus.RUNNING)
            .values_list("cancel_requested", flat=True)
            .afirst()
        )
        if reason is None:
            return outcome, event, False  # settled by someone else
        own = outcome.error or outcome.event_type
        cancel = outcomes.cancelled(reason).noting(f"; meanwhile it ended on its own: {own}")
        event = endings.final_event(model.__name__, pk, cancel, event.id)
        return cancel, event, await endings.write(model, pk, cancel, event, fence=run.attempt)

    def lose(self, run: Run, why: str) -> None:
        """The run's task was taken from it (its lease expired): stop it, record nothing."""
        if run.lost or run.finished:
            return
        run.lost = True
        logger.warning("%s lost its lease (%s); stopping it", run.key, why)
        if run.supervisor is not None and not run.supervisor.done():
            run.supervisor.cancel(msg=f"lease lost: {why}")

    # -- cancelling -----------------------------------------------------------

    async def cancel_task(
        self, model: type[StreamTask] | str, pk: Any, reason: str | None = None
    ) -> bool:
        """Cancel a READY or RUNNING task; False when it is in neither state.

        Idempotent: a second cancel of the same run returns False. A task that
        swallows CancelledError is given ``cancel_grace`` seconds, then recorded
        as cancelled anyway; its further ``send_event`` calls raise CancelledError.
        Raises :class:`UnknownTask` if there is no such task.
        """
        if isinstance(model, str):
            model = resolve_model(model)
        key = TaskKey(model.__name__, pk)
        reason = reason or "cancelled by request"
        async with self._serial.hold(key):
            return await self._cancel(model, key, pk, reason)

    async def _cancel(self, model: type[StreamTask], key: TaskKey, pk: Any, reason: str) -> bool:
        # Each write below is guarded by what was read. When another worker's
        # write lands in between (it starts the task, or takes its run over),
        # the guard matches no row: read again, since a cancel of a READY or
        # RUNNING task must still win. Each lost race is another worker's
        # progress, so a few reads suffice.
        for _ in range(_CANCEL_READS):
            run = self._runs.get(key)
            if run is not None and not run.lost:
                if run.cancel_reason is not None or run.finished:
                    return False
                if await self._promise_cancel(model, run, reason):
                    # Promised in the row, the run ends CANCELLED
                    # (_write_ending), even if it finished on its own meanwhile.
                    self._cancel_run(run, reason)
                    return True
                # Refused: its ending is written, another cancel came first,
                # or its run was taken over (its lease lapsed) and may run
                # again elsewhere. The row says which.
            row = await db.run(
                lambda: (
                    model._default_manager.filter(pk=pk)
                    .values("status", "owner", "event_id_ceiling", "cancel_requested")
                    .afirst()
                )
            )
            if row is None:
                raise UnknownTask(f"{model.__name__} {pk} does not exist.")
            if row["status"] == TaskStatus.RUNNING:
                if row["cancel_requested"] is not None:
                    return False  # asked already: a second cancel of the run
                if await self._cancel_elsewhere(model, key, pk, row["owner"], reason):
                    return True
            elif row["status"] == TaskStatus.READY:
                if await self._cancel_ready(model, pk, row["event_id_ceiling"], reason):
                    return True
            else:
                return False
        return False

    async def _cancel_ready(
        self, model: type[StreamTask], pk: Any, ceiling: int, reason: str
    ) -> bool:
        """Cancel a task nobody started, in the database; False if it left READY meanwhile.

        The start/cancel lock means no run of ours can appear meanwhile. The
        status and the final event go in one UPDATE, so no reader sees one
        without the other.
        """
        outcome = outcomes.cancelled(reason)
        event = endings.final_event(model.__name__, pk, outcome, ceiling + 1)
        cancelled = await db.run(
            lambda: endings.write(model, pk, outcome, event, sources=START_FROM)
        )
        if not cancelled:
            return False
        await self.publish(TaskKey(model.__name__, pk), event, final=True)
        return True

    async def _cancel_elsewhere(
        self, model: type[StreamTask], key: TaskKey, pk: Any, owner: str, reason: str
    ) -> bool:
        """Cancel a run another coordinator owns: leave the request in its row, and tell it.

        The row is the promise: its owner's keeper finds the request within a
        heartbeat if the bus cannot tell it sooner, and a keeper that finds
        the run lost records it CANCELLED, not INTERRUPTED. So true here means
        the task ends CANCELLED, as it does for a run of ours.
        """
        asked = await db.run(
            lambda: model._default_manager.filter(
                pk=pk, status=TaskStatus.RUNNING, owner=owner, cancel_requested__isnull=True
            ).aupdate(cancel_requested=reason)
        )
        if not asked:
            return False
        await self.bus.request_cancel(owner, key, reason)
        return True

    async def _promise_cancel(self, model: type[StreamTask], run: Run, reason: str) -> bool:
        """Leave the cancel of a run of ours in its row first, as a cancel from elsewhere does.

        Should the run be lost before it records its outcome (its lease lapsing
        in a database outage, its process killed while the task ignores the
        cancel), the keeper that finds it then records CANCELLED, not
        INTERRUPTED, and runs it no more: true means CANCELLED. While the
        database is away this raises DatabaseUnavailable (503) and nothing is
        cancelled: a promise that cannot be kept is not made. False when the
        row no longer takes it: the run's ending is written already, or
        another cancel was first. Found by the soak (issue 27).
        """
        promised = await db.run(
            lambda: model._default_manager.filter(
                pk=run.task.pk,
                attempt=run.attempt,
                status=TaskStatus.RUNNING,
                cancel_requested__isnull=True,
            ).aupdate(cancel_requested=reason)
        )
        return promised == 1

    def cancel_asked(self, key: str, reason: str) -> None:
        """Another worker asks us to cancel a run of ours (the bus and the keeper call this)."""
        run = self._runs.get(key)
        if run is not None:
            self._cancel_run(run, reason)

    def _cancel_run(self, run: Run, reason: str) -> bool:
        if run.cancel_reason is not None or run.finished:
            return False
        supervisor = run.supervisor
        if supervisor is None or supervisor.done():
            return False
        run.cancel_reason = reason
        supervisor.cancel(msg=f"cancel_task: {reason}")
        asyncio.get_running_loop().call_later(
            self.config.cancel_grace, self._give_up, run, supervisor
        )
        return True

    def _give_up(self, run: Run, supervisor: asyncio.Task[None]) -> None:
        """The task ignored cancellation for the whole grace period: record it as stopped."""
        if supervisor.done() or run.finished:
            return
        grace = self.config.cancel_grace
        logger.error("%s ignored cancellation for %ss; recording it as cancelled", run.key, grace)
        outcome = self._stopped_outcome(run).noting(
            f" (did not stop within {grace:g}s)", forced=True
        )
        self.spawn(self._finish(run, outcome), f"streaming:give-up:{run.key}")
        supervisor.cancel()

    # -- subscribing ----------------------------------------------------------

    async def subscribe(
        self, model: type[StreamTask] | str, pk: Any, *, last_event_id: int | None = None
    ) -> Subscriber:
        """Register a client of task ``pk``; raises UnknownTask if there is no such task.

        With ``last_event_id`` the client resumes: it gets every event after
        that id still kept, from memory or from the database's event log, with
        a ``stream-reset`` first where some are gone. Resuming from the
        terminal event of a finished task (or past it) raises NothingMissed.
        """
        if isinstance(model, str):
            model = resolve_model(model)
        key = TaskKey(model.__name__, pk)
        final: Event | None = None
        wait: dict[str, Any] | None = None
        if key not in self._runs:
            columns = ("final_event", "status", "owner", "left")
            row = model._default_manager.filter(pk=pk).annotate(left=LEASE_LEFT)
            stored = await db.run(lambda: row.values(*columns).afirst())
            if stored is None:
                raise UnknownTask(f"{model.__name__} {pk} does not exist.")
            if key not in self._runs and stored["final_event"] is not None:
                final = Event.from_json(stored["final_event"])
                if last_event_id is not None and last_event_id >= final.id:
                    raise NothingMissed(f"{key} ended with event {final.id}.")
            elif stored["status"] == TaskStatus.RUNNING and stored["owner"] != self.owner:
                wait = lease_wait(stored, self.config)
        # Running here or elsewhere, or not started: wait for its events.
        subscriber = await self.bus.subscribe(key, after=last_event_id, final=final)
        if last_event_id is not None:
            try:
                await self._backfill(subscriber, model.__name__, pk, key, last_event_id)
            except BaseException:
                subscriber.close()
                raise
        if wait is not None:  # a run elsewhere that looks lost: say what the wait is for
            subscriber.push(Message(control_event(key, WAITING, subscriber.queued_id or 0, wait)))
        return subscriber

    async def _backfill(
        self, subscriber: Subscriber, model: str, pk: Any, key: TaskKey, after: int
    ) -> None:
        """Give a resuming client what this process no longer keeps: from the bus, then storage."""
        kept = self.bus.kept_since(key)
        if kept is not None and kept <= after + 1:
            return
        subscriber.backfill(await self._kept_before(model, pk, key, after, kept), after=after)

    async def _kept_before(
        self, model: str, pk: Any, key: TaskKey, after: int, kept: int | None
    ) -> list[Message]:
        """Events of the task with ids in (``after``, ``kept``): from the bus, then storage."""
        older = await self.bus.history(key, after=after, before=kept)
        oldest = older[0].event.id if older else kept
        stored: list[Message] = []
        if self.log.enabled and (oldest is None or oldest > after + 1):
            await self.log.settled(timeout=1.0)
            stored = await self.log.read(model, pk, after=after, before=oldest)
        return [*stored, *older]

    # -- shutting down --------------------------------------------------------

    async def shutdown(self, grace: float | None = None) -> None:
        """Stop: refuse new work, give running tasks ``grace`` seconds, interrupt the rest.

        Then every client gets a farewell event (with a ``retry`` hint and the
        last event id, to resume elsewhere) and its stream ends. Idempotent.
        """
        if grace is None:
            grace = self.config.shutdown_grace
        if self._state in (State.DRAINING, State.CLOSED):
            await self._closed.wait()
            return
        # From NEW, OPEN, or ABANDONED (abandon() closes nothing itself).
        self._state = State.DRAINING
        try:
            # A start under way may still launch its run: let it, then drain it too.
            await self._serial.settled()
            running = set(self._tasks)
            if running:
                await asyncio.wait(running, timeout=grace)
                self._stopped.update(self._runs)  # what outlived the grace is interrupted
                # The runs, and only they: an ending under way is left to be
                # written and told (cancelled, its UPDATE could still commit
                # on the ORM's thread, unannounced, or never run at all).
                for run in self._runs.values():
                    if run.supervisor is not None:
                        run.supervisor.cancel(msg="coordinator shutdown")
            # Cancelled runs record their outcome in new tasks: wait for those too.
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self.config.cancel_grace
            while (left := {t for t in self._tasks if not t.done()}) and (
                remaining := deadline - loop.time()
            ) > 0:
                await asyncio.wait(left, timeout=remaining)
            if left:
                logger.error("shutdown: %d task(s) ignored cancellation", len(left))
            told = self.bus.say_farewell(self._farewell)
            logger.info("shutdown: %d client(s) told", told)
            await self.keeper.stop()
            await self.log.close(timeout=self.config.cancel_grace)
            await self.bus.close()
        finally:
            self._state = State.CLOSED
            self._closed.set()

    def abandon(self) -> None:
        """Stop at once (a second signal): cancel every run, end every stream now.

        Runs still record INTERRUPTED as their cancellation unwinds, for as
        long as the process lives; nobody waits for them.
        """
        if self._state in ACCEPTING:
            self._state = State.ABANDONED
        self._stopped.update(self._runs)
        for run in list(self._runs.values()):
            if run.supervisor is not None:
                run.supervisor.cancel(msg="coordinator abandoned")
        self.bus.say_farewell(self._farewell)

    def _farewell(self, key: str, last_id: int) -> Event:
        task = TaskKey.parse(key)
        if task in self._stopped:
            message = (
                "Server is shutting down and interrupted this task's run; reconnect to follow "
                "it: it runs again if it has attempts left"
            )
        else:
            message = "Server is shutting down; reconnect to resume"
        return Event(
            last_id,
            FAREWELL,
            {"message": message, "last_event_id": last_id},
            task.pk,
            task.model,
            now_iso(),
            retry=self.config.retry_ms,
        )

    # -- reading ----------------------------------------------------------------

    async def status_of(self, model: type[StreamTask] | str, pk: Any) -> TaskStatus:
        """Task ``pk``'s status as stored; raises UnknownTask if there is no such task."""
        if isinstance(model, str):
            model = resolve_model(model)
        status = await db.run(
            lambda: model._default_manager.filter(pk=pk).values_list("status", flat=True).afirst()
        )
        if status is None:
            raise UnknownTask(f"{model.__name__} {pk} does not exist.")
        return TaskStatus(status)

    async def task_history(self, model: type[StreamTask] | str, pk: Any) -> TaskHistory:
        """The events still kept of task ``pk``, oldest first, then its status and ending.

        The events come from this process's memory, the bus and the event log,
        as a resuming client's do. The row is read last: its status is never
        older than the events, and a client that goes on from the last of them
        (``subscribe(last_event_id=...)``) misses nothing in between. Raises
        :class:`UnknownTask` if there is no such task.
        """
        if isinstance(model, str):
            model = resolve_model(model)
        key = TaskKey(model.__name__, pk)
        recent = [m for m in self.bus.recent(key) if m.event.type not in CONTROL_TYPES]
        kept = recent[0].event.id if recent else None
        older: list[Message] = []
        if kept is None or kept > 1:
            older = await self._kept_before(model.__name__, pk, key, 0, kept)
        status, final = await db.run(lambda: endings.stored(model, pk))
        if status is None:
            raise UnknownTask(f"{model.__name__} {pk} does not exist.")
        return TaskHistory(TaskStatus(status), final, [*older, *recent])

    async def list_tasks(self, query: TaskQuery) -> TaskPage:
        """A page of tasks, newest first: of every kind, or of the one ``query`` names."""
        models = [query.kind] if query.kind is not None else list(task_models().values())
        return await listing.newest(models, query)

    async def close_connections(self) -> None:
        """Close the ORM's connections in the thread that owns them."""
        from django.db import connections

        await sync_to_async(connections.close_all, thread_sensitive=True)()

    def stats(self) -> dict[str, int]:
        return {"running_tasks": len(self._runs), **self.bus.stats()}
