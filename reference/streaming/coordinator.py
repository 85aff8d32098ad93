"""Runs tasks on asyncio: start, cancel, timeout, shutdown.

One :class:`Run` per running task, one supervising asyncio task per run.
Every run ends through :meth:`Coordinator._finish`, which records the outcome
in the database first and then publishes the terminal event, so a client that
has seen ``cancelled`` can read CANCELLED back. That write is shielded: a
second cancellation while it is under way cannot lose it.

The coordinator's own states::

    OPEN -> DRAINING -> CLOSED      (shutdown(); idempotent)
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Coroutine, Mapping
from datetime import UTC, datetime
from typing import Any

from django.apps import apps
from django.conf import settings

from . import outcomes
from .bus import Hub, InMemoryBus, Subscriber
from .events import FAREWELL, TERMINAL_TYPES, Event, now_iso
from .locks import KeyedLocks
from .models import StreamTask
from .outcomes import Outcome
from .states import TaskStatus

logger = logging.getLogger(__name__)


class _State(enum.Enum):
    OPEN = "open"
    DRAINING = "draining"
    CLOSED = "closed"


class UnknownTask(LookupError):
    """No such task model, or no task with that id."""


class CoordinatorClosed(RuntimeError):
    """The coordinator refuses new work: it is shutting down or has shut down."""


def task_models() -> dict[str, type[StreamTask]]:
    """Concrete StreamTask models by class name: the only ones reachable by name."""
    return {model.__name__: model for model in apps.get_models() if issubclass(model, StreamTask)}


def resolve_model(name: str) -> type[StreamTask]:
    models = task_models()
    try:
        return models[name]
    except KeyError:
        known = ", ".join(sorted(models))
        raise UnknownTask(f"Unknown task model {name!r}; known models: {known}.") from None


class Run:
    """One run of one task: its event counter and how it is being stopped."""

    __slots__ = (
        "attempt",
        "cancel_reason",
        "coordinator",
        "finished",
        "key",
        "model",
        "next_id",
        "supervisor",
        "task",
        "timeout",
    )

    def __init__(self, coordinator: Coordinator, task: StreamTask, attempt: int) -> None:
        self.coordinator = coordinator
        self.task = task
        self.model = type(task).__name__
        self.key = f"{self.model}:{task.pk}"
        self.attempt = attempt
        self.next_id = 1
        self.timeout = task.effective_timeout(coordinator.default_timeout)
        #: Set by cancel_task(); the reason clients are told.
        self.cancel_reason: str | None = None
        #: The outcome is recorded; nothing more is sent for this run.
        self.finished = False
        self.supervisor: asyncio.Task[Any] | None = None

    def event(self, type: str, data: Mapping[str, Any]) -> Event:
        event = Event(self.next_id, type, data, self.task.pk, self.model, now_iso())
        self.next_id += 1
        return event

    async def send(self, type: str, data: Mapping[str, Any]) -> None:
        if type in TERMINAL_TYPES or type == FAREWELL:
            raise ValueError(
                f"Cannot send {type!r} from {self.key}: the coordinator sends terminal "
                "events itself when process() returns, raises or is stopped."
            )
        if self.finished:
            # The run was given up on (it ignored cancellation past the grace
            # period): every further await of send_event is a cancellation point.
            raise asyncio.CancelledError(f"{self.key} was stopped")
        await self.coordinator.bus.publish(self.key, self.event(type, data))
        # Publishing to the in-memory hub never suspends; without this a task
        # sending in a tight loop would starve its clients' writers until their
        # bounded queues overflowed. One turn of the loop per event keeps them level.
        await asyncio.sleep(0)

    def __repr__(self) -> str:
        return f"<Run {self.key} attempt={self.attempt} next_id={self.next_id}>"


class Coordinator:
    """Starts tasks by model and id, fans their events out, stops them on request."""

    def __init__(
        self,
        *,
        bus: InMemoryBus | None = None,
        default_timeout: float | None = None,
        cancel_grace: float | None = None,
        retry_ms: int | None = None,
    ) -> None:
        config = settings.STREAMING
        if bus is None:
            bus = InMemoryBus(
                Hub(queue_size=config["CLIENT_QUEUE_SIZE"], history_size=config["HISTORY_SIZE"])
            )
        self.bus = bus
        self.default_timeout = (
            default_timeout if default_timeout is not None else config["TASK_TIMEOUT"]
        )
        self.cancel_grace = cancel_grace if cancel_grace is not None else config["CANCEL_GRACE"]
        self.retry_ms = retry_ms if retry_ms is not None else config["RETRY_MS"]
        self._state = _State.OPEN
        self._runs: dict[str, Run] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._serial = KeyedLocks()
        self._closed = asyncio.Event()

    def __repr__(self) -> str:
        return f"<Coordinator {self._state.value} runs={len(self._runs)}>"

    @property
    def accepting(self) -> bool:
        return self._state is _State.OPEN

    # -- starting -------------------------------------------------------------

    async def start_task(self, model: type[StreamTask] | str, pk: Any) -> bool:
        """Start task ``pk``; False when it is not startable (running, finished)."""
        if isinstance(model, str):
            model = resolve_model(model)
        key = f"{model.__name__}:{pk}"
        if self._state is not _State.OPEN:
            raise CoordinatorClosed(f"Cannot start {key}: the coordinator is {self._state.value}.")
        async with self._serial.hold(key):
            return await self._launch(model, key, pk)

    async def _launch(self, model: type[StreamTask], key: str, pk: Any) -> bool:
        if key in self._runs:
            return False
        task = await model._default_manager.filter(pk=pk).afirst()
        if task is None:
            raise UnknownTask(f"{model.__name__} {pk} does not exist.")
        if key in self._runs or self._state is not _State.OPEN:
            return False
        # The guarded UPDATE is the start: across processes exactly one caller
        # moves the row to RUNNING, and its new attempt number fences the run.
        run = Run(self, task, attempt=task.attempt + 1)
        self._runs[key] = run
        if not await self._claim(model, task):
            del self._runs[key]
            return False
        task._run = run
        self.bus.hub.open(key)
        supervisor = self._spawn(self._supervise(run), f"streaming:{key}")
        run.supervisor = supervisor
        supervisor.add_done_callback(lambda _: self._release(run))
        logger.info("started %s (attempt %d)", key, run.attempt)
        return True

    async def _claim(self, model: type[StreamTask], task: StreamTask) -> bool:
        now = datetime.now(UTC)
        return await model.atransition(
            task.pk,
            TaskStatus.RUNNING,
            fence=task.attempt,
            attempt=task.attempt + 1,
            started_at=now,
            completed_at=None,
            error="",
            final_event=None,
        )

    # -- running --------------------------------------------------------------

    async def _supervise(self, run: Run) -> None:
        # Set here too: under an eager task factory this body runs inside
        # create_task(), before start_task() could assign it.
        run.supervisor = asyncio.current_task()
        try:
            scope = asyncio.timeout(run.timeout)
            try:
                async with scope:
                    result = await run.task.process()
            except asyncio.CancelledError:
                await self._finish(run, self._stopped_outcome(run))
                raise  # never swallowed: whoever cancelled us sees it
            except Exception as exc:
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
            self._release(run)

    def _release(self, run: Run) -> None:
        """Forget a run whose supervisor has ended; record it if it never could.

        A supervisor cancelled before its first step never runs its body, so
        neither its ``except`` nor its ``finally``: this done-callback is what
        records such a run, so no path leaves a task RUNNING.
        """
        run.task._run = None
        if self._runs.get(run.key) is run:
            del self._runs[run.key]
        if not run.finished:
            self._spawn(
                self._finish(run, self._stopped_outcome(run)), f"streaming:stopped:{run.key}"
            )

    def _failed_outcome(self, run: Run, scope: asyncio.Timeout, exc: Exception) -> Outcome:
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
        return outcomes.failed(exc)

    def _stopped_outcome(self, run: Run) -> Outcome:
        if run.cancel_reason is not None:
            return outcomes.cancelled(run.cancel_reason)
        return outcomes.interrupted()

    def _spawn(self, work: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        """A task of ours: shutdown() waits for it and hygiene can name it."""
        task = asyncio.create_task(work, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _finish(self, run: Run, outcome: Outcome) -> None:
        """Record the outcome, then publish the terminal event: once per run."""
        if run.finished:
            return
        run.finished = True
        # Shielded: the record must be written even if we are cancelled again
        # (shutdown while a cancel is being recorded); tracked, so that
        # shutdown() still waits for it.
        await asyncio.shield(self._spawn(self._record(run, outcome), f"streaming:record:{run.key}"))

    async def _record(self, run: Run, outcome: Outcome) -> None:
        model = type(run.task)
        event = run.event(outcome.event_type, outcome.data) if outcome.event_type else None
        recorded = await model.atransition(
            run.task.pk,
            outcome.status,
            fence=run.attempt,
            completed_at=datetime.now(UTC),
            error=outcome.error,
            final_event=event.to_dict() if event else None,
        )
        if not recorded:
            # Someone else settled this run (a cancel from another process):
            # tell clients what the database says, not what we would have said.
            stored = (
                await model._default_manager.filter(pk=run.task.pk)
                .values("status", "final_event")
                .afirst()
            )
            logger.warning(
                "%s: outcome %s not recorded; stored: %s", run.key, outcome.status, stored
            )
            if stored and stored["final_event"]:
                event = Event.from_dict(stored["final_event"])
        if event is None:
            self.bus.hub.release(run.key)
        else:
            await self.bus.publish(run.key, event, final=True)
        logger.info("finished %s: %s", run.key, outcome.status)

    # -- cancelling -----------------------------------------------------------

    async def cancel_task(
        self, model: type[StreamTask] | str, pk: Any, reason: str | None = None
    ) -> bool:
        """Cancel a READY or RUNNING task; False when there is nothing to cancel.

        Idempotent: a second cancel of the same run returns False. A task that
        swallows CancelledError is given ``cancel_grace`` seconds, then recorded
        as cancelled anyway; its further ``send_event`` calls raise CancelledError.
        """
        if isinstance(model, str):
            try:
                model = resolve_model(model)
            except UnknownTask:
                return False
        key = f"{model.__name__}:{pk}"
        reason = reason or "cancelled by request"
        async with self._serial.hold(key):
            return await self._cancel(model, key, pk, reason)

    async def _cancel(self, model: type[StreamTask], key: str, pk: Any, reason: str) -> bool:
        run = self._runs.get(key)
        if run is not None:
            return self._cancel_run(run, reason)
        # Not running here: cancel it in the database if it has not started.
        # The start/cancel lock means no run of ours can appear meanwhile. The
        # status and the final event go in one UPDATE, so no reader sees one
        # without the other.
        event = Event(
            1,
            "cancelled",
            {"message": "Task was cancelled", "reason": reason},
            pk,
            model.__name__,
            now_iso(),
        )
        cancelled = await model.atransition(
            pk,
            TaskStatus.CANCELLED,
            completed_at=datetime.now(UTC),
            error=f"cancelled: {reason}",
            final_event=event.to_dict(),
        )
        if not cancelled:
            return False
        await self.bus.publish(key, event, final=True)
        return True

    def _cancel_run(self, run: Run, reason: str) -> bool:
        if run.cancel_reason is not None or run.finished:
            return False
        supervisor = run.supervisor
        if supervisor is None or supervisor.done():
            return False
        run.cancel_reason = reason
        supervisor.cancel(msg=f"cancel_task: {reason}")
        asyncio.get_running_loop().call_later(self.cancel_grace, self._give_up, run, supervisor)
        return True

    def _give_up(self, run: Run, supervisor: asyncio.Task[None]) -> None:
        """The task ignored cancellation for the whole grace period: record it as stopped."""
        if supervisor.done() or run.finished:
            return
        logger.error(
            "%s ignored cancellation for %ss; recording it as cancelled", run.key, self.cancel_grace
        )
        outcome = self._stopped_outcome(run).noting(
            f" (did not stop within {self.cancel_grace:g}s)", forced=True
        )
        self._spawn(self._finish(run, outcome), f"streaming:give-up:{run.key}")
        supervisor.cancel()

    # -- subscribing ----------------------------------------------------------

    async def subscribe(
        self, model: type[StreamTask] | str, pk: Any, *, last_event_id: int | None = None
    ) -> Subscriber:
        """Register a client of task ``pk``; raises UnknownTask if there is no such task."""
        if isinstance(model, str):
            model = resolve_model(model)
        key = f"{model.__name__}:{pk}"
        hub = self.bus.hub
        if key in self._runs:
            return hub.subscribe(key, last_event_id=last_event_id)
        stored = await model._default_manager.filter(pk=pk).values("status", "final_event").afirst()
        if stored is None:
            raise UnknownTask(f"{model.__name__} {pk} does not exist.")
        if key in self._runs or stored["final_event"] is None:
            # Running here, or not started (READY, or INTERRUPTED and waiting
            # for a restart): wait for its events.
            return hub.subscribe(key, last_event_id=last_event_id)
        return hub.subscribe_finished(
            key, Event.from_dict(stored["final_event"]), last_event_id=last_event_id
        )

    # -- shutting down --------------------------------------------------------

    async def shutdown(self, grace: float | None = None) -> None:
        """Stop: refuse new work, give running tasks ``grace`` seconds, interrupt the rest.

        Then every client gets a farewell event (with a ``retry`` hint and the
        last event id, to resume elsewhere) and its stream ends. Idempotent.
        """
        if grace is None:
            grace = settings.STREAMING["SHUTDOWN_GRACE"]
        if self._state is not _State.OPEN:
            await self._closed.wait()
            return
        self._state = _State.DRAINING
        try:
            # A start under way may still launch its run: let it, then drain it too.
            await self._serial.settled()
            running = set(self._tasks)
            if running:
                _, pending = await asyncio.wait(running, timeout=grace)
                for task in pending:
                    task.cancel(msg="coordinator shutdown")
            # Cancelled runs record their outcome in new tasks: wait for those too.
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self.cancel_grace
            while (left := {t for t in self._tasks if not t.done()}) and (
                remaining := deadline - loop.time()
            ) > 0:
                await asyncio.wait(left, timeout=remaining)
            if left:
                logger.error("shutdown: %d task(s) ignored cancellation", len(left))
            told = self.bus.hub.say_farewell(self._farewell)
            logger.info("shutdown: %d client(s) told", told)
        finally:
            self._state = _State.CLOSED
            self._closed.set()

    def abandon(self) -> None:
        """Stop at once (a second signal): cancel every run, end every stream now.

        Runs still record INTERRUPTED as their cancellation unwinds, for as
        long as the process lives; nobody waits for them.
        """
        self._state = _State.DRAINING if self._state is _State.OPEN else self._state
        for run in list(self._runs.values()):
            if run.supervisor is not None:
                run.supervisor.cancel(msg="coordinator abandoned")
        self.bus.hub.say_farewell(self._farewell)

    def _farewell(self, key: str, latest: Any) -> Event:
        model, _, pk = key.partition(":")
        last_id = latest.event.id if latest is not None else 0
        return Event(
            last_id,
            FAREWELL,
            {"message": "Server is shutting down; reconnect to resume", "last_event_id": last_id},
            pk,
            model,
            now_iso(),
            retry=self.retry_ms,
        )

    def stats(self) -> dict[str, int]:
        return {"running_tasks": len(self._runs), **self.bus.hub.stats()}
