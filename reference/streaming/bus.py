"""Fan-out of task events to subscribers, with bounded queues; testable alone.

:class:`Hub` is the in-process fan-out. Its methods never await, so on one
event loop "snapshot the latest event and register" is atomic with respect to
publishing: a late subscriber sees the latest event once, then every later
event, with nothing missed or repeated between the two.

:class:`InMemoryBus` is the default bus: publishing goes straight to the hub.
A bus for several worker processes (Redis) keeps the same shape: ``publish``
sends to the broker, and a reader task feeds the local hub.

Each subscriber's queue is bounded. A subscriber that falls ``maxsize`` events
behind is dropped and told so in its own stream (an ``overflow`` event that
carries the last id it received, so it can resume), never silently.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from typing import Any

from . import sse
from .events import OVERFLOW, STREAM_RESET, Event, now_iso


class Message:
    """An event on its way to subscribers, encoded to SSE bytes at most once."""

    __slots__ = ("_sse", "event", "final")

    def __init__(self, event: Event, *, final: bool = False) -> None:
        self.event = event
        #: The last message of its stream: the subscriber ends after it.
        self.final = final
        self._sse: bytes | None = None

    @property
    def sse(self) -> bytes:
        # Computed by the first writer that needs it; every other client of the
        # same event gets the same bytes object (the fan-out path is hot).
        if self._sse is None:
            self._sse = sse.encode(self.event)
        return self._sse

    def __repr__(self) -> str:
        return f"<Message {self.event.type} id={self.event.id}{' final' if self.final else ''}>"


class Topic:
    """The subscribers and recent history of one task."""

    __slots__ = ("active", "history", "key", "latest", "subscribers")

    def __init__(self, key: str, history_size: int) -> None:
        self.key = key
        self.subscribers: set[Subscriber] = set()
        self.history: deque[Message] = deque(maxlen=history_size)
        self.latest: Message | None = None
        #: A publisher (a running task) is attached.
        self.active = False

    def __repr__(self) -> str:
        return f"<Topic {self.key} subscribers={len(self.subscribers)} active={self.active}>"


class Subscriber:
    """One client's bounded queue; iterate it for messages."""

    __slots__ = ("_done", "_hub", "_queue", "_waiter", "key", "last_id", "maxsize", "overflowed")

    def __init__(self, hub: Hub, key: str, maxsize: int) -> None:
        self._hub = hub
        self.key = key
        self.maxsize = maxsize
        self._queue: deque[Message] = deque()
        self._waiter: asyncio.Future[None] | None = None
        #: No more messages will be queued (final message queued, or closed).
        self._done = False
        self.overflowed = False
        #: Id of the last message handed out, for resuming after an overflow.
        self.last_id: int | None = None

    def push(self, message: Message) -> None:
        """Queue a message without waiting; overflow drops the subscriber, loudly."""
        if self._done:
            return
        if len(self._queue) >= self.maxsize and not message.final:
            self._overflow()
            return
        self._queue.append(message)
        if message.final:
            self._done = True
            self._hub._detach(self)
        self._wake()

    def _overflow(self) -> None:
        self.overflowed = True
        self._queue.clear()
        notice = Event(
            id=self.last_id or 0,
            type=OVERFLOW,
            data={
                "reason": f"client fell more than {self.maxsize} events behind",
                "last_event_id": self.last_id,
            },
            task_id=self.key.partition(":")[2],
            model=self.key.partition(":")[0],
            timestamp=now_iso(),
        )
        self.push(Message(notice, final=True))

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def get(self, timeout: float | None = None) -> Message | None:
        """Next message, or None when ``timeout`` passes first; StopAsyncIteration at the end."""
        while not self._queue:
            if self._done:
                raise StopAsyncIteration
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                async with asyncio.timeout(timeout):
                    await self._waiter
            except TimeoutError:
                return None
            finally:
                self._waiter = None
        message = self._queue.popleft()
        self.last_id = message.event.id
        if message.final:
            self._done = True
        return message

    def __aiter__(self) -> Subscriber:
        return self

    async def __anext__(self) -> Message:
        message = await self.get()
        assert message is not None  # no timeout was given
        return message

    def close(self) -> None:
        """Unsubscribe; idempotent. A waiting ``get`` ends the iteration."""
        self._done = True
        self._queue.clear()
        self._hub._detach(self)
        self._wake()

    @property
    def closed(self) -> bool:
        return self._done and not self._queue

    def __repr__(self) -> str:
        return f"<Subscriber {self.key} queued={len(self._queue)} done={self._done}>"


