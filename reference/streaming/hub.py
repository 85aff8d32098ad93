"""Fan-out of task events to this process's subscribers, with bounded queues.

:class:`Hub` is the in-process fan-out. Its methods never await, so on one
event loop "snapshot the latest event and register" is atomic with respect to
publishing: a late subscriber sees the latest event once, then every later
event, with nothing missed or repeated between the two. Only a bus
(``bus.py``) uses it: the coordinator and the server go through the bus.

Each subscriber's queue is bounded. A subscriber that falls ``maxsize`` events
behind is dropped and told so in its own stream (an ``overflow`` event that
carries the last id it received, so it can resume), never silently. Ids a
subscriber receives increase by one; where they would jump (events lost with
a crashed process, or no longer kept), a ``stream-reset`` event says so first.

Memory is bounded in bytes as well as in events: each running task keeps at
most ``history_bytes`` of recent events (its latest event always), and all
finished tasks together at most ``closed_history_bytes``.
"""

from __future__ import annotations

import asyncio
import json
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from typing import Any

from .events import CONTROL_TYPES, OVERFLOW, STREAM_RESET, TERMINAL_TYPES, Event, now_iso

_META = ("_task_id", "_model", "_timestamp")


class Message:
    """An event on its way to subscribers, encoded to JSON once, at publish.

    The JSON text of its data serves the SSE frame (built from it at most
    once, on first use; every HTTP client of the event writes the same bytes
    object) and the database's event log.
    """

    __slots__ = ("_sse", "event", "final", "json", "size")

    def __init__(self, event: Event, *, final: bool = False, json_data: str | None = None) -> None:
        self.event = event
        #: The last message of its stream: the subscriber ends after it.
        self.final = final
        #: The event's data as JSON text. Encoding here, not lazily, also fixes
        #: the data as it was when sent, whatever the task does to it later.
        self.json = json_data if json_data is not None else json.dumps(event.data, default=str)
        self.size = len(self.json)
        self._sse: bytes | None = None

    @property
    def sse(self) -> bytes:
        if self._sse is None:
            self._sse = _frame(self.event, self.json)
        return self._sse

    def __repr__(self) -> str:
        return f"<Message {self.event.type} id={self.event.id}{' final' if self.final else ''}>"


def _frame(event: Event, data_json: str) -> bytes:
    """One SSE frame: ``event:``, ``data:`` (the data plus ``_``-prefixed metadata), ``id:``.

    ``json.dumps`` escapes every control character and non-ASCII character,
    so the one ``data:`` line can never be broken by the data it carries.
    """
    data = event.data
    if any(key in data for key in _META):
        payload = json.dumps(
            {
                **data,
                "_task_id": event.task_id,
                "_model": event.model,
                "_timestamp": event.timestamp,
            },
            default=str,
        )
    else:
        meta = (
            f'"_task_id": {json.dumps(event.task_id)}, "_model": {json.dumps(event.model)}, '
            f'"_timestamp": {json.dumps(event.timestamp)}}}'
        )
        payload = "{" + meta if data_json == "{}" else f"{data_json[:-1]}, {meta}"
    retry = f"retry: {event.retry}\n" if event.retry is not None else ""
    return f"event: {event.type}\ndata: {payload}\nid: {event.id}\n{retry}\n".encode()


def control_event(key: str, type: str, last_id: int, data: dict[str, Any]) -> Event:
    model, _, task_id = key.partition(":")
    return Event(last_id, type, data, task_id, model, now_iso())


class History:
    """A task's recent messages, bounded in count and in bytes; the latest is always kept."""

    __slots__ = ("_max_bytes", "bytes", "messages")

    def __init__(self, max_events: int, max_bytes: int) -> None:
        self.messages: deque[Message] = deque(maxlen=max_events)
        self._max_bytes = max_bytes
        self.bytes = 0

    def append(self, message: Message) -> None:
        if len(self.messages) == self.messages.maxlen:
            self.bytes -= self.messages[0].size
        self.messages.append(message)
        self.bytes += message.size
        while self.bytes > self._max_bytes and len(self.messages) > 1:
            self.bytes -= self.messages.popleft().size

    def clear(self) -> None:
        self.messages.clear()
        self.bytes = 0

    @property
    def latest(self) -> Message | None:
        return self.messages[-1] if self.messages else None


