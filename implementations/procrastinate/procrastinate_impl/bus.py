"""Fan-out in the runtime's process: PostgreSQL LISTEN/NOTIFY, then the events table.

One connection listens on ``store.CHANNEL``; another reads events. A topic
is a task with clients here. On a notification for it, the events after the
last one read are fetched in order and pushed to each client, which keeps a
bounded queue (``overflow`` past it, FUNC-18).
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from collections.abc import Callable
from typing import Any

import psycopg

from conformance.contract import (
    FAREWELL_EVENT,
    OVERFLOW_EVENT,
    TERMINAL_EVENTS,
    Event,
    Subscription,
)

from .store import CHANNEL, CLAIMED

#: The one task kind's name in URLs: every task runs the one procrastinate task.
MODEL = "task"


class Client(Subscription):
    """One in-process subscriber: a bounded queue, ended by a terminal event or an overflow."""

    def __init__(self, bus: Bus, pk: int, limit: int) -> None:
        self.bus, self.pk, self.limit = bus, pk, limit
        self.queue: deque[Event] = deque()
        #: The number of the last event pushed: nothing at or below it is pushed again.
        self.seen = 0
        self.received: int | None = None
        self.ended = False
        self.wakeup = asyncio.Event()

    def push(self, event: Event) -> None:
        if self.ended or (event.id <= self.seen and event.type != FAREWELL_EVENT):
            return
        self.seen = max(self.seen, event.id)
        if len(self.queue) >= self.limit:  # too far behind: told, and dropped (FUNC-18)
            data = {"last_event_id": self.received, "reason": "the client fell too far behind"}
            self.queue.clear()
            event = Event(
                self.received or 0, OVERFLOW_EVENT, data, str(self.pk), MODEL, event.timestamp
            )
        self.queue.append(event)
        if event.type in TERMINAL_EVENTS or event.type in (OVERFLOW_EVENT, FAREWELL_EVENT):
            self.close()
        self.wakeup.set()

    def close(self) -> None:
        self.ended = True
        self.bus.leave(self)
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

    def take_queued(self) -> list[Event]:
        """The events already queued, taken at once (an HTTP stream writes them together)."""
        events = list(self.queue)
        self.queue.clear()
        if events:
            self.received = events[-1].id
        return events

    async def aclose(self) -> None:
        self.queue.clear()
        self.close()


class Topic:
    def __init__(self) -> None:
        self.clients: set[Client] = set()
        self.read = 0  # the last event number fetched for this topic
        self.dirty = False


class Bus:
    """LISTEN for events of any task; fetch and fan out those of tasks with clients here."""

    def __init__(
        self,
        conninfo: str,
        on_terminal: Callable[[int], None],
        on_claimed: Callable[[int], None] | None = None,
    ) -> None:
        self.conninfo = conninfo
        self.on_terminal = on_terminal
        #: Told when a worker began a run of a task (``store.CLAIMED``).
        self.on_claimed = on_claimed
        self.topics: dict[int, Topic] = {}
        #: While a shutdown decides how runs end, nothing is delivered but by flush().
        self.paused = False
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._listen: psycopg.AsyncConnection[Any] | None = None
        self._fetch: psycopg.AsyncConnection[Any] | None = None
        self._tasks: list[asyncio.Task[None]] = []

    async def open(self) -> None:
        self._listen = await psycopg.AsyncConnection.connect(self.conninfo, autocommit=True)
        self._fetch = await psycopg.AsyncConnection.connect(self.conninfo, autocommit=True)
        await self._listen.execute(f"LISTEN {CHANNEL}")
        self._tasks = [
            asyncio.create_task(self._listener(), name="procrastinate_impl listener"),
            asyncio.create_task(self._pump(), name="procrastinate_impl fan-out"),
        ]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for conn in (self._listen, self._fetch):
            if conn is not None:
                await conn.close()

    async def _listener(self) -> None:
        assert self._listen is not None
        async for note in self._listen.notifies():
            pk_text, _, rest = note.payload.partition(" ")
            type = rest.partition(" ")[2]
            pk = int(pk_text)
            if type in TERMINAL_EVENTS:
                self.on_terminal(pk)
            elif type == CLAIMED:
                if self.on_claimed is not None:
                    self.on_claimed(pk)
                continue
            topic = self.topics.get(pk)
            if topic is not None:
                topic.dirty = True
                self._wake.set()

    async def _pump(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self.paused:
                continue  # the topics stay dirty: flush() delivers them
            for pk, topic in list(self.topics.items()):
                if topic.dirty:
                    topic.dirty = False
                    await self._deliver(pk, topic)

    async def flush(self, hold_terminal: set[int]) -> None:
        """Deliver every stored event to the clients here, but terminal ones of ``hold_terminal``.

        The tasks of ``hold_terminal`` were stopped by a shutdown: their live
        clients get the farewell instead of their ``interrupted``.
        """
        for pk, topic in list(self.topics.items()):
            topic.dirty = False
            await self._deliver(pk, topic, hold_terminal=pk in hold_terminal)

    async def _deliver(self, pk: int, topic: Topic, *, hold_terminal: bool = False) -> None:
        async with self._lock:
            for event in await self._read(pk, after=topic.read):
                if hold_terminal and event.type in TERMINAL_EVENTS:
                    return
                topic.read = event.id
                for client in tuple(topic.clients):
                    client.push(event)

    async def _read(self, pk: int, *, after: int | None = None) -> list[Event]:
        """Events of a task after a number, in order; with ``after=None``, only the latest."""
        assert self._fetch is not None
        if after is None:
            query = (
                "SELECT number, type, data, timestamp FROM procrastinate_impl_event"
                " WHERE task_id = %s ORDER BY number DESC LIMIT 1"
            )
            params: tuple[Any, ...] = (pk,)
        else:
            query = (
                "SELECT number, type, data, timestamp FROM procrastinate_impl_event"
                " WHERE task_id = %s AND number > %s ORDER BY number"
            )
            params = (pk, after)
        cursor = await self._fetch.execute(query, params)
        return [
            Event(number, type, json.loads(data), str(pk), MODEL, timestamp)
            for number, type, data, timestamp in await cursor.fetchall()
        ]

    async def subscribe(self, pk: int, limit: int, last_event_id: int | None = None) -> Client:
        """Register a client, then give it where it starts: nothing is missed between.

        Without ``last_event_id``, the latest event of the current run (of
        the last run, once the task has ended); with it, every stored event
        after it. A client resumed at or past a finished task's last event
        ends at once, with none.
        """
        client = Client(self, pk, limit)
        async with self._lock:
            new = pk not in self.topics
            topic = self.topics.setdefault(pk, Topic())
            topic.clients.add(client)
            status, last, run_from = await self._task(pk)
            if last_event_id is None:
                latest = await self._read(pk)
                if latest and (status != "RUNNING" or latest[0].id > run_from):
                    client.push(latest[0])
                else:  # an earlier run's end is not this run's news
                    client.seen = max(client.seen, latest[0].id if latest else 0)
            elif status not in ("READY", "RUNNING") and last_event_id >= last:
                client.close()  # nothing after its terminal event will ever come
                return client
            else:
                client.seen = last_event_id
                # The stored backlog is the client's to read at its pace: not
                # counted against its queue's bound, which is for live events.
                backlog = await self._read(pk, after=last_event_id)
                client.queue.extend(backlog)
                client.seen = max([last_event_id, *(e.id for e in backlog)])
                if any(e.type in TERMINAL_EVENTS for e in backlog[-1:]):
                    client.close()
            if new:  # a topic's older clients may not have had up to the latest yet
                topic.read = last
        # Anything sent after the latest reaches it through a notification; if
        # one came while we read, its topic is dirty and the pump catches up.
        topic.dirty = True
        self._wake.set()
        return client

    async def _task(self, pk: int) -> tuple[str, int, int]:
        """The task's status, its last event id, and where its current run began."""
        assert self._fetch is not None
        cursor = await self._fetch.execute(
            "SELECT status, last_event_id, run_from FROM procrastinate_impl_task WHERE id = %s",
            (pk,),
        )
        row = await cursor.fetchone()
        return row if row is not None else ("READY", 0, 0)

    def leave(self, client: Client) -> None:
        topic = self.topics.get(client.pk)
        if topic is None:
            return
        topic.clients.discard(client)
        if not topic.clients:
            del self.topics[client.pk]

    def farewell(self, timestamp: str) -> None:
        """Send every client the farewell, naming the last event it was sent."""
        for topic in list(self.topics.values()):
            for client in tuple(topic.clients):
                data = {"last_event_id": client.seen}
                farewell = Event(
                    client.seen, FAREWELL_EVENT, data, str(client.pk), MODEL, timestamp
                )
                client.push(farewell)

    @property
    def subscribers(self) -> int:
        return sum(len(topic.clients) for topic in self.topics.values())
