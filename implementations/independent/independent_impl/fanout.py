"""Fan-out: each task's topic hands its events to its clients' bounded queues.

Publishing never waits for a client. Each :class:`Subscription` has a queue
of at most ``client_queue_size`` events; a client that falls further behind
is sent ``overflow`` and dropped (FUNC-18), so a client that stops reading
slows neither the task nor the others (ASYNC-22, EDGE-17). Reading is
cancellation-safe (ASYNC-19): a reader waits on an :class:`asyncio.Event`,
and an event leaves the queue only when a read returns it.

A :class:`Topic` exists while a run of its task is live here, or while
clients wait on a task that runs elsewhere or has not started. It keeps the
latest event for clients that join late (FUNC-5) and a bounded history for
clients that resume (HTTP-7). Each subscription remembers the id of the last
event it queued: an event at or below it is a duplicate and skipped; one
further on is a gap, announced with ``stream-reset`` first (HTTP-7, EDGE-13).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterable
from typing import TYPE_CHECKING

from conformance import contract
from conformance.contract import FAREWELL_EVENT, OVERFLOW_EVENT, STREAM_RESET_EVENT, Event

from .events import Envelope, envelope

if TYPE_CHECKING:
    from .runs import Run

__all__ = ["Hub", "Subscription", "Topic"]


class Subscription(contract.Subscription):
    """One client of one task: a bounded queue read by ``async for`` or by batches."""

    def __init__(self, task_id: int, model: str, limit: int, last_event_id: int | None) -> None:
        self.task_id = task_id
        self.model = model
        self._limit = limit
        self._queue: deque[Envelope] = deque()
        self._counted = 0
        self._signal = asyncio.Event()
        #: Nothing more will be queued (terminal, overflow, farewell).
        self._ended = False
        #: aclose() was called: reads end now, queued events are dropped.
        self._closed = False
        #: Set while a resuming client waits for its backlog from the event log.
        self._held: list[Envelope] | None = None
        #: The id of the last event queued for this client; None before the first.
        self.last_id = last_event_id
        self.queued_any = False
        self.topic: Topic | None = None

    def __repr__(self) -> str:
        state = "closed" if self._closed else "ended" if self._ended else "open"
        return f"<Subscription {self.model} {self.task_id} {state} queued={len(self._queue)}>"

    @property
    def ended(self) -> bool:
        return self._ended or self._closed

    @property
    def finished_empty(self) -> bool:
        """Ended without a single event: a resume at or past the end (EDGE-14)."""
        return self.ended and not self._queue and not self.queued_any

    # -- the publishing side ----------------------------------------------------------

    def offer(self, env: Envelope) -> None:
        if self._ended or self._closed:
            return
        if self._held is not None:
            self._held.append(env)
            return
        self._push(env)

    def _push(self, env: Envelope) -> None:
        if self._ended:
            return
        if self.last_id is not None:
            if env.id <= self.last_id:
                return  # a duplicate: replayed and live, or resumed past it
            if env.id > self.last_id + 1:
                self._control(
                    STREAM_RESET_EVENT,
                    {
                        "last_event_id": self.last_id,
                        "oldest_available_id": env.id,
                        "reason": "events after last_event_id are no longer available",
                    },
                    self.last_id,
                )
        if self._counted >= self._limit:
            self._overflow()
            return
        self._queue.append(env)
        self._counted += 1
        self.last_id = env.id
        self.queued_any = True
        if env.is_terminal:
            self._ended = True
            self._detach()
        self._signal.set()

    def _overflow(self) -> None:
        self._control(
            OVERFLOW_EVENT,
            {
                "last_event_id": self.last_id,
                "reason": f"the client fell more than {self._limit} events behind",
            },
            self.last_id or 0,
        )
        self._ended = True
        self._detach()

    def _control(self, type: str, data: dict[str, object], event_id: int) -> None:
        self._queue.append(envelope(self.task_id, self.model, event_id, type, data, control=True))
        self._signal.set()

    def hold(self) -> None:
        """Queue live events aside until :meth:`release` brings the backlog."""
        self._held = []

    def release(self, backlog: Iterable[Envelope]) -> None:
        """Queue the backlog, then the events held meanwhile, by id, without repeats.

        If the backlog does not fit the queue, its oldest events are dropped
        and the gap announced like any other.
        """
        held, self._held = self._held or [], None
        merged = sorted({e.id: e for e in [*backlog, *held]}.values(), key=lambda e: e.id)
        if self.last_id is not None:
            merged = [e for e in merged if e.id > self.last_id]
        room = self._limit - self._counted
        if len(merged) > room:
            merged = merged[len(merged) - room :]
        for env in merged:
            self._push(env)

    def end(self, terminal: Envelope | None = None) -> None:
        """Queue the terminal event (unless already past it), then end."""
        if terminal is not None:
            self.offer(terminal)
        if self._held is not None:
            self.release(())
        self._ended = True
        self._detach()
        self._signal.set()

    def bid_farewell(self) -> None:
        """End with the farewell, which names the last event this client was sent (SHUT-4)."""
        if self._held is not None:
            self.release(())
        if not self._ended and not self._closed:
            last = self.last_id or 0
            self._control(FAREWELL_EVENT, {"last_event_id": last, "message": "shutting down"}, last)
        self._ended = True
        self._detach()

    def _detach(self) -> None:
        topic, self.topic = self.topic, None
        if topic is not None:
            topic.detach(self)

    # -- the reading side ---------------------------------------------------------------

    def _take(self) -> Envelope:
        env = self._queue.popleft()
        if not env.control:
            self._counted -= 1
        return env

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Event:
        while True:
            if self._closed:
                raise StopAsyncIteration
            if self._queue:
                return self._take().event
            if self._ended:
                raise StopAsyncIteration
            self._signal.clear()
            await self._signal.wait()

    @property
    def pending(self) -> int:
        return len(self._queue)

    async def wait(self) -> None:
        """Wait until an event is queued, the subscription ends, or :meth:`poke` is called."""
        if not self._queue and not self.ended:
            self._signal.clear()
            await self._signal.wait()

    def poke(self) -> None:
        """Wake a waiting :meth:`wait` with nothing queued (time for a keep-alive)."""
        self._signal.set()

    def drain(self, max_bytes: int = 256 * 1024) -> list[Envelope] | None:
        """Take queued envelopes, up to about ``max_bytes``; None once ended and empty."""
        if self._closed or (not self._queue and self._ended):
            return None
        batch: list[Envelope] = []
        size = 0
        while self._queue and (not batch or size < max_bytes):
            env = self._take()
            batch.append(env)
            size += env.size
        return batch

    def close_now(self) -> None:
        """Unsubscribe without awaiting: for a connection that is gone."""
        self._closed = True
        self._queue.clear()
        self._counted = 0
        self._detach()
        self._signal.set()

    async def aclose(self) -> None:
        self.close_now()


class Topic:
    """One task's fan-out: its clients, its latest event, its recent history."""

    def __init__(self, hub: Hub, task_id: int, model: str) -> None:
        self._hub = hub
        self.task_id = task_id
        self.model = model
        self.subscribers: dict[Subscription, None] = {}
        #: The live run of this task here, if any; else clients wait on storage.
        self.run: Run | None = None
        self.latest: Envelope | None = None
        self._history: deque[Envelope] = deque()
        self._history_bytes = 0
        self.closed = False

    def __repr__(self) -> str:
        owner = "run" if self.run is not None else "watch"
        return f"<Topic {self.model} {self.task_id} {owner} clients={len(self.subscribers)}>"

    def attach(self, sub: Subscription, last_event_id: int | None) -> bool:
        """Register ``sub``; True if it must be given a backlog from the event log."""
        assert not self.closed, "a closed topic has left the hub"
        self.subscribers[sub] = None
        sub.topic = self
        if last_event_id is None:
            # Once the run's outcome is being recorded, its status may already
            # read as finished: a client joining then gets the end only (FUNC-8).
            ending = self.run is not None and self.run.recording
            if self.latest is not None and not ending:
                sub.offer(self.latest)
            return False
        replay = self.replay(last_event_id)
        if replay is None:
            sub.hold()
            return True
        for env in replay:
            sub.offer(env)
        return False

    def replay(self, after: int) -> list[Envelope] | None:
        """The events after ``after`` from memory, or None if memory does not reach back."""
        if self.run is None:
            return None  # no live run here: what was sent is in the log
        if self.latest is None or self.latest.id <= after:
            return []
        if self._history and self._history[0].id <= after + 1:
            return [e for e in self._history if e.id > after]
        return None

    def history(self) -> list[Envelope]:
        return list(self._history)

    def detach(self, sub: Subscription) -> None:
        self.subscribers.pop(sub, None)
        self._hub.discard(self)

    def publish(self, env: Envelope) -> None:
        for sub in list(self.subscribers):
            sub.offer(env)
        self.latest = env
        self._history.append(env)
        self._history_bytes += env.size
        limits = self._hub.history_size, self._hub.history_bytes
        while len(self._history) > 1 and (
            len(self._history) > limits[0] or self._history_bytes > limits[1]
        ):
            self._history_bytes -= self._history.popleft().size

    def close(self, terminal: Envelope | None) -> None:
        """End every client (with ``terminal``, if any) and leave the hub."""
        self.closed = True
        self.run = None
        for sub in list(self.subscribers):
            sub.end(terminal)
        self.subscribers.clear()
        self._history.clear()
        self._hub.remove(self)

    def farewell(self) -> None:
        self.closed = True
        self.run = None
        for sub in list(self.subscribers):
            sub.bid_farewell()
        self.subscribers.clear()
        self._hub.remove(self)


class Hub:
    """Every topic of one runtime, by task id."""

    def __init__(self, history_size: int, history_bytes: int) -> None:
        self.history_size = history_size
        self.history_bytes = history_bytes
        self._topics: dict[int, Topic] = {}

    def topic(self, task_id: int, model: str) -> Topic:
        found = self._topics.get(task_id)
        if found is None:
            found = self._topics[task_id] = Topic(self, task_id, model)
        return found

    def get(self, task_id: int) -> Topic | None:
        return self._topics.get(task_id)

    def discard(self, topic: Topic) -> None:
        """Drop a topic nobody needs: no live run and no client."""
        if topic.run is None and not topic.subscribers:
            self.remove(topic)

    def remove(self, topic: Topic) -> None:
        if self._topics.get(topic.task_id) is topic:
            del self._topics[topic.task_id]

    def topics(self) -> list[Topic]:
        return list(self._topics.values())

    @property
    def topic_count(self) -> int:
        return len(self._topics)

    @property
    def subscriber_count(self) -> int:
        return sum(len(t.subscribers) for t in self._topics.values())

    def farewell_all(self) -> None:
        for topic in list(self._topics.values()):
            topic.farewell()
