"""The seed's system before its fixes, seen through the conformance contract.

This implementation must fail: it is the suite's first check on itself. It
declares the capabilities the seed's system had (a stream over HTTP, a server
process, tasks stored in a database) and not those it lacked (cancel,
timeouts, graceful shutdown, resume, retry, recovery). Every case it fails
among those it is graded on is listed in ``expected_failures`` with what the
seed lacked; the list is strict, so a case that starts passing, or one that
fails unlisted, breaks the run.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from conformance.contract import (
    ASGIApp,
    Behaviour,
    Capability,
    Event,
    Implementation,
    Runtime,
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

from .expected import EXPECTED_FAILURES, RACY_FAILURES
from .system import TERMINAL, Store, StreamTask, TaskCoordinator

__all__ = ["BaselineImplementation"]


class BaselineImplementation(Implementation):
    name = "baseline"
    version = "0.1.0"
    contract_version = "2.1"
    capabilities = frozenset({Capability.HTTP, Capability.PROCESS, Capability.PERSISTENCE})
    expected_failures: Mapping[str, str] = EXPECTED_FAILURES
    racy_failures: Mapping[str, str] = RACY_FAILURES
    # The seed's server gives a request head no deadline at all (EDGE-24 is an
    # expected failure): declared short, the case finds that out in seconds.
    timings = Timings(header_timeout=1.0)

    def __init__(self) -> None:
        self._directory = Path(tempfile.mkdtemp(prefix="baseline-"))
        self.database = self._directory / "tasks.sqlite3"
        #: One store for the session, as the seed's Django had one connection.
        self._store = Store(self.database)

    async def start(self) -> Runtime:
        await self._store.call("SELECT 1")  # connected before the runtime counts as started
        return BaselineRuntime(TaskCoordinator(self._store))

    def server_command(self, host: str, port: int, *, grace: float = 5.0) -> ServerSpec:
        # No --grace: the seed's server had no drain to give one to.
        argv = [sys.executable, "-m", "baseline_impl.server", "--host", host, "--port", str(port)]
        return ServerSpec(argv=[*argv, "--db", str(self.database)])

    def environment(self) -> Mapping[str, str]:
        return {"database": "sqlite", "stack": "asgineer + sqlite3 (the seed)"}

    def close(self) -> None:
        self._store.close()
        shutil.rmtree(self._directory, ignore_errors=True)


class BaselineSubscription(Subscription):
    """A client's queue. The seed's events carry no id: every event has id 0."""

    def __init__(self, task: StreamTask, queue: asyncio.Queue[dict[str, Any]]) -> None:
        self._task = task
        self._queue = queue
        self._ended = False

    def __aiter__(self) -> BaselineSubscription:
        return self

    async def __anext__(self) -> Event:
        if self._ended:
            raise StopAsyncIteration
        raw = await self._queue.get()
        if raw["type"] == "_closed":
            self._ended = True
            raise StopAsyncIteration
        self._ended = raw["type"] in TERMINAL
        data = dict(raw["data"])
        meta = {key: data.pop(key) for key in ("_task_id", "_model", "_timestamp")}
        return Event(
            0, raw["type"], data, str(meta["_task_id"]), meta["_model"], meta["_timestamp"]
        )

    async def aclose(self) -> None:
        await self._task.remove_client(self._queue)
        self._queue.put_nowait({"type": "_closed"})


class BaselineRuntime(Runtime):
    def __init__(self, coordinator: TaskCoordinator) -> None:
        self.coordinator = coordinator
        self._app: ASGIApp | None = None

    async def create_task(
        self,
        kind: Behaviour,
        fields: Mapping[str, Any] | None = None,
        *,
        timeout: float | None = None,
        max_attempts: int | None = None,
    ) -> TaskRef:
        # The seed had no timeouts and no attempts: both are ignored.
        pk = await self.coordinator.store.create(behaviour_path(kind), fields or {})
        return TaskRef(StreamTask.MODEL, str(pk))

    async def _task(self, ref: TaskRef) -> StreamTask:
        task = await self.coordinator.load(int(ref.id)) if ref.id.isdigit() else None
        if ref.model != StreamTask.MODEL or task is None:
            raise UnknownTask(f"{ref} does not exist.")
        return task

    async def start_task(self, ref: TaskRef) -> bool:
        return await self.coordinator.start_task(await self._task(ref))

    async def cancel_task(self, ref: TaskRef, reason: str | None = None) -> bool:
        return False  # the seed had no cancel_task()

    async def get_state(self, ref: TaskRef) -> TaskState:
        row = await self.coordinator.store.row(int(ref.id))
        if row is None:
            raise UnknownTask(f"{ref} does not exist.")
        _, fields, created, completed = row
        key = self.coordinator.get_task_key(StreamTask.MODEL, int(ref.id))
        if completed is not None:
            status = TaskStatus.SUCCESSFUL
        elif key in self.coordinator._task_instances:
            status = TaskStatus.RUNNING
        else:
            status = TaskStatus.READY  # a failed task is not told apart: no status column
        return TaskState(status, created_at=created, completed_at=completed, fields=fields)

    async def write_fields(self, ref: TaskRef, **fields: Any) -> None:
        task = await self._task(ref)
        await task.store.save_fields(task.pk, {**task.fields, **fields})

    async def subscribe(self, ref: TaskRef, *, last_event_id: int | None = None) -> Subscription:
        task = await self._task(ref)
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        await task.add_client(queue)
        return BaselineSubscription(task, queue)

    def asgi_app(self) -> ASGIApp:
        if self._app is None:
            from .server import make_app

            self._app = make_app(self.coordinator)
        return self._app

    def stats(self) -> RuntimeStats:
        running = self.coordinator._task_instances.values()
        return RuntimeStats(
            running_tasks=len(running),
            subscribers=sum(len(task._clients) for task in running),
            topics=sum(1 for task in running if task._clients),
        )

    async def shutdown(self, grace: float = 5.0) -> None:
        # The seed had no shutdown: its tasks died with the process. So here:
        # killed at once, nothing recorded, nobody told.
        runners = list(self.coordinator._runners)
        for runner in runners:
            runner.cancel()
        await asyncio.gather(*runners, return_exceptions=True)