class Topic:
    """The subscribers and recent history of one task."""

    __slots__ = ("active", "history", "key", "subscribers")

    def __init__(self, key: str, history: History) -> None:
        self.key = key
        self.subscribers: set[Subscriber] = set()
        self.history = history
        #: A publisher (a run of this process) is attached.
        self.active = False

    def __repr__(self) -> str:
        return f"<Topic {self.key} subscribers={len(self.subscribers)} active={self.active}>"


class Subscriber:
    """One client's bounded queue; ``take`` what is queued, ``wait`` for more."""

    __slots__ = (
        "_done",
        "_ended_run",
        "_hub",
        "_queue",
        "_waiter",
        "key",
        "last_id",
        "maxsize",
        "overflowed",
        "queued_id",
    )

    def __init__(self, hub: Hub, key: str, maxsize: int) -> None:
        self._hub = hub
        self.key = key
        self.maxsize = maxsize
        self._queue: deque[Message] = deque()
        self._waiter: asyncio.Future[None] | None = None
        #: No more messages will be queued (final message queued, or closed).
        self._done = False
        #: A run's terminal event is queued: the stream ends with it (FUNC-2).
        self._ended_run = False
        self.overflowed = False
        #: Id of the last event handed out, for resuming after an overflow.
        self.last_id: int | None = None
        #: Id of the last event queued: the next must follow it, or be announced.
        self.queued_id: int | None = None

    # -- the publishing side (never awaits) ------------------------------------

    def push(self, message: Message) -> None:
        """Queue a message without waiting; overflow drops the subscriber, loudly."""
        if self._done:
            return
        if len(self._queue) >= self.maxsize and not message.final:
            self._overflow()
            return
        self._enqueue(message)
        if message.final or self._ended_run:
            self._done = True
            self._hub._detach(self)
        self._wake()

    def _enqueue(self, message: Message) -> None:
        event = message.event
        if self._ended_run:
            # A resume can span runs (the last one's end, then the retried
            # run's events): the stream ends at the first end, as a live one
            # does. Found by the soak (issue 27).
            return
        if event.type not in CONTROL_TYPES and self.queued_id is not None:
            if event.id <= self.queued_id:
                # Ids only rise on a stream: an older event (a reader of the
                # bus seeding the topic from the start, after a resume had
                # been served) was sent already or skipped. Found by the soak.
                return
        if event.type in TERMINAL_TYPES:
            self._ended_run = self._done = True
        if event.type not in CONTROL_TYPES:
            if self.queued_id is not None and event.id != self.queued_id + 1:
                self._queue.append(self._reset(self.queued_id, event.id))
            self.queued_id = event.id
        self._queue.append(message)

    def _reset(self, after: int, next_id: int) -> Message:
        return Message(
            control_event(
                self.key,
                STREAM_RESET,
                after,
                {
                    "reason": "events after the requested id are no longer available",
                    "last_event_id": after,
                    "oldest_available_id": next_id,
                },
            )
        )

    def seed(self, messages: Iterable[Message], *, after: int | None) -> None:
        """Queue what a new subscriber must see first, announcing any gap after ``after``."""
        self.queued_id = after
        for message in messages:
            self._enqueue(message)

    def backfill(self, messages: list[Message], *, after: int) -> None:
        """Put stored events the hub no longer had before what is queued.

        The queue is rebuilt from ``after``: stored events older than the first
        queued one, then the queued ones, with every gap announced anew.
        """
        queued = [m for m in self._queue if m.event.type != STREAM_RESET]
        first = next((m.event.id for m in queued if m.event.type not in CONTROL_TYPES), None)
        older = [
            m for m in messages if m.event.id > after and (first is None or m.event.id < first)
        ]
        self._queue.clear()
        self.queued_id = after
        self._ended_run = False
        for message in (*older, *queued):
            self._enqueue(message)
        if self._ended_run:
            self._hub._detach(self)
        self._wake()

    def _overflow(self) -> None:
        self.overflowed = True
        self._queue.clear()
        notice = control_event(
            self.key,
            OVERFLOW,
            self.last_id or 0,
            {
                "reason": f"client fell more than {self.maxsize} events behind",
                "last_event_id": self.last_id,
            },
        )
        self.push(Message(notice, final=True))

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def wake(self) -> None:
        """Make a pending :meth:`wait` return (a writer's keep-alive is due)."""
        self._wake()

    # -- the client side ----------------------------------------------------------

    def take(self) -> list[Message]:
        """Everything queued, at once (a writer sends it in one write)."""
        taken = list(self._queue)
        self._queue.clear()
        for message in reversed(taken):
            if message.event.type not in CONTROL_TYPES:
                self.last_id = message.event.id
                break
        return taken

    async def wait(self) -> None:
        """Return once something is queued, the stream ends, or :meth:`wake` is called."""
        if self._queue or self._done:
            return
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    async def get(self) -> Message:
        """The next message; StopAsyncIteration once the stream has ended."""
        while not self._queue:
            if self._done:
                raise StopAsyncIteration
            await self.wait()
        message = self._queue.popleft()
        if message.event.type not in CONTROL_TYPES:
            self.last_id = message.event.id
        if message.final:
            self._done = True
        return message

    def __aiter__(self) -> Subscriber:
        return self

    async def __anext__(self) -> Message:
        return await self.get()

    def close(self) -> None:
        """Unsubscribe; idempotent. A waiting ``get`` ends the iteration."""
        self._done = True
        self._queue.clear()
        self._hub._detach(self)
        self._wake()

    @property
    def ended(self) -> bool:
        """No more messages will come."""
        return self._done

    @property
    def closed(self) -> bool:
        return self._done and not self._queue

    def __repr__(self) -> str:
        return f"<Subscriber {self.key} queued={len(self._queue)} done={self._done}>"


