"""Frozen: the guide's minimal implementation as a third party wrote it against contract 1.0.

Do not update it to newer names: it is how tests/test_contract_versions.py
checks that an implementation of the previous major contract is still graded,
through the shims in conformance/compat.py. Contract 1.0 called the task's
fields ``refresh``/``update_fields``, had no ``RuntimeClosed``,
``EVENT_TYPE_PATTERN`` or ``contract_version``, and took a kind by name too.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
from collections import deque
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime
from typing import Any

from conformance.contract import (
    FAREWELL_EVENT,
    OVERFLOW_EVENT,
    TERMINAL_EVENTS,
    Behaviour,
    Capability,
    Event,
    Implementation,
    Runtime,
    RuntimeStats,
    Subscription,
    TaskRef,
    TaskState,
    TaskStatus,
    UnknownTask,
    behaviour_path,
)

EVENT_TYPE = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def now() -> str:
    return datetime.now(UTC).isoformat()


class Task:
    """One task: its behaviour, fields, state, events so far and clients."""

    def __init__(self, ref: TaskRef, kind: Behaviour, fields: Mapping[str, Any]) -> None:
        self.ref, self.kind, self.fields = ref, kind, dict(fields)
        self.state = TaskState(TaskStatus.READY, created_at=now())
        self.events: list[Event] = []
        self.clients: set[Client] = set()
        self.runner: asyncio.Task[None] | None = None
        #: Why the runner was cancelled: a cancel's reason, or None for a shutdown.
        self.stopped_for: str | None = None


class Context:
    """What a behaviour is given (contract.TaskContext)."""

    def __init__(self, runtime: Contract1Runtime, task: Task) -> None:
        self._runtime, self._task = runtime, task

    @property
    def task_id(self) -> str:
        return self._task.ref.id

    @property
    def fields(self) -> Mapping[str, Any]:
        return dict(self._task.fields)

    async def send_event(self, type: str, data: Mapping[str, Any] | None = None) -> None:
        if not isinstance(type, str) or not EVENT_TYPE.fullmatch(type):
            raise ValueError(f"Cannot send event type {type!r}: not in SPEC's characters.")
        if type in TERMINAL_EVENTS or type == FAREWELL_EVENT:
            raise ValueError(f"Cannot send {type!r}: the implementation sends it itself.")
        json.dumps(data or {}, allow_nan=False, default=str)  # ValueError for NaN (FUNC-20)
        self._runtime.publish(self._task, type, dict(data or {}))
        await asyncio.sleep(0)  # let clients keep up with a task that never awaits

    async def refresh(self) -> Mapping[str, Any]:
        return dict(self._task.fields)

    async def update_fields(self, **changes: Any) -> None:
        self._task.fields.update(changes)


class Client(Subscription):
    """One subscriber: a bounded queue, ended by a terminal event or an overflow."""

    def __init__(self, task: Task, limit: int) -> None:
        self.task, self.limit = task, limit
        self.queue: deque[Event] = deque()
        self.received: int | None = None  # the id of the last event read
        self.ended = False
        self.wakeup = asyncio.Event()

    def push(self, event: Event) -> None:
        if self.ended:
            return
        if len(self.queue) >= self.limit:  # too far behind: told, and dropped (FUNC-18)
            data = {"last_event_id": self.received, "reason": "the client fell too far behind"}
            self.queue.clear()
            self.queue.append(
                Event(self.received or 0, OVERFLOW_EVENT, data, event.task_id, event.model, now())
            )
            self.close()
        else:
            self.queue.append(event)
            if event.is_terminal or event.type == FAREWELL_EVENT:
                self.close()
        self.wakeup.set()

    def close(self) -> None:
        self.ended = True
        self.task.clients.discard(self)
        self.wakeup.set()

    def __aiter__(self) -> AsyncIterator[Event]:
        return self

    async def __anext__(self) -> Event:
        while not self.queue:
            if self.ended:
                raise StopAsyncIteration
            self.wakeup.clear()
            await self.wakeup.wait()
        event = self.queue.popleft()
        self.received = event.id
        return event

    async def aclose(self) -> None:
        self.queue.clear()
        self.close()


class Contract1Runtime(Runtime):
    def __init__(self, limit: int) -> None:
        self.tasks: dict[TaskRef, Task] = {}
        self.limit = limit
        self.closed = False

    def task(self, ref: TaskRef) -> Task:
        try:
            return self.tasks[ref]
        except KeyError:
            raise UnknownTask(f"{ref} does not exist.") from None

    def publish(self, task: Task, type: str, data: dict[str, Any]) -> Event:
        ref = task.ref
        event = Event(len(task.events) + 1, type, data, ref.id, ref.model, now())
        task.events.append(event)
        for client in tuple(task.clients):
            client.push(event)
        return event

    async def create_task(
        self,
        kind: Behaviour | str,
        fields: Mapping[str, Any] | None = None,
        *,
        timeout: float | None = None,
        max_attempts: int | None = None,
    ) -> TaskRef:
        if isinstance(kind, str):
            raise UnknownTask(f"No built-in task kind {kind!r}.")
        model = behaviour_path(kind).replace(".", "-").replace(":", "-").replace("_", "-")
        ref = TaskRef(model, str(len(self.tasks) + 1))
        self.tasks[ref] = Task(ref, kind, fields or {})
        return ref

    async def start_task(self, ref: TaskRef) -> bool:
        task = self.task(ref)
        if self.closed:
            return False
        if task.state.status is not TaskStatus.READY:
            return False
        task.state = TaskState(TaskStatus.RUNNING, task.state.created_at, now(), attempt=1)
        task.runner = asyncio.create_task(self.run(task), name=f"run {ref}")
        return True

    async def run(self, task: Task) -> None:
        try:
            result = await task.kind(Context(self, task))
        except asyncio.CancelledError:
            if task.stopped_for is None:  # a shutdown: the run may be run again
                ending = TaskStatus.INTERRUPTED, "interrupted", {"reason": "shutdown"}
            else:
                ending = TaskStatus.CANCELLED, "cancelled", {"reason": task.stopped_for}
        except BaseException as exc:  # any failure ends the run, never the loop (EDGE-1)
            ending = TaskStatus.FAILED, "error", {"error_type": type(exc).__name__}
            ending[2]["message"] = str(exc)
        else:
            data = {"message": "Task completed successfully", **(result or {})}
            ending = TaskStatus.SUCCESSFUL, "complete", data
            try:
                json.dumps(data, allow_nan=False, default=str)
            except ValueError as exc:  # a result that is not strict JSON fails (FUNC-20)
                ending = TaskStatus.FAILED, "error", {"error_type": "ValueError"}
                ending[2]["message"] = str(exc)
        self.finish(task, *ending)

    def finish(self, task: Task, status: TaskStatus, type: str, data: dict[str, Any]) -> None:
        """Record how the run ended, then tell its clients: one terminal event per run."""
        data.setdefault("message", f"Task was {status.lower().replace('_', ' ')}")
        error = "" if status is TaskStatus.SUCCESSFUL else f"{type}: {data['message']}"
        started = task.state.started_at
        task.state = TaskState(status, task.state.created_at, started, now(), error, attempt=1)
        self.publish(task, type, data)

    async def cancel_task(self, ref: TaskRef, reason: str | None = None) -> bool:
        task = self.tasks.get(ref)
        if task is None or task.state.status.is_finished:
            return False
        task.stopped_for = reason or "cancelled"
        if task.runner is None:
            self.finish(task, TaskStatus.CANCELLED, "cancelled", {"reason": task.stopped_for})
        else:
            task.runner.cancel()
            await asyncio.gather(task.runner, return_exceptions=True)
        return True

    async def get_state(self, ref: TaskRef) -> TaskState:
        task = self.task(ref)
        return dataclasses.replace(task.state, fields=dict(task.fields))

    async def update_fields(self, ref: TaskRef, **fields: Any) -> None:
        self.task(ref).fields.update(fields)

    async def subscribe(self, ref: TaskRef, *, last_event_id: int | None = None) -> Subscription:
        task = self.task(ref)
        client = Client(task, self.limit)
        if task.events:  # a late client gets the latest event at once (FUNC-5)
            client.push(task.events[-1])
        if not client.ended:
            task.clients.add(client)
        return client

    def asgi_app(self) -> Any:
        return SseApp(self)

    def stats(self) -> RuntimeStats:
        running = sum(t.runner is not None and not t.runner.done() for t in self.tasks.values())
        clients = sum(len(t.clients) for t in self.tasks.values())
        return RuntimeStats(running, clients, sum(bool(t.clients) for t in self.tasks.values()))

    async def shutdown(self, grace: float = 5.0) -> None:
        self.closed = True
        runners = [t.runner for t in self.tasks.values() if t.runner and not t.runner.done()]
        if runners:  # running tasks get the grace period ...
            await asyncio.wait(runners, timeout=grace)
        for task in self.tasks.values():  # ... clients get the farewell ...
            last = task.events[-1].id if task.events else 0
            data = {"last_event_id": last}
            for client in tuple(task.clients):
                client.push(Event(last, FAREWELL_EVENT, data, task.ref.id, task.ref.model, now()))
            if task.runner is not None and not task.runner.done():  # ... the rest: INTERRUPTED
                task.runner.cancel()
                await asyncio.gather(task.runner, return_exceptions=True)


class SseApp:
    """The HTTP interface: GET /health, GET /stream/<model>/<id>, POST .../start."""

    def __init__(self, runtime: Contract1Runtime) -> None:
        self.runtime = runtime

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "websocket":  # not served (HTTP-9)
            await receive()
            await send({"type": "websocket.close", "code": 1008})
            return
        path, method, parts = scope["path"], scope["method"], scope["path"].split("/")
        if path == "/health":
            await reply(send, 200 if method == "GET" else 405, "OK" if method == "GET" else "GET")
        elif len(parts) == 4 and parts[1] == "stream":
            if method != "GET":
                return await reply(send, 405, "Use GET to stream a task.")
            ref = TaskRef(parts[2], parts[3])
            if ref not in self.runtime.tasks:  # only canonical ids were ever made
                return await reply(send, 404, f"No task {parts[2]!r} {parts[3]!r}.")
            await self.stream(ref, receive, send)
        elif len(parts) == 5 and parts[1] == "tasks" and parts[4] == "start":
            if method != "POST":
                return await reply(send, 405, "Use POST to start a task.")
            task = self.runtime.tasks.get(TaskRef(parts[2], parts[3]))
            if task is None:
                return await reply(send, 404, f"No task {parts[2]!r} {parts[3]!r}.")
            if await self.runtime.start_task(task.ref):
                return await reply(send, 202, "started")
            await reply(send, 409, f"{task.ref} is {task.state.status}, not READY.")
        else:
            await reply(send, 404, f"Not found: {path!r}.")

    async def stream(self, ref: TaskRef, receive: Any, send: Any) -> None:
        client = await self.runtime.subscribe(ref)  # registered before the headers (HTTP-4)
        headers = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"retry: 2000\n\n", "more_body": True})

        async def leave_when_gone() -> None:  # a client that leaves is unregistered (HTTP-6)
            while (await receive())["type"] != "http.disconnect":
                pass
            client.close()

        watcher = asyncio.create_task(leave_when_gone())
        try:
            async for event in client:
                await send({"type": "http.response.body", "body": frame(event), "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            client.close()
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)


def frame(event: Event) -> bytes:
    meta = {"_task_id": event.task_id, "_model": event.model, "_timestamp": event.timestamp}
    data = json.dumps({**event.data, **meta}, default=str)
    return f"event: {event.type}\ndata: {data}\nid: {event.id}\n\n".encode()


async def reply(send: Any, status: int, text: str) -> None:
    headers = [(b"content-type", b"text/plain; charset=utf-8")]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": text.encode()})


class Contract1Implementation(Implementation):
    name = "contract1"
    version = "1.0"
    capabilities = frozenset({Capability.HTTP})

    async def start(self) -> Runtime:
        return Contract1Runtime(self.client_queue_size)