class Hub:
    """In-process fan-out: topics by key, their subscribers and recent history."""

    def __init__(
        self, *, queue_size: int = 1000, history_size: int = 256, remember_closed: int = 256
    ) -> None:
        self.queue_size = queue_size
        self.history_size = history_size
        self._topics: dict[str, Topic] = {}
        # History of recently finished tasks, ending with the final message: a
        # client that arrives (or resumes) just after the end still gets what
        # it missed, without a database read.
        self._closed: OrderedDict[str, tuple[Message, ...]] = OrderedDict()
        self._remember_closed = remember_closed

    # -- publishing -----------------------------------------------------------

    def open(self, key: str) -> None:
        """Attach a publisher: the topic lives until the final message."""
        self._closed.pop(key, None)
        self._topic(key).active = True

    def publish(self, key: str, event: Event, *, final: bool = False) -> Message:
        """Queue an event for every subscriber; with ``final``, close the topic."""
        message = Message(event, final=final)
        topic = self._topics.get(key)
        if topic is None:
            topic = self._topic(key)
        topic.latest = message
        topic.history.append(message)
        for subscriber in tuple(topic.subscribers):
            subscriber.push(message)
        if final:
            self._topics.pop(key, None)
            self._closed[key] = tuple(topic.history)
            if len(self._closed) > self._remember_closed:
                self._closed.popitem(last=False)
        return message

    def release(self, key: str) -> None:
        """Detach the publisher without a final message (the run was interrupted)."""
        topic = self._topics.get(key)
        if topic is not None:
            topic.active = False
            topic.history.clear()
            self._drop_if_idle(topic)

    def say_farewell(self, make_event: Callable[[str, Message | None], Event]) -> int:
        """End every subscriber's stream with a final event; return how many were told."""
        told = 0
        for topic in tuple(self._topics.values()):
            farewell = Message(make_event(topic.key, topic.latest), final=True)
            for subscriber in tuple(topic.subscribers):
                subscriber.push(farewell)
                told += 1
            topic.active = False
            self._drop_if_idle(topic)
        return told

    # -- subscribing ----------------------------------------------------------

    def subscribe(self, key: str, *, last_event_id: int | None = None) -> Subscriber:
        """Register a subscriber, seeded with what it must see first.

        Without ``last_event_id``, that is the latest event (a late joiner is
        told where the task stands at once). With it, every later event still
        in history; if some are gone, a ``stream-reset`` event says so first.
        """
        subscriber = Subscriber(self, key, self.queue_size)
        closed = self._closed.get(key)
        if closed is not None:
            self._seed(subscriber, closed, last_event_id)
            subscriber._done = True  # nothing follows what was seeded
            return subscriber
        topic = self._topic(key)
        self._seed(subscriber, topic.history, last_event_id, latest=topic.latest)
        topic.subscribers.add(subscriber)
        return subscriber

    def subscribe_finished(
        self, key: str, final: Event, *, last_event_id: int | None = None
    ) -> Subscriber:
        """A subscriber to a task that ended before this process knew of it."""
        self._closed[key] = (Message(final, final=True),)
        return self.subscribe(key, last_event_id=last_event_id)

    def _seed(
        self,
        subscriber: Subscriber,
        history: Iterable[Message],
        last_event_id: int | None,
        *,
        latest: Message | None = None,
    ) -> None:
        kept = list(history)
        if last_event_id is None:
            first = latest if latest is not None else (kept[-1] if kept else None)
            if first is not None:
                subscriber._queue.append(first)
            return
        missed = [m for m in kept if m.event.id > last_event_id]
        if not missed:
            return
        if missed[0].event.id != last_event_id + 1:
            reset = Event(
                id=last_event_id,
                type=STREAM_RESET,
                data={
                    "reason": "events after the requested id are no longer available",
                    "last_event_id": last_event_id,
                    "oldest_available_id": missed[0].event.id,
                },
                task_id=missed[0].event.task_id,
                model=missed[0].event.model,
                timestamp=now_iso(),
            )
            subscriber._queue.append(Message(reset))
        subscriber._queue.extend(missed)

    # -- bookkeeping ----------------------------------------------------------

    def _topic(self, key: str) -> Topic:
        topic = self._topics.get(key)
        if topic is None:
            topic = self._topics[key] = Topic(key, self.history_size)
        return topic

    def _detach(self, subscriber: Subscriber) -> None:
        topic = self._topics.get(subscriber.key)
        if topic is not None:
            topic.subscribers.discard(subscriber)
            self._drop_if_idle(topic)

    def _drop_if_idle(self, topic: Topic) -> None:
        if not topic.subscribers and not topic.active:
            self._topics.pop(topic.key, None)

    def stats(self) -> dict[str, int]:
        return {
            "topics": len(self._topics),
            "subscribers": sum(len(t.subscribers) for t in self._topics.values()),
        }


class InMemoryBus:
    """The default bus: one process, publishing straight into the local hub."""

    def __init__(self, hub: Hub | None = None) -> None:
        self.hub = hub if hub is not None else Hub()

    async def publish(self, key: str, event: Event, *, final: bool = False) -> None:
        self.hub.publish(key, event, final=final)

    def describe(self) -> dict[str, Any]:
        return {"bus": "memory", **self.hub.stats()}