class Hub:
    """In-process fan-out: topics by key, their subscribers and recent history."""

    def __init__(
        self,
        *,
        queue_size: int = 1000,
        history_size: int = 256,
        history_bytes: int = 4 * 1024 * 1024,
        closed_history_bytes: int = 32 * 1024 * 1024,
        remember_closed: int = 256,
    ) -> None:
        self.queue_size = queue_size
        self.history_size = history_size
        self.history_bytes = history_bytes
        self._topics: dict[str, Topic] = {}
        # History of recently finished tasks, ending with the final message: a
        # client that arrives (or resumes) just after the end still gets what
        # it missed, without a database read. Bounded in tasks and in bytes.
        self._closed: OrderedDict[str, tuple[Message, ...]] = OrderedDict()
        self._closed_bytes = 0
        self._closed_max_bytes = closed_history_bytes
        self._remember_closed = remember_closed

    # -- publishing -----------------------------------------------------------

    def open(self, key: str) -> None:
        """Attach a publisher: the topic lives until the final message."""
        self._forget_closed(key)
        self._topic(key).active = True

    def publish(
        self, key: str, event: Event, *, final: bool = False, json_data: str | None = None
    ) -> Message:
        """Queue an event for every subscriber; with ``final``, close the topic."""
        message = Message(event, final=final, json_data=json_data)
        topic = self._topics.get(key)
        if topic is None:
            topic = self._topic(key)
        topic.history.append(message)
        for subscriber in tuple(topic.subscribers):
            subscriber.push(message)
        if final:
            self._topics.pop(key, None)
            self._remember(key, tuple(topic.history.messages))
        return message

    def release(self, key: str) -> None:
        """Detach the publisher without a final message (the run was interrupted)."""
        topic = self._topics.get(key)
        if topic is not None:
            topic.active = False
            topic.history.clear()
            self._drop_if_idle(topic)

    def say_farewell(self, make_event: Callable[[str, int], Event]) -> int:
        """End every subscriber's stream with a final event; return how many were told.

        ``make_event(key, last_id)`` gets the id of the last event queued for
        the subscriber it is for (0 if none), which is the last it will be sent.
        """
        told = 0
        for topic in tuple(self._topics.values()):
            for subscriber in tuple(topic.subscribers):
                farewell = make_event(topic.key, subscriber.queued_id or 0)
                subscriber.push(Message(farewell, final=True))
                told += 1
            topic.active = False
            self._drop_if_idle(topic)
        return told

    def notify(self, key: str, type: str, data: dict[str, Any]) -> int:
        """Give every subscriber of ``key`` a control event that does not end its stream.

        Each carries the id of the last event queued for its subscriber, as
        the farewell does. Returns how many were told.
        """
        topic = self._topics.get(key)
        if topic is None:
            return 0
        for subscriber in tuple(topic.subscribers):
            subscriber.push(Message(control_event(key, type, subscriber.queued_id or 0, data)))
        return len(topic.subscribers)

    # -- subscribing ----------------------------------------------------------

    def subscribe(self, key: str, *, after: int | None = None) -> Subscriber:
        """Register a subscriber, seeded with what it must see first.

        Without ``after``, that is the latest event (a late joiner is told
        where the task stands at once). With it, every later event still kept;
        where some are gone, a ``stream-reset`` event says so first. Whether
        the hub had them all is :meth:`missing`'s question.
        """
        subscriber = Subscriber(self, key, self.queue_size)
        closed = self._closed.get(key)
        # A resume past the ending kept is of a later run (retried, running
        # elsewhere): it waits for that run, not on the earlier one's end.
        if closed is not None and (after is None or closed[-1].event.id > after):
            self._seed(subscriber, closed, after)
            subscriber._done = True  # nothing follows what was seeded
            return subscriber
        topic = self._topic(key)
        self._seed(subscriber, topic.history.messages, after)
        if subscriber.ended:  # its seed held an earlier run's end
            self._drop_if_idle(topic)
        else:
            topic.subscribers.add(subscriber)
        return subscriber

    def subscribe_finished(self, key: str, final: Event, *, after: int | None = None) -> Subscriber:
        """A subscriber to a task that ended before this process knew of it.

        History this hub kept of that same ending is used as it is.
        """
        kept = self._closed.get(key)
        if kept is None or kept[-1].event.id != final.id:
            self._remember(key, (Message(final, final=True),))
        return self.subscribe(key, after=after)

    def kept_since(self, key: str) -> int | None:
        """Id of the oldest event the hub keeps for ``key`` (None: none kept)."""
        for message in self._kept(key):
            if message.event.type not in CONTROL_TYPES:
                return message.event.id
        return None

    def recent(self, key: str) -> list[Message]:
        """The events the hub keeps for ``key``, oldest first: a finished task's end last."""
        return list(self._kept(key))

    def _kept(self, key: str) -> Iterable[Message]:
        closed = self._closed.get(key)
        if closed is not None:
            return closed
        topic = self._topics.get(key)
        return topic.history.messages if topic is not None else ()

    @staticmethod
    def _seed(subscriber: Subscriber, history: Iterable[Message], after: int | None) -> None:
        kept = list(history)
        if after is None:
            subscriber.seed(kept[-1:], after=None)
        else:
            subscriber.seed([m for m in kept if m.event.id > after], after=after)

    # -- bookkeeping ----------------------------------------------------------

    def _topic(self, key: str) -> Topic:
        topic = self._topics.get(key)
        if topic is None:
            topic = self._topics[key] = Topic(key, History(self.history_size, self.history_bytes))
        return topic

    def _remember(self, key: str, messages: tuple[Message, ...]) -> None:
        self._forget_closed(key)
        self._closed[key] = messages
        self._closed_bytes += sum(m.size for m in messages)
        while self._closed and (
            len(self._closed) > self._remember_closed or self._closed_bytes > self._closed_max_bytes
        ):
            oldest, dropped = self._closed.popitem(last=False)
            if oldest == key and len(self._closed) == 0:
                # Keep at least the final event of the task just finished.
                self._closed[key] = dropped[-1:]
                self._closed_bytes = dropped[-1].size
                break
            self._closed_bytes -= sum(m.size for m in dropped)

    def _forget_closed(self, key: str) -> None:
        dropped = self._closed.pop(key, None)
        if dropped is not None:
            self._closed_bytes -= sum(m.size for m in dropped)

    def _detach(self, subscriber: Subscriber) -> None:
        topic = self._topics.get(subscriber.key)
        if topic is not None:
            topic.subscribers.discard(subscriber)
            self._drop_if_idle(topic)

    def _drop_if_idle(self, topic: Topic) -> None:
        if not topic.subscribers and not topic.active:
            self._topics.pop(topic.key, None)

    def active_keys(self) -> set[str]:
        """Keys a publisher of this process is attached to."""
        return {key for key, topic in self._topics.items() if topic.active}

    def has_subscribers(self, key: str) -> bool:
        topic = self._topics.get(key)
        return topic is not None and bool(topic.subscribers)

    def watched_elsewhere(self) -> list[str]:
        """Keys of topics with subscribers and no publisher here: their runs are elsewhere."""
        return [
            key for key, topic in self._topics.items() if topic.subscribers and not topic.active
        ]

    def latest_id(self, key: str) -> int | None:
        topic = self._topics.get(key)
        latest = topic.history.latest if topic is not None else None
        return latest.event.id if latest is not None else None

    def stats(self) -> dict[str, int]:
        return {
            "topics": len(self._topics),
            "subscribers": sum(len(t.subscribers) for t in self._topics.values()),
        }
