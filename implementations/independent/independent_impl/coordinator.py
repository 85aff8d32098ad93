"""The coordinator: the contract's Runtime, on one event loop, over the shared store.

It owns the live runs of this process, the fan-out hub, the event log writer
and the lease keeper, and ties them together: a start claims the task's row
in the database (one winner across processes), then runs it here; a run's
outcome is written before any client hears it, so a client that has seen
the terminal event can read the final status anywhere (FUNC-15); a client
that subscribes registers first and reads the stored state after, so an
outcome recorded meanwhile is never missed (RACE-2, RACE-12).

Shutdown (SHUT-15..19): refuse new work, let runs finish within the grace
period, interrupt the rest and wait for their cleanup, record them
INTERRUPTED, then send every open stream the farewell. Every call after the
first waits for the first to finish.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import socket
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from conformance.contract import (
    ASGIApp,
    Behaviour,
    Runtime,
    RuntimeClosed,
    RuntimeStats,
    TaskRef,
    TaskState,
    TaskStatus,
    UnknownTask,
    behaviour_path,
    resolve_behaviour,
)

from .eventlog import EventLog
from .events import Envelope, envelope, envelope_from_record, model_name, now, record_of
from .fanout import Hub, Subscription
from .leases import LeaseKeeper
from .runs import Outcome, Run, Stop
from .settings import Settings
from .store import RunningRow, StorageUnavailable, Store

__all__ = ["RETRYABLE", "STARTABLE", "Coordinator", "parse_task_id"]

logger = logging.getLogger("independent_impl.coordinator")

STARTABLE = (TaskStatus.READY,)
RETRYABLE = (
    TaskStatus.FAILED,
    TaskStatus.CANCELLED,
    TaskStatus.TIMED_OUT,
    TaskStatus.INTERRUPTED,
)

_MODEL = re.compile(r"[A-Za-z0-9_-]{1,200}")
# Canonical decimal only (EDGE-22): no sign, no leading zero, ASCII digits, below 2**63.
_TASK_ID = re.compile(r"0|[1-9][0-9]{0,18}")
_MAX_ID = 2**63 - 1
#: Seconds a closing runtime keeps trying to record an outcome while the database is away.
_RECORD_GIVE_UP = 3.0
_DEFAULT_CANCEL_REASON = "cancelled by request"


def parse_task_id(model: str, task_id: str) -> int | None:
    """The task id named by a model and id as text, or None if either is malformed."""
    if not _MODEL.fullmatch(model) or not _TASK_ID.fullmatch(task_id):
        return None
    value = int(task_id)
    return value if value <= _MAX_ID else None


def _unknown(ref: TaskRef) -> UnknownTask:
    return UnknownTask(f"No task {ref.model} {ref.id}: no such model, or no task with that id.")


class Coordinator(Runtime):
    """Creates, starts, cancels, streams and recovers tasks on the running loop."""

    def __init__(self, settings: Settings, store: Store) -> None:
        self.settings = settings
        self.cancel_grace = settings.cancel_grace
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
        self._store = store
        self._hub = Hub(settings.history_size, settings.history_bytes)
        self._log = EventLog(store, settings)
        self._leases = LeaseKeeper(self, store, settings.lease_ttl, settings.lease_interval)
        self._runs: dict[int, Run] = {}
        self._kinds: dict[str, Behaviour] = {}
        self._closed = False
        self._starting = 0
        self._starts_settled = asyncio.Event()
        self._starts_settled.set()
        self._shutdown: asyncio.Task[None] | None = None
        self._app: ASGIApp | None = None

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<Coordinator {self.owner} {state} runs={len(self._runs)}>"

    @classmethod
    async def start(cls, settings: Settings) -> Coordinator:
        store = Store(settings.database, settings.busy_timeout)
        await store.open()
        coordinator = cls(settings, store)
        coordinator._log.start()
        coordinator._leases.start()
        return coordinator

    @property
    def closing(self) -> bool:
        """True from the first call of :meth:`shutdown` on."""
        return self._closed

    def _require(self, ref: TaskRef) -> int:
        task_id = parse_task_id(ref.model, ref.id)
        if task_id is None:
            raise _unknown(ref)
        return task_id

    def _behaviour(self, path: str) -> Behaviour:
        found = self._kinds.get(path)
        if found is None:
            found = self._kinds[path] = resolve_behaviour(path)
        return found

    # -- tasks ------------------------------------------------------------------------

    async def create_task(
        self,
        kind: Behaviour,
        fields: Mapping[str, Any] | None = None,
        *,
        timeout: float | None = None,
        max_attempts: int | None = None,
    ) -> TaskRef:
        path = behaviour_path(kind)
        if timeout is not None and not timeout > 0:
            raise ValueError(f"Cannot create a task with timeout {timeout!r}: give seconds > 0.")
        attempts = 1 if max_attempts is None else int(max_attempts)
        if attempts < 1:
            raise ValueError(f"Cannot create a task with max_attempts {attempts}: give 1 or more.")
        model = model_name(path)
        self._kinds.setdefault(path, kind)
        values = {name: json.dumps(value) for name, value in (fields or {}).items()}
        task_id = await self._store.create_task(model, path, values, timeout, attempts, now())
        return TaskRef(model, str(task_id))

    async def start_task(self, ref: TaskRef) -> bool:
        try:
            return await self.begin(ref, STARTABLE) is True
        except RuntimeClosed:
            return False

    async def retry_task(self, ref: TaskRef) -> bool:
        try:
            return await self.begin(ref, RETRYABLE) is True
        except RuntimeClosed:
            return False

    async def begin(
        self, ref: TaskRef, allowed: Sequence[TaskStatus], *, only_with_attempts_left: bool = False
    ) -> bool | TaskStatus:
        """Start a new run if the task's status is in ``allowed``; else the status that refused.

        Raises UnknownTask, RuntimeClosed (after shutdown) and StorageUnavailable.
        """
        if self._closed:
            raise RuntimeClosed(f"Cannot start {ref}: the runtime is shutting down.")
        task_id = self._require(ref)
        self._starting += 1
        self._starts_settled.clear()
        try:
            token = uuid.uuid4().hex
            grant = await self._store.begin_run(
                task_id,
                ref.model,
                allowed,
                self.owner,
                token,
                now(),
                only_with_attempts_left=only_with_attempts_left,
            )
            if grant is None:
                raise _unknown(ref)
            if isinstance(grant, TaskStatus):
                return grant
            try:
                behaviour: Any = self._behaviour(grant.path)
            except Exception as exc:  # the run fails with it, and says why
                behaviour = exc
            run = Run(
                self,
                ref,
                token,
                grant.attempt,
                grant.first_id,
                behaviour,
                grant.fields,
                grant.timeout,
            )
            topic = self._hub.topic(task_id, ref.model)
            topic.run = run
            topic.latest = None
            self._runs[task_id] = run
            run.launch()
            return True
        finally:
            self._starting -= 1
            if not self._starting:
                self._starts_settled.set()

    async def cancel_task(self, ref: TaskRef, reason: str | None = None) -> bool:
        return await self.cancel(ref, reason) is True

    async def cancel(self, ref: TaskRef, reason: str | None) -> bool | None:
        """Cancel a READY or RUNNING task: True if it will end CANCELLED; None if unknown."""
        task_id = parse_task_id(ref.model, ref.id)
        if task_id is None:
            return None
        text = _DEFAULT_CANCEL_REASON if reason is None else str(reason)
        stop = Stop("cancel", text)
        run = self._runs.get(task_id)
        if run is not None and run.ref.model == ref.model:
            return run.request_stop(stop)  # decided here and now: no await before it (CANCEL-6)

        def terminal(event_id: int) -> dict[str, Any]:
            data = {"reason": text, "message": "Task cancelled before it started"}
            return record_of(envelope(task_id, ref.model, event_id, "cancelled", data).event)

        verdict, record = await self._store.cancel(task_id, ref.model, self.owner, text, terminal)
        if verdict == "unknown":
            return None
        if verdict == "cancelled" and record is not None:
            topic = self._hub.get(task_id)
            if topic is not None and topic.run is None:
                topic.close(envelope_from_record(task_id, ref.model, record))
            return True
        if verdict == "local":
            run = self._runs.get(task_id)
            return run.request_stop(stop) if run is not None else False
        return verdict == "remote"

    async def get_state(self, ref: TaskRef) -> TaskState:
        row = await self._store.read_task(self._require(ref), ref.model)
        if row is None:
            raise _unknown(ref)
        return TaskState(
            status=row.status,
            created_at=row.created_at,
            started_at=row.started_at,
            completed_at=row.completed_at,
            error=row.error,
            fields=row.fields,
            attempt=row.attempt,
        )

    async def write_fields(self, ref: TaskRef, **fields: Any) -> None:
        values = {name: json.dumps(value) for name, value in fields.items()}
        if not await self._store.write_fields(self._require(ref), ref.model, values, None):
            raise _unknown(ref)

    # -- clients ----------------------------------------------------------------------

    async def subscribe(self, ref: TaskRef, *, last_event_id: int | None = None) -> Subscription:
        if self._closed:
            raise RuntimeClosed(f"Cannot subscribe to {ref}: the runtime has shut down.")
        task_id = self._require(ref)
        if last_event_id is not None:
            last_event_id = max(0, min(int(last_event_id), _MAX_ID))
        topic = self._hub.topic(task_id, ref.model)
        sub = Subscription(task_id, ref.model, self.settings.client_queue_size, last_event_id)
        needs_log = topic.attach(sub, last_event_id)
        try:
            row = await self._store.read_task(task_id, ref.model)
            if row is None:
                raise _unknown(ref)
            if needs_log and last_event_id is not None:
                await self._log.flushed(timeout=1.0)
                records = await self._store.read_events(
                    task_id, last_event_id, self.settings.log_size
                )
                backlog = [envelope_from_record(task_id, ref.model, r) for r in records]
                memory = sub.topic.history() if sub.topic is not None else []
                sub.release(backlog + memory)
            current = sub.topic
            if current is not None and current.run is None and row.status.is_finished:
                if row.terminal is not None:
                    current.close(envelope_from_record(task_id, ref.model, row.terminal))
        except BaseException:
            sub.close_now()
            raise
        return sub

    # -- what runs need (RunHost) -------------------------------------------------------

    def publish(self, run: Run, env: Envelope) -> None:
        topic = self._hub.get(run.task_id)
        if topic is not None and topic.run is run:
            topic.publish(env)
        self._log.append(run.task_id, run.token, env)

    async def read_fields(self, task_id: int) -> Mapping[str, Any]:
        return await self._store.read_fields(task_id)

    async def write_fields_of(self, run: Run, values: Mapping[str, str]) -> bool:
        return await self._store.write_fields(run.task_id, None, values, run.token)

    async def conclude(self, run: Run, outcome: Outcome) -> None:
        """Record the outcome, then tell the run's clients: in that order (FUNC-15)."""
        topic = self._hub.get(run.task_id)
        if topic is not None and topic.run is not run:
            topic = None
        try:
            if outcome.lost:
                await self._close_lost(run)
                return
            if outcome.status is TaskStatus.FAILED:
                logger.error(
                    "Task %s %s failed: %s",
                    run.ref.model,
                    run.ref.id,
                    outcome.error,
                    exc_info=outcome.exception,
                )
            # From here on, a client that joins gets the terminal event only.
            run.recording = True
            terminal = envelope(run.task_id, run.ref.model, run.next_id, outcome.type, outcome.data)
            run.next_id += 1
            recorded = await self._record(run, outcome, terminal)
            if recorded is False:
                await self._close_lost(run)
            elif topic is not None and outcome.status is TaskStatus.INTERRUPTED:
                topic.run = None  # its clients get the farewell instead (SPEC, terminal events)
                self._hub.discard(topic)
            elif topic is not None:
                topic.close(terminal)
        finally:
            if self._runs.get(run.task_id) is run:
                del self._runs[run.task_id]

    async def _record(self, run: Run, outcome: Outcome, terminal: Envelope) -> bool | None:
        """Write the outcome, retrying while the database is away (EDGE-12)."""
        loop = asyncio.get_running_loop()
        give_up: float | None = None
        while True:
            pending = self._log.take(run.task_id)
            try:
                return await self._store.record_outcome(
                    run.task_id,
                    run.token,
                    outcome.status,
                    outcome.error,
                    record_of(terminal.event),
                    pending,
                    self.settings.log_size,
                )
            except StorageUnavailable:
                self._log.restore(pending)
                if self._closed:
                    give_up = give_up or loop.time() + _RECORD_GIVE_UP
                    if loop.time() >= give_up:
                        logger.warning("Could not record how %s ended: no database", run.ref)
                        return None
                await asyncio.sleep(0.25)

    async def _close_lost(self, run: Run) -> None:
        """A run recovered elsewhere: its clients get the outcome that was recorded."""
        topic = self._hub.get(run.task_id)
        if topic is None or topic.run is not run:
            return
        terminal = None
        try:
            row = await self._store.read_task(run.task_id, run.ref.model)
        except StorageUnavailable:
            row = None
        if row is not None and row.terminal is not None:
            terminal = envelope_from_record(run.task_id, run.ref.model, row.terminal)
        topic.close(terminal)

    # -- what the lease keeper needs ------------------------------------------------------

    def owned_runs(self) -> dict[int, str]:
        return {task_id: run.token for task_id, run in self._runs.items()}

    def on_run_lost(self, task_id: int) -> None:
        run = self._runs.get(task_id)
        if run is not None:
            logger.warning("Task %s was recovered by another process; stopping it here", run.ref)
            run.request_stop(Stop("lost"))

    def on_cancel_requested(self, task_id: int, reason: str) -> None:
        run = self._runs.get(task_id)
        if run is not None:
            run.request_stop(Stop("cancel", reason))

    async def recover(self, row: RunningRow) -> None:
        reason = "its process stopped renewing its lease"

        def terminal(event_id: int) -> dict[str, Any]:
            data = {"reason": reason, "message": "Task interrupted: its run was lost"}
            return record_of(envelope(row.id, row.model, event_id, "interrupted", data).event)

        record = await self._store.recover(row, reason, terminal)
        if record is None:
            return
        logger.warning(
            "Task %s %s was lost with its process; recorded INTERRUPTED", row.model, row.id
        )
        self.deliver_outcomes({row.id: record})
        if row.attempt < row.max_attempts:
            await self.rerun(row)

    async def rerun(self, row: RunningRow) -> None:
        """Run an interrupted task with runs left again (EDGE-9)."""
        ref = TaskRef(row.model, str(row.id))
        try:
            started = await self.begin(ref, (TaskStatus.INTERRUPTED,), only_with_attempts_left=True)
        except (UnknownTask, RuntimeClosed):
            return
        if started is True:
            logger.info(
                "Task %s runs again (attempt %d of %d)", ref, row.attempt + 1, row.max_attempts
            )

    def watched_task_ids(self) -> list[int]:
        if self._closed:
            return []
        return [t.task_id for t in self._hub.topics() if t.run is None and t.subscribers]

    def deliver_outcomes(self, records: Mapping[int, Mapping[str, Any]]) -> None:
        if self._closed:
            return
        for task_id, record in records.items():
            topic = self._hub.get(task_id)
            if topic is not None and topic.run is None:
                topic.close(envelope_from_record(task_id, topic.model, record))

    # -- the rest of the contract -----------------------------------------------------------

    async def health(self) -> str | None:
        """None if the runtime accepts work; else why not (for a 503)."""
        if self._closed:
            return "draining: the server is shutting down"
        try:
            await self._store.probe()
        except StorageUnavailable as exc:
            return str(exc)
        return None

    def asgi_app(self) -> ASGIApp:
        if self._app is None:
            from .http import App

            self._app = App(self, self.settings)
        return self._app

    def stats(self) -> RuntimeStats:
        return RuntimeStats(
            running_tasks=len(self._runs),
            subscribers=self._hub.subscriber_count,
            topics=self._hub.topic_count,
        )

    async def shutdown(self, grace: float = 5.0) -> None:
        if self._shutdown is None:
            self._closed = True
            self._shutdown = asyncio.get_running_loop().create_task(
                self._drain(max(0.0, grace)), name="independent:shutdown"
            )
        await asyncio.shield(self._shutdown)

    async def _drain(self, grace: float) -> None:
        await self._starts_settled.wait()  # a start under way becomes a run to drain (RACE-11)
        running = [run.done for run in self._runs.values()]
        if running and grace > 0:
            await asyncio.wait(running, timeout=grace)
        for run in list(self._runs.values()):
            run.request_stop(Stop("interrupt", "the runtime is shutting down"))
        remaining = [run.done for run in self._runs.values()]
        if remaining:
            await asyncio.wait(remaining)
        self._hub.farewell_all()
        await self._leases.stop()
        await self._log.close(timeout=2.0)
        await self._store.close()

    def emergency_interrupt(self) -> None:
        """Record this process's runs INTERRUPTED, synchronously: it is about to exit at once."""
        if self._runs:
            try:
                Store.interrupt_owned(
                    self._store.path, self.owner, "the server was told twice to stop", now()
                )
            except Exception as exc:  # best effort: lease recovery covers the rest
                logger.warning("Could not record interrupted runs: %s", exc)
