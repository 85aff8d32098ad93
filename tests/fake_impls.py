"""Small fake implementations that the harness tests (tests/test_plugin.py) run against.

They are loaded by dotted path (``--impl tests.fake_impls:FullImpl``), so they
must stay importable with the repository root on ``sys.path``. The runtime is
a tiny in-memory coordinator: enough for cases that subscribe, start and leak,
nothing the suites would accept as an implementation.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from conformance.contract import (
    TERMINAL_EVENTS,
    ASGIApp,
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
)

_MODEL = "fake"


def _now() -> str:
    return datetime.now(UTC).isoformat()


class _Subscription(Subscription):
    def __init__(self, runtime: MemoryRuntime, ref: TaskRef) -> None:
        self._runtime = runtime
        self._ref = ref
        self._ended = False
        self.queue: asyncio.Queue[Event | None] = asyncio.Queue()

    def __aiter__(self) -> _Subscription:
        return self

    async def __anext__(self) -> Event:
        # Cancellation-safe, as the contract asks: a cancelled get() takes nothing off the queue.
        if self._ended:
            raise StopAsyncIteration
        event = await self.queue.get()
        if event is None:
            self._ended = True
            raise StopAsyncIteration
        self._ended = event.is_terminal
        return event

    async def aclose(self) -> None:
        self._runtime._subscribers.get(self._ref.id, set()).discard(self)
        self.queue.put_nowait(None)


class _Context:
    def __init__(self, runtime: MemoryRuntime, ref: TaskRef) -> None:
        self._runtime = runtime
        self._ref = ref

    @property
    def task_id(self) -> str:
        return self._ref.id

    @property
    def fields(self) -> Mapping[str, Any]:
        return self._runtime._fields[self._ref.id]

    async def send_event(self, type: str, data: Mapping[str, Any] | None = None) -> None:
        if type in TERMINAL_EVENTS:
            raise ValueError(f"A task may not send the terminal event {type!r}.")
        self._runtime._publish(self._ref, type, data)

    async def read_fields(self) -> Mapping[str, Any]:
        return dict(self._runtime._fields[self._ref.id])

    async def write_fields(self, **changes: Any) -> None:
        self._runtime._fields[self._ref.id].update(changes)


class MemoryRuntime(Runtime):
    """An in-memory runtime: tasks are asyncio tasks, clients are queues."""

    def __init__(self) -> None:
        self._ids = itertools.count(1)
        self._kinds: dict[str, Behaviour] = {}
        self._fields: dict[str, dict[str, Any]] = {}
        self._states: dict[str, TaskState] = {}
        self._event_ids: dict[str, int] = {}
        self._running: dict[str, asyncio.Task[None]] = {}
        self._subscribers: dict[str, set[_Subscription]] = {}

    def _ref(self, ref: TaskRef) -> str:
        if ref.id not in self._states:
            raise UnknownTask(str(ref))
        return ref.id

    def _publish(self, ref: TaskRef, type: str, data: Mapping[str, Any] | None) -> None:
        self._event_ids[ref.id] = self._event_ids.get(ref.id, 0) + 1
        event = Event(self._event_ids[ref.id], type, dict(data or {}), ref.id, ref.model, _now())
        for subscription in self._subscribers.get(ref.id, set()):
            subscription.queue.put_nowait(event)

    async def create_task(
        self,
        kind: Behaviour | str,
        fields: Mapping[str, Any] | None = None,
        *,
        timeout: float | None = None,
    ) -> TaskRef:
        if isinstance(kind, str):
            raise UnknownTask(f"No built-in kind {kind!r}.")
        ref = TaskRef(_MODEL, str(next(self._ids)))
        self._kinds[ref.id] = kind
        self._fields[ref.id] = dict(fields or {})
        self._states[ref.id] = TaskState(TaskStatus.READY, created_at=_now())
        return ref

    async def start_task(self, ref: TaskRef) -> bool:
        if self._states[self._ref(ref)].status is not TaskStatus.READY:
            return False
        self._states[ref.id] = TaskState(TaskStatus.RUNNING, started_at=_now())
        self._running[ref.id] = asyncio.create_task(self._run(ref), name=f"fake-run-{ref.id}")
        return True

    async def _run(self, ref: TaskRef) -> None:
        started = self._states[ref.id].started_at
        try:
            result = await self._kinds[ref.id](_Context(self, ref))
        except asyncio.CancelledError:
            status, terminal, data = TaskStatus.CANCELLED, "cancelled", {}
        except Exception as exc:
            status, terminal = TaskStatus.FAILED, "error"
            data = {"error_type": type(exc).__name__, "message": str(exc)}
        else:
            status, terminal, data = TaskStatus.SUCCESSFUL, "complete", dict(result or {})
        self._states[ref.id] = TaskState(status, started_at=started, completed_at=_now())
        self._publish(ref, terminal, data)
        del self._running[ref.id]

    async def cancel_task(self, ref: TaskRef, reason: str | None = None) -> bool:
        task = self._running.get(self._ref(ref))
        if task is None:
            return False
        task.cancel(reason)
        return True

    async def get_state(self, ref: TaskRef) -> TaskState:
        state = self._states[self._ref(ref)]
        return TaskState(
            state.status,
            state.created_at,
            state.started_at,
            state.completed_at,
            state.error,
            dict(self._fields[ref.id]),
        )

    async def write_fields(self, ref: TaskRef, **fields: Any) -> None:
        self._fields[self._ref(ref)].update(fields)

    async def subscribe(self, ref: TaskRef, *, last_event_id: int | None = None) -> Subscription:
        subscription = _Subscription(self, ref)
        self._subscribers.setdefault(self._ref(ref), set()).add(subscription)
        return subscription

    def asgi_app(self) -> ASGIApp:
        raise NotImplementedError("The fake runtime has no HTTP interface.")

    def stats(self) -> RuntimeStats:
        return RuntimeStats(
            running_tasks=len(self._running),
            subscribers=sum(len(s) for s in self._subscribers.values()),
            topics=sum(1 for s in self._subscribers.values() if s),
        )

    async def shutdown(self, grace: float = 5.0) -> None:
        tasks = list(self._running.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class FullImpl(Implementation):
    """Declares every capability and no expected failure."""

    name = "full"
    version = "1.2.3"
    capabilities = frozenset(Capability)

    async def start(self) -> Runtime:
        return MemoryRuntime()

    def environment(self) -> Mapping[str, str]:
        return {"database": "memory", "stack": "none", "platform": "fake-os"}


class BareImpl(FullImpl):
    """Declares no capability at all."""

    name = "bare"
    version = "0.0.1"
    capabilities: frozenset[Capability] = frozenset()


class PartialImpl(FullImpl):
    """Declares HTTP and persistence, but not cancellation."""

    name = "partial"
    capabilities = frozenset({Capability.HTTP, Capability.PERSISTENCE})


class XfailImpl(FullImpl):
    """Declares FUNC-1 an expected failure, and cannot start a runtime."""

    name = "xfail"
    expected_failures = {"FUNC-1": "known to drop events"}

    async def start(self) -> Runtime:
        raise RuntimeError("fake implementation cannot start")


class RacyImpl(FullImpl):
    """Declares FUNC-3 failing in some interleavings only."""

    name = "racy"
    racy_failures = {"FUNC-3": "loses the race sometimes"}


def not_an_implementation() -> object:
    """A factory that returns something other than an Implementation."""
    return object()
