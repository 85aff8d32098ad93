"""The web side's runtime: tasks sent to the Celery worker, their progress fanned out to clients.

One Redis pub/sub connection per runtime listens on the result backend's
own channel of every task it watches (the channel ``AsyncResult.get(on_message=...)``
listens on), and fans each state the backend publishes out to the
runtime's clients, in process and over SSE. A client that joins first
subscribes, then reads the task's stored meta (its latest state), so that
it misses nothing in between. Celery calls (``send_task``, ``abort``,
``store_result``) are synchronous: they run in one thread of the session's.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import redis.asyncio as aioredis
from celery import Celery, states
from celery.contrib.abortable import AbortableAsyncResult

from conformance.contract import (
    FAREWELL_EVENT,
    OVERFLOW_EVENT,
    ASGIApp,
    Behaviour,
    Event,
    Runtime,
    RuntimeClosed,
    RuntimeStats,
    Subscription,
    TaskRef,
    TaskState,
    TaskStatus,
    UnknownTask,
    behaviour_path,
)

from .stack import (
    CANCELLED,
    INTERRUPTED,
    MODEL,
    PROGRESS,
    START,
    STOP,
    TASK_NAME,
    TIMED_OUT,
    Keys,
    now,
)

T = TypeVar("T")
logger = logging.getLogger(__name__)

#: Celery states (the backend's ``status``) that end a run, and the status each records.
FINAL = {
    states.SUCCESS: TaskStatus.SUCCESSFUL,
    states.FAILURE: TaskStatus.FAILED,
    CANCELLED: TaskStatus.CANCELLED,
    TIMED_OUT: TaskStatus.TIMED_OUT,
    INTERRUPTED: TaskStatus.INTERRUPTED,
}


class Client(Subscription):
    """One subscriber: a bounded queue of events, ended by a terminal event or an overflow."""

    def __init__(self, topic: Topic, limit: int) -> None:
        self.topic, self.limit = topic, limit
        self.queue: deque[Event] = deque()
        self.last_pushed = 0  # the id of the last event queued: later ones only
        self.received: int | None = None  # the id of the last event read
        self.ended = False
        self.joined = False  # until it has the task's stored state, live events wait
        self.waiting: list[Event] = []
        self.wakeup = asyncio.Event()

    def push(self, event: Event) -> None:
        if self.ended:
            return
        if not self.joined:
            self.waiting.append(event)
            return
        if event.type != FAREWELL_EVENT and event.id <= self.last_pushed:
            return
        if len(self.queue) >= self.limit:  # too far behind: told, and dropped (FUNC-18)
            data = {"last_event_id": self.received, "reason": "the client fell too far behind"}
            self.queue.clear()
            event = self.topic.event(self.received or 0, OVERFLOW_EVENT, data)
        self.queue.append(event)
        self.last_pushed = max(self.last_pushed, event.id)
        if event.is_terminal or event.type in (OVERFLOW_EVENT, FAREWELL_EVENT):
            self.close()
        self.wakeup.set()

    def join(self, latest: Event | None) -> None:
        """Take the stored latest event first, then what arrived meanwhile (FUNC-5)."""
        self.joined = True
        for event in ([latest] if latest else []) + self.waiting:
            self.push(event)
        self.waiting.clear()

    def close(self) -> None:
        if not self.ended:
            self.ended = True
            self.topic.leave(self)
        self.wakeup.set()

    def __aiter__(self) -> Client:
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


class Topic:
    """A task's channel in this runtime: its clients, and whether a run of ours is live."""

    def __init__(self, runtime: CeleryRuntime, ref: TaskRef, channel: str) -> None:
        self.runtime, self.ref, self.channel = runtime, ref, channel
        self.clients: set[Client] = set()
        self.running = False  # started by this runtime and not yet ended
        self.waiters = 0  # cancels waiting for the run's end
        self.subscribed = asyncio.Event()
        self.ended = asyncio.Event()

    def event(self, id: int, type: str, data: Mapping[str, Any], timestamp: str = "") -> Event:
        return Event(id, type, dict(data), self.ref.id, self.ref.model, timestamp or now())

    def leave(self, client: Client) -> None:
        self.clients.discard(client)
        self.runtime.forget_if_idle(self)


