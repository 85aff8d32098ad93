"""procrastinate seen through ``conformance.contract``.

A task's run is a procrastinate job, run by the session's worker process.
The runtime defers jobs, asks procrastinate to cancel (abort) them, and
reads what they recorded; its clients hear of events through PostgreSQL's
LISTEN/NOTIFY (``bus``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import platform
import sys
from collections.abc import Mapping
from typing import Any

from conformance.contract import (
    ASGIApp,
    Behaviour,
    Budgets,
    Capability,
    Implementation,
    Runtime,
    RuntimeClosed,
    RuntimeStats,
    ServerSpec,
    Subscription,
    TaskRef,
    TaskState,
    TaskStatus,
    Timings,
    UnknownTask,
    behaviour_path,
)

from . import store
from .bus import MODEL, Bus
from .http import HttpApp, task_pk
from .session import Session, Unavailable
from .store import db, now

logger = logging.getLogger(__name__)

#: How long a cancel waits for the worker to end the run it aborted, and how
#: long a shutdown waits for the runs it stopped. procrastinate cancels an
#: async job's asyncio task once; a job that swallows it runs on.
CANCEL_GRACE = 2.0
#: How often a wait for runs to end reads procrastinate's status of their jobs.
SETTLE_POLL = 0.1
#: Workers' heartbeats (PROCRASTINATE_WORKER_DEFAULTS) come every second; a
#: worker silent this long is stalled, and procrastinate's get_stalled_jobs
#: returns its jobs.
STALLED_AFTER = 5.0
#: How often a runtime or server asks procrastinate for stalled jobs.
RECOVERY_POLL = 0.5
#: How long a server's start waits for its worker to take the job.
TAKEN_WITHIN = 5.0
#: Streams: a keep-alive comment this often, and a client that takes nothing
#: of a write for this long is dropped.
KEEPALIVE = 2.0
WRITE_DEADLINE = 2.0
#: uvicorn's --timeout-keep-alive in the server process.
HEADER_TIMEOUT = 5.0


class ProcrastinateImplementation(Implementation):
    """procrastinate 3.10.0 on Django: its worker process, defer, abort; glue for events."""

    name = "procrastinate"
    version = "3.10.0"
    contract_version = "2.2"
    capabilities = frozenset(
        {
            Capability.PERSISTENCE,
            Capability.CANCEL,
            Capability.HTTP,
            Capability.PROCESS,
            Capability.RESUME,
            Capability.TIMEOUTS,
            Capability.RETRY,
            Capability.RECOVERY,
        }
    )
    timings = Timings(
        keepalive=KEEPALIVE,
        write_deadline=WRITE_DEADLINE,
        cancel_grace=CANCEL_GRACE,
        orphan_timeout=STALLED_AFTER + RECOVERY_POLL + 1.5,
        header_timeout=HEADER_TIMEOUT,
    )
    #: uvicorn's h11 limit on an unfinished request head (--h11-max-incomplete-event-size).
    max_header_bytes = 64 * 1024
    #: A server keeps nothing of a finished task: its events are in PostgreSQL,
    #: and a topic goes with its last client. 8 MiB is room for what is in flight.
    budgets = Budgets(finished_events=8 * 1024 * 1024)

    def __init__(self) -> None:
        from .expected import EXPECTED_FAILURES, RACY_FAILURES

        self.expected_failures = EXPECTED_FAILURES
        self.racy_failures = RACY_FAILURES
        self.session: Session | None = None

    async def start(self) -> Runtime:
        if self.session is None:
            session = Session()
            try:
                await db(session.open)
            except Unavailable as exc:
                if os.environ.get("CI") == "true":
                    raise RuntimeError(f"{exc}; CI needs it.") from exc
                import pytest

                pytest.skip(f"procrastinate needs PostgreSQL: {exc}")
            self.session = session
        return await ProcrastinateRuntime.open(
            self.session.conninfo, store.DEFAULT_QUEUE, self.client_queue_size
        )

    def server_command(self, host: str, port: int, *, grace: float = 5.0) -> ServerSpec:
        """uvicorn serving the glue's HTTP interface, with a procrastinate worker inside.

        The server's worker (``App.run_worker_async`` in the ASGI lifespan)
        runs the jobs of the starts it is sent, on a queue of its own: a
        SIGKILL of the server kills the runs it holds (EDGE-6, 7, 9).
        """
        assert self.session is not None, "server_command before a runtime started"
        argv = [sys.executable, "-m", "procrastinate_impl", host, str(port), str(grace)]
        return ServerSpec(argv=argv, env=self.session.environ())

    def environment(self) -> Mapping[str, str]:
        import django
        import psycopg
        import uvicorn

        return {
            "stack": f"procrastinate 3.10.0, Django {django.get_version()}, "
            f"psycopg {psycopg.__version__}, uvicorn {uvicorn.__version__}",
            "database": "postgresql",
            "platform": f"{platform.system()}-{platform.machine()}",
        }

    def close(self) -> None:
        if self.session is not None:
            self.session.close()
            self.session = None


class ProcrastinateRuntime(Runtime):
    def __init__(self, queue: str, queue_size: int, *, wait_taken: bool = False) -> None:
        self.bus: Bus
        #: A start returns once this process's worker has taken the job (a server).
        self.wait_taken = wait_taken
        #: The procrastinate queue the jobs of this runtime's starts go to.
        self.queue = queue
        self.queue_size = queue_size
        #: Tasks this runtime started whose run has not ended yet.
        self.running: set[int] = set()
        self._ended: dict[int, asyncio.Event] = {}
        self._claimed: dict[int, asyncio.Event] = {}
        self._closed = False
        self._shutdown: asyncio.Task[None] | None = None
        self._recovery: asyncio.Task[None] | None = None

    @classmethod
    async def open(
        cls, conninfo: str, queue: str, queue_size: int, *, wait_taken: bool = False
    ) -> ProcrastinateRuntime:
        """A runtime on this loop: its bus listening, its watch for stalled jobs going."""
        runtime = cls(queue, queue_size, wait_taken=wait_taken)
        runtime.bus = Bus(conninfo, runtime.run_ended, runtime.run_claimed)
        await runtime.bus.open()
        runtime._recovery = asyncio.create_task(
            runtime._recover(), name="procrastinate_impl stalled jobs"
        )
        return runtime

    @property
    def closed(self) -> bool:
        return self._closed

    async def _recover(self) -> None:
        """Ask procrastinate for jobs of stalled workers; end or rerun the runs they held.

        Detection is procrastinate's (workers' heartbeats, ``get_stalled_jobs``);
        what a lost run means for its task is the glue's (``store.recover``).
        """
        from procrastinate.contrib.django import app

        while True:
            await asyncio.sleep(RECOVERY_POLL)  # a poll interval: procrastinate has no push for it
            try:
                jobs = await app.job_manager.get_stalled_jobs(
                    task_name="run_behaviour", seconds_since_heartbeat=STALLED_AFTER
                )
                for job in jobs:
                    assert job.id is not None
                    await db(store.recover, job.id, job.worker_id, self.queue)
            except Exception:  # the database away for a moment: the next poll tries again
                logger.warning("Looking for stalled jobs failed", exc_info=True)

    def run_claimed(self, pk: int) -> None:
        """A worker began a run of a task: its job is ``doing``."""
        if pk in self._claimed:
            self._claimed[pk].set()

    def run_ended(self, pk: int) -> None:
        """A terminal event was sent for a task: its run is over."""
        self.running.discard(pk)
        if pk in self._claimed:  # ended before a worker began it (a cancel won): nothing to wait
            self._claimed[pk].set()
        if pk in self._ended:
            self._ended[pk].set()

    async def _wait_ended(self, pks: set[int], timeout: float) -> None:
        """Wait until these runs have ended, or ``timeout``; settle those procrastinate ended.

        A job aborted before the glue's task function began (procrastinate's
        Django middleware awaits before it) ends with no outcome recorded by
        the glue: procrastinate's job status says how it ended, and
        ``store.settle`` records it.
        """
        waiters = {pk: self._ended.setdefault(pk, asyncio.Event()) for pk in pks}
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    while left := [pk for pk in pks if pk in self.running]:
                        with contextlib.suppress(TimeoutError):
                            async with asyncio.timeout(SETTLE_POLL):
                                await waiters[left[0]].wait()
                                continue
                        for pk in left:
                            if await db(store.settle, pk):
                                self.running.discard(pk)
        finally:
            for pk in pks:
                self._ended.pop(pk, None)

    async def create_task(
        self,
        kind: Behaviour,
        fields: Mapping[str, Any] | None = None,
        *,
        timeout: float | None = None,
        max_attempts: int | None = None,
    ) -> TaskRef:
        pk = await db(store.create, behaviour_path(kind), dict(fields or {}), timeout, max_attempts)
        return TaskRef(MODEL, str(pk))

    async def start_task(self, ref: TaskRef) -> bool:
        if self._closed:
            raise RuntimeClosed("The runtime has shut down: it starts nothing.")
        pk = _pk(ref)
        self.running.add(pk)  # before the job can end, so its end is not missed
        started = await self._begin(pk, again=False)
        if not started:
            self.running.discard(pk)
        if started is None:
            raise UnknownTask(f"{ref} does not exist.")
        return started

    async def _begin(self, pk: int, *, again: bool) -> bool | None:
        """A start (or a retry), which in a server returns once its worker has begun the run.

        A job still ``todo`` on the queue of a server killed since is no
        stalled job for procrastinate (it looks only at jobs ``doing``): once
        a server's start has answered, the run is its worker's, and found
        stalled if the server dies. The wait (bounded) is registered before
        the start, so the worker's notification is not missed.
        """
        if not self.wait_taken:
            return await db(store.start, pk, self.queue, again=again)
        claimed = self._claimed[pk] = asyncio.Event()
        try:
            started = await db(store.start, pk, self.queue, again=again)
            if started:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(TAKEN_WITHIN):
                        await claimed.wait()
            return started
        finally:
            self._claimed.pop(pk, None)

    async def retry_task(self, ref: TaskRef) -> bool:
        """A new run of a task that did not succeed: a new job, deferred as a start does."""
        if self._closed:
            raise RuntimeClosed("The runtime has shut down: it starts nothing.")
        pk = _pk(ref)
        self.running.add(pk)
        retried = await self._begin(pk, again=True)
        if not retried:
            self.running.discard(pk)
        if retried is None:
            raise UnknownTask(f"{ref} does not exist.")
        return retried

    async def exists(self, ref: TaskRef) -> bool:
        from .models import Task

        try:
            pk = _pk(ref)
        except UnknownTask:
            return False
        return await db(Task.objects.filter(pk=pk).exists)

    async def resumed_past_end(self, ref: TaskRef, last_event_id: int) -> bool:
        """True when the task has ended and ``last_event_id`` is at or past its terminal event."""
        from .models import Task

        task = await db(Task.objects.filter(pk=_pk(ref)).first)
        if task is None:
            raise UnknownTask(f"{ref} does not exist.")
        finished = task.status not in ("READY", "RUNNING")
        return finished and last_event_id >= task.last_event_id

    async def cancel_task(self, ref: TaskRef, reason: str | None = None) -> bool:
        try:
            pk = _pk(ref)
        except UnknownTask:
            return False
        cancelled = await db(store.request_stop, pk, "cancel", reason or "cancelled")
        if cancelled:
            await self._wait_ended({pk}, CANCEL_GRACE)
        return cancelled

    async def get_state(self, ref: TaskRef) -> TaskState:
        from .models import Task

        task = await db(Task.objects.filter(pk=_pk(ref)).first)
        if task is None:
            raise UnknownTask(f"{ref} does not exist.")
        status = TaskStatus(task.status)
        if status.is_finished:
            self.running.discard(task.pk)
        return TaskState(
            status=status,
            created_at=_iso(task.created_at),
            started_at=_iso(task.started_at),
            completed_at=_iso(task.completed_at),
            error=task.error,
            fields=dict(task.fields),
            attempt=task.attempt,
        )

    async def write_fields(self, ref: TaskRef, **fields: Any) -> None:
        if not await db(store.merge_fields, _pk(ref), fields):
            raise UnknownTask(f"{ref} does not exist.")

    async def subscribe(self, ref: TaskRef, *, last_event_id: int | None = None) -> Subscription:
        from .models import Task

        pk = _pk(ref)
        if not await db(Task.objects.filter(pk=pk).exists):
            raise UnknownTask(f"{ref} does not exist.")
        return await self.bus.subscribe(pk, self.queue_size, last_event_id)

    def asgi_app(self) -> ASGIApp:
        return HttpApp(self, keepalive=KEEPALIVE, write_deadline=WRITE_DEADLINE)

    def stats(self) -> RuntimeStats:
        return RuntimeStats(len(self.running), self.bus.subscribers, len(self.bus.topics))

    async def shutdown(self, grace: float = 5.0) -> None:
        if self._shutdown is None:
            self._shutdown = asyncio.create_task(
                self._stop(grace), name="procrastinate_impl shutdown"
            )
        await asyncio.shield(self._shutdown)

    async def _stop(self, grace: float) -> None:
        self._closed = True
        await self._wait_ended(set(self.running), grace)
        # The runs still going are stopped; their clients get the farewell, not
        # their `interrupted`. A run that ends before its stop lands keeps its
        # outcome, and its clients get its terminal event: deliveries wait
        # until each run's fate is decided.
        self.bus.paused = True
        stopped = set()
        for pk in set(self.running):
            if await db(store.request_stop, pk, "shutdown", "shutdown"):
                stopped.add(pk)
        # The stopped runs' cleanup sends its events before the farewell
        # (SHUT-22); their `interrupted` is for later clients only.
        await self._wait_ended(stopped, CANCEL_GRACE)
        await self.bus.flush(hold_terminal=stopped)
        self.bus.farewell(now())
        if self._recovery is not None:
            self._recovery.cancel()
            await asyncio.gather(self._recovery, return_exceptions=True)
        await self.bus.close()


def _pk(ref: TaskRef) -> int:
    pk = task_pk(ref.id) if ref.model == MODEL else None
    if pk is None:
        raise UnknownTask(f"{ref} does not exist.")
    return pk


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None