class CeleryRuntime(Runtime):
    """Tasks as Celery tasks on the session's worker; clients of the backend's channels."""

    def __init__(
        self,
        app: Celery,
        keys: Keys,
        url: str,
        executor: ThreadPoolExecutor,
        queue_size: int,
        cancel_grace: float,
    ) -> None:
        self.app, self.keys, self.url, self.executor = app, keys, url, executor
        self.queue_size, self.cancel_grace = queue_size, cancel_grace
        self.redis = aioredis.Redis.from_url(url, single_connection_client=True)
        self.pubsub = aioredis.Redis.from_url(url).pubsub()
        self.topics: dict[str, Topic] = {}
        self.closed = False
        self.idle = asyncio.Event()  # set while no run of this runtime's is live
        self.idle.set()
        self._listener: asyncio.Task[None] | None = None
        self._unsubscribing: set[asyncio.Task[None]] = set()
        self._shutdown: asyncio.Task[None] | None = None
        self._starting = 0  # starts in flight: a shutdown waits for them to be sent
        self.starts_done = asyncio.Event()
        self.starts_done.set()

    async def open(self) -> None:
        """Open both connections now, not during a case (the harness counts descriptors)."""
        await self.redis.ping()
        await self.pubsub.subscribe(f"{self.keys.prefix}:glue:runtime")  # keeps listen() going
        self._listener = asyncio.create_task(self._listen(), name="celery-impl listener")
        # sse-starlette starts a shutdown watcher on the loop at its first stream, which
        # polls until the server exits and outlives every stream (README.md): started
        # with the runtime, it belongs to the runtime, and ends with it.
        from sse_starlette.sse import _ensure_watcher_started_on_this_loop

        _ensure_watcher_started_on_this_loop()

    async def warm_up(self) -> None:
        """Run one task to its end and cancel another, so that Celery's pools are open.

        The producer's and the backend's connections open on first use, in the
        session's Celery thread, and stay open for every later runtime: the
        harness would count them as a leak of the first case that used them.
        """
        from conformance import behaviours

        ref = await self.create_task(behaviours.steps, {"steps": 1})
        client = await self.subscribe(ref)
        await self.start_task(ref)
        async with asyncio.timeout(30):
            async for _ in client:
                pass
            parked = await self.create_task(behaviours.park)
            client = await self.subscribe(parked)
            await self.start_task(parked)
            await anext(client)  # it runs: an abort sent before its first event is lost
            await self.cancel_task(parked, "warm-up")
            async for _ in client:
                pass

    async def call(self, function: Callable[..., T], *args: Any) -> T:
        """A synchronous Celery call, in the session's Celery thread: never on the loop."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, function, *args)

    # Storage: the glue's record beside Celery's result meta.

    def _task_id(self, ref: TaskRef) -> str:
        if ref.model != MODEL or not ref.id.isascii() or not ref.id.isdigit():
            raise UnknownTask(f"{ref} does not exist.")
        return ref.id

    async def create_task(
        self,
        kind: Behaviour,
        fields: Mapping[str, Any] | None = None,
        *,
        timeout: float | None = None,
        max_attempts: int | None = None,
    ) -> TaskRef:
        task_id = str(await self.redis.incr(self.keys.sequence))
        record = {"behaviour": behaviour_path(kind), "status": "READY", "created_at": now()}
        if timeout is not None:
            record["timeout"] = repr(float(timeout))
        if fields:  # the fields first: a task exists once its record does
            encoded = {k: json.dumps(v) for k, v in fields.items()}
            await self.redis.hset(self.keys.fields(task_id), mapping=encoded)
        await self.redis.hset(self.keys.task(task_id), mapping=record)
        return TaskRef(MODEL, task_id)

    async def _record(self, ref: TaskRef) -> dict[str, str]:
        raw = await self.redis.hgetall(self.keys.task(self._task_id(ref)))
        if not raw:
            raise UnknownTask(f"{ref} does not exist.")
        return {k.decode(): v.decode() for k, v in raw.items()}

    async def _meta(self, task_id: str) -> dict[str, Any] | None:
        """The result backend's stored meta of the task's run, read with the backend's decoder."""
        raw = await self.redis.get(self.app.backend.get_key_for_task(self.keys.celery_id(task_id)))
        return None if raw is None else self.app.backend.decode_result(raw)

    async def start_task(self, ref: TaskRef) -> bool:
        if self.closed:
            raise RuntimeClosed("Cannot start a task: the runtime has shut down.")
        self._starting += 1
        self.starts_done.clear()
        try:
            return await self._start(ref)
        finally:
            self._starting -= 1
            if not self._starting:
                self.starts_done.set()

    async def _start(self, ref: TaskRef) -> bool:
        task_id = self._task_id(ref)
        started = await self.redis.eval(START, 1, self.keys.task(task_id), now())
        if started == -1:
            raise UnknownTask(f"{ref} does not exist.")
        if not started:
            return False
        record = await self._record(ref)
        topic = await self._topic(ref)
        topic.running = True
        self.idle.clear()
        timeout = float(record["timeout"]) if "timeout" in record else None
        await self.call(self._send, task_id, record["behaviour"], timeout)
        return True

    def _send(self, task_id: str, behaviour: str, timeout: float | None) -> None:
        self.app.send_task(
            TASK_NAME, args=[task_id, behaviour, timeout], task_id=self.keys.celery_id(task_id)
        )

    async def cancel_task(self, ref: TaskRef, reason: str | None = None) -> bool:
        try:
            task_id = self._task_id(ref)
        except UnknownTask:
            return False
        return await self._stop(ref, task_id, "cancel", reason or "cancelled")

    async def _stop(self, ref: TaskRef, task_id: str, kind: str, reason: str) -> bool:
        stopped = await self.redis.eval(STOP, 1, self.keys.task(task_id), kind, reason)
        if stopped == 2:  # never started: the cancel is stored as the run's final state
            event = {
                "id": 1,
                "type": "cancelled",
                "timestamp": now(),
                "data": {"reason": reason, "message": f"Task was cancelled: {reason}"},
            }
            await self.call(self._store, task_id, CANCELLED, event)
            return True
        if stopped != 1:
            return False
        topic = await self._topic(ref)
        topic.waiters += 1
        try:
            await self.call(self._abort, task_id)
            # Return once the run's end is stored, as a cancel in one process would
            # (ASYNC-12); an abort Celery lost (FINDINGS.md, 1) is waited for no longer.
            meta = await self._meta(task_id)
            if meta is None or meta["status"] not in FINAL:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.cancel_grace * 2 + 1):
                        await topic.ended.wait()
        finally:
            topic.waiters -= 1
            self.forget_if_idle(topic)
        return True

    def _store(self, task_id: str, state: str, event: Mapping[str, Any]) -> None:
        self.app.backend.store_result(self.keys.celery_id(task_id), dict(event), state)

    def _abort(self, task_id: str) -> None:
        AbortableAsyncResult(self.keys.celery_id(task_id), app=self.app).abort()

    async def get_state(self, ref: TaskRef) -> TaskState:
        record = await self._record(ref)
        task_id = ref.id
        meta = await self._meta(task_id)
        fields = await self._fields(task_id)
        claimed = record["status"] == "CLAIMED"  # cancelled before any start: READY until stored
        status = TaskStatus.READY if claimed else TaskStatus(record["status"])
        completed_at, error = None, ""
        if meta is not None and meta["status"] in FINAL:
            status = FINAL[meta["status"]]
            event = await self._to_event(ref, meta)
            completed_at = meta.get("date_done") or (event.timestamp if event else None)
            if event is not None and status is not TaskStatus.SUCCESSFUL:
                error = f"{event.type}: {event.data.get('message', '')}"
                if status is TaskStatus.FAILED:
                    error = f"{event.data['error_type']}: {event.data['message']}"
        return TaskState(
            status=status,
            created_at=record.get("created_at"),
            started_at=record.get("started_at"),
            completed_at=_iso(completed_at),
            error=error,
            fields=fields,
            attempt=1 if record.get("started_at") else 0,
        )

    async def _fields(self, task_id: str) -> dict[str, Any]:
        raw = await self.redis.hgetall(self.keys.fields(task_id))
        return {k.decode(): json.loads(v) for k, v in raw.items()}

    async def write_fields(self, ref: TaskRef, **fields: Any) -> None:
        await self._record(ref)
        if fields:
            encoded = {k: json.dumps(v) for k, v in fields.items()}
            await self.redis.hset(self.keys.fields(ref.id), mapping=encoded)

    # Fan-out: the backend's channel of each task, to this runtime's clients.

    async def _to_event(self, ref: TaskRef, meta: Mapping[str, Any]) -> Event | None:
        """The event a stored or published meta carries; None for states that are not events."""
        state, result = meta.get("status"), meta.get("result")
        if state == states.FAILURE:  # Celery's own record of the exception the task raised
            # decode_result has turned Celery's {exc_type, exc_message} back into an exception.
            record = await self._record(ref)
            if isinstance(result, BaseException):
                data = {"error_type": type(result).__name__, "message": str(result)}
            else:
                data = {"error_type": "Exception", "message": str(result)}
            stamp = meta.get("date_done") or now()
            return Event(
                int(record.get("terminal_id", 1)),
                "error",
                data,
                ref.id,
                ref.model,
                _iso(stamp) or now(),
            )
        if state in (PROGRESS, states.SUCCESS, CANCELLED, TIMED_OUT, INTERRUPTED):
            if isinstance(result, Mapping) and "id" in result:
                return Event(
                    int(result["id"]),
                    str(result["type"]),
                    dict(result["data"]),
                    ref.id,
                    ref.model,
                    str(result["timestamp"]),
                )
        return None  # PENDING, ABORTED (an abort request, not an event), STARTED

    async def _topic(self, ref: TaskRef) -> Topic:
        channel = _text(self.app.backend.get_key_for_task(self.keys.celery_id(ref.id)))
        topic = self.topics.get(channel)
        if topic is None:
            topic = self.topics[channel] = Topic(self, ref, channel)
            await self.pubsub.subscribe(channel)
        await topic.subscribed.wait()  # confirmed: every later publish reaches us (HTTP-4)
        return topic

    async def _listen(self) -> None:
        async for message in self.pubsub.listen():
            channel = message["channel"].decode()
            topic = self.topics.get(channel)
            if topic is None:
                continue
            if message["type"] == "subscribe":
                topic.subscribed.set()
            elif message["type"] == "message":
                try:
                    meta = self.app.backend.decode_result(message["data"])
                    event = await self._to_event(topic.ref, meta)
                except Exception:  # one bad message must not end the fan-out of every task
                    logger.exception("celery-impl: cannot read a state of %s", topic.ref)
                    continue
                if event is None:
                    continue
                for client in tuple(topic.clients):
                    client.push(event)
                if event.is_terminal:
                    topic.ended.set()
                    topic.running = False
                    self.forget_if_idle(topic)

    def forget_if_idle(self, topic: Topic) -> None:
        """Drop a topic with no client and no live run of ours (FUNC-11)."""
        if topic.clients or topic.running or topic.waiters:
            return
        if self.topics.get(topic.channel) is not topic:
            return
        del self.topics[topic.channel]
        unsubscribe = asyncio.create_task(
            self.pubsub.unsubscribe(topic.channel), name=f"celery-impl unsubscribe {topic.ref}"
        )
        self._unsubscribing.add(unsubscribe)
        unsubscribe.add_done_callback(self._unsubscribing.discard)
        if not any(t.running for t in self.topics.values()):
            self.idle.set()

    async def subscribe(self, ref: TaskRef, *, last_event_id: int | None = None) -> Subscription:
        await self._record(ref)
        topic = await self._topic(ref)
        client = Client(topic, self.queue_size)
        topic.clients.add(client)
        meta = await self._meta(ref.id)
        client.join(await self._to_event(ref, meta) if meta else None)
        return client

    def asgi_app(self) -> ASGIApp:
        from .web import make_web_app

        return make_web_app(self)

    def stats(self) -> RuntimeStats:
        return RuntimeStats(
            running_tasks=sum(t.running for t in self.topics.values()),
            subscribers=sum(len(t.clients) for t in self.topics.values()),
            topics=len(self.topics),
        )

    async def shutdown(self, grace: float = 5.0) -> None:
        if self._shutdown is None:
            self._shutdown = asyncio.create_task(self._drain(grace), name="celery-impl shutdown")
        await asyncio.shield(self._shutdown)

    async def _drain(self, grace: float) -> None:
        """Refuse starts, give runs ``grace``, say farewell, interrupt the rest, close."""
        self.closed = True
        await self.starts_done.wait()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace):
                await self.idle.wait()
        # Runs still live are interrupted, unless their own end was decided first: those
        # end as they would have, and their clients hear it before any farewell (RACE-20).
        running = [t for t in self.topics.values() if t.running]
        stopped = await asyncio.gather(
            *(
                self.redis.eval(STOP, 1, self.keys.task(t.ref.id), "interrupt", "shutdown")
                for t in running
            )
        )
        ending = [t.ended.wait() for t, how in zip(running, stopped, strict=True) if how != 1]
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.cancel_grace * 2 + 2):
                await asyncio.gather(*ending)
        for topic in tuple(self.topics.values()):
            for client in tuple(topic.clients):
                last = client.last_pushed
                client.push(topic.event(last, FAREWELL_EVENT, {"last_event_id": last}))
        for topic, how in zip(running, stopped, strict=True):
            if how == 1:
                await self.call(self._abort, topic.ref.id)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.cancel_grace * 2 + 2):
                await self.idle.wait()
        for topic in tuple(self.topics.values()):
            topic.running = False
            self.forget_if_idle(topic)
        if self._listener is not None:
            self._listener.cancel()
            await asyncio.gather(self._listener, return_exceptions=True)
        await asyncio.gather(*self._unsubscribing, return_exceptions=True)
        watchers = [t for t in asyncio.all_tasks() if _runs(t, "_shutdown_watcher")]
        for watcher in watchers:
            watcher.cancel()
        await asyncio.gather(*watchers, return_exceptions=True)
        await self.pubsub.aclose()
        await self.pubsub.connection_pool.disconnect()
        await self.redis.aclose()
        # Reads and field writes still work after shutdown (the contract), each on a
        # connection of its own, closed before it returns: none outlives this loop.
        self.redis = _OneShot(self.url)  # type: ignore[assignment]


class _OneShot:
    """A Redis client whose every command opens a connection and closes it."""

    def __init__(self, url: str) -> None:
        self.url = url

    def __getattr__(self, name: str) -> Callable[..., Any]:
        async def command(*args: Any, **kwargs: Any) -> Any:
            async with aioredis.Redis.from_url(self.url) as client:
                return await getattr(client, name)(*args, **kwargs)

        return command


def _runs(task: asyncio.Task[Any], name: str) -> bool:
    coro = task.get_coro()
    return getattr(coro, "__qualname__", "") == name and not task.done()


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _iso(value: Any) -> str | None:
    if value is None:
        return None
    text = value.isoformat() if hasattr(value, "isoformat") else str(value)
    return text if ("+" in text[10:] or text.endswith("Z")) else f"{text}+00:00"
