"""The Redis bus between two workers, seen from inside: what the MULTI cases cannot see.

Two :class:`~streaming.redisbus.RedisBus` instances on one real Redis play
two workers. Where Redis must go away, the bus talks to it through
:class:`Relay`, a TCP relay the test cuts and restores, so the fault is a
real dropped and refused connection, not a mock.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import pytest
import pytest_asyncio
import redis.asyncio as redis

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(30)]

KEY = "BehaviourTask:1"


def _event(number: int, type: str = "tick"):
    from streaming.events import Event

    return Event(number, type, {"n": number}, 1, "BehaviourTask", "2026-01-01T00:00:00+00:00")


class Relay:
    """A TCP relay to Redis that can be cut (connections reset, new ones refused) and restored."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.target = (parts.hostname or "127.0.0.1", parts.port or 6379)
        self.database = parts.path or "/0"
        self.server: asyncio.Server | None = None
        self.port = 0
        self.pipes: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}{self.database}"

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        self.port = self.server.sockets[0].getsockname()[1]

    async def __aenter__(self) -> Relay:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.cut()

    async def cut(self) -> None:
        if self.server is None:
            return
        self.server.close()
        for pipe in list(self.pipes):
            pipe.cancel()
        await asyncio.gather(*self.pipes, return_exceptions=True)
        # Since Python 3.12.1 this also waits for the server's connections to
        # close: the pipes' ends have just aborted them.
        await self.server.wait_closed()
        self.server = None

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)
        pipes = [
            asyncio.create_task(self._pipe(reader, upstream_writer)),
            asyncio.create_task(self._pipe(upstream_reader, writer)),
        ]
        self.pipes.update(pipes)
        try:
            await asyncio.gather(*pipes)
        except asyncio.CancelledError:
            pass
        finally:
            for w in (writer, upstream_writer):
                w.transport.abort()  # a reset, as a dead network gives
            self.pipes.difference_update(pipes)

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()


@pytest_asyncio.fixture
async def prefix(redis_url: str) -> AsyncIterator[str]:
    name = f"test-bus-{uuid.uuid4().hex[:8]}"
    yield name
    client = redis.Redis.from_url(redis_url)
    keys = [key async for key in client.scan_iter(match=f"{name}:*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()


@contextlib.asynccontextmanager
async def worker(
    url: str,
    prefix: str,
    owner: str,
    cancels: list | None = None,
    arrived: asyncio.Event | None = None,
):
    from streaming.hub import Hub
    from streaming.redisbus import RedisBus

    asked = cancels if cancels is not None else []

    def on_cancel(key: str, reason: str) -> None:
        asked.append((key, reason))
        if arrived is not None:
            arrived.set()

    bus = RedisBus(Hub(queue_size=1000), url, prefix=prefix, keep=1000)
    bus.start(owner, on_cancel)
    await bus.ready()
    try:
        yield bus
    finally:
        await bus.close()


async def in_redis(url: str, prefix: str, count: int) -> None:
    """Wait until the task's stream in Redis holds ``count`` entries."""
    client = redis.Redis.from_url(url)
    try:
        async with asyncio.timeout(10):
            # Redis has no event to wait on: poll it, under the deadline.
            while await client.xlen(f"{prefix}:events:{KEY}") < count:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
    finally:
        await client.aclose()


async def take(subscriber, count: int) -> list[tuple[int, str]]:
    seen = []
    async with asyncio.timeout(10):
        async for message in subscriber:
            seen.append((message.event.id, message.event.type))
            if len(seen) == count:
                break
    return seen


async def test_events_of_one_worker_when_published_then_another_workers_client_gets_them_in_order(
    redis_url: str, prefix: str
) -> None:
    async with worker(redis_url, prefix, "a") as a, worker(redis_url, prefix, "b") as b:
        a.open(KEY)
        remote = await b.subscribe(KEY)
        for number in range(1, 50):
            await a.publish(KEY, _event(number))
        await a.publish(KEY, _event(50, "complete"), final=True)
        seen = await take(remote, 50)
        assert seen == [(n, "tick") for n in range(1, 50)] + [(50, "complete")]
        async with asyncio.timeout(5):
            assert [message async for message in remote] == []  # the final one ended it


async def test_ending_from_storage_when_the_reader_is_still_bringing_events_then_it_waits(
    redis_url: str, prefix: str
) -> None:
    # The owner stores its outcome before its last events reach Redis; a keeper
    # that hands the stored terminal event to this worker's clients while the
    # reader is still bringing the run's events would skip them (stream-reset).
    async with worker(redis_url, prefix, "a") as a, worker(redis_url, prefix, "b") as b:
        a.open(KEY)
        remote = await b.subscribe(KEY)
        await a.publish(KEY, _event(1))
        assert await take(remote, 1) == [(1, "tick")]

        b.deliver(KEY, _event(4, "complete"))  # what the keeper read from storage
        await a.publish(KEY, _event(2))
        await a.publish(KEY, _event(3))
        await a.publish(KEY, _event(4, "complete"), final=True)
        assert await take(remote, 3) == [(2, "tick"), (3, "tick"), (4, "complete")]


async def test_client_of_another_worker_when_late_then_latest_first_and_when_resuming_then_rest(
    redis_url: str, prefix: str
) -> None:
    async with worker(redis_url, prefix, "a") as a, worker(redis_url, prefix, "b") as b:
        a.open(KEY)
        for number in range(1, 6):
            await a.publish(KEY, _event(number))
        await a.close()  # flushed to Redis: what b reads next is all there
        late = await b.subscribe(KEY)
        assert await take(late, 1) == [(5, "tick")]
        late.close()
        resumed = await b.subscribe(KEY, after=2)
        assert await take(resumed, 3) == [(3, "tick"), (4, "tick"), (5, "tick")]


async def test_resume_on_another_worker_when_nothing_newer_yet_then_no_repeat_of_older(
    redis_url: str, prefix: str
) -> None:
    # The bug MULTI-4 found: with nothing after the client's id in the stream
    # yet, the reader started from the beginning and sent it all again.
    async with worker(redis_url, prefix, "a") as a, worker(redis_url, prefix, "b") as b:
        a.open(KEY)
        for number in range(1, 4):
            await a.publish(KEY, _event(number))
        await in_redis(redis_url, prefix, 3)
        resumed = await b.subscribe(KEY, after=3)  # b has never read this stream
        await a.publish(KEY, _event(4))
        assert await take(resumed, 1) == [(4, "tick")]


async def test_cancel_when_requested_on_another_worker_then_the_owner_is_asked(
    redis_url: str, prefix: str
) -> None:
    asked: list[tuple[str, str]] = []
    arrived = asyncio.Event()
    async with (
        worker(redis_url, prefix, "a", asked, arrived),
        worker(redis_url, prefix, "b") as b,
    ):
        await b.request_cancel("a", KEY, "from b")
        async with asyncio.timeout(10):
            await arrived.wait()
        assert asked == [(KEY, "from b")]


async def test_redis_when_away_then_local_clients_served_and_others_catch_up_once_back(
    redis_url: str, prefix: str
) -> None:
    async with (
        Relay(redis_url) as relay,
        worker(relay.url, prefix, "a") as a,
        worker(redis_url, prefix, "b") as b,
    ):
        a.open(KEY)
        local = a.hub.subscribe(KEY)
        remote = await b.subscribe(KEY)
        await a.publish(KEY, _event(1))
        assert await take(remote, 1) == [(1, "tick")]

        await relay.cut()
        for number in range(2, 6):
            await a.publish(KEY, _event(number))
        assert await take(local, 5) == [(n, "tick") for n in range(1, 6)]

        await relay.start()  # the same port: the bus reconnects on its own
        assert await take(remote, 4) == [(n, "tick") for n in range(2, 6)]
        assert a.describe()["dropped"] == 0


async def test_entry_when_its_id_is_not_above_the_streams_last_then_refused_quietly(
    redis_url: str, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with worker(redis_url, prefix, "a") as a:
        a.open(KEY)
        await a.publish(KEY, _event(5))
        a.hub.release(KEY)
        a.open(KEY)
        await a.publish(KEY, _event(3))  # a lost run, still sending below its successor
        await a.close()
        client = redis.Redis.from_url(redis_url)
        ids = [entry_id for entry_id, _ in await client.xrange(f"{prefix}:events:{KEY}")]
        await client.aclose()
    assert ids == [b"5-0"]
    assert "entry refused" in caplog.text


async def test_bus_when_closed_then_its_tasks_end_on_their_own_not_cancelled(
    redis_url: str, prefix: str
) -> None:
    # Cancelling them would cost a shutdown their wait for it (and redis-py
    # can leave a task cancelled mid-reply stuck): each must see close() itself.
    async with worker(redis_url, prefix, "a") as a, worker(redis_url, prefix, "b") as b:
        a.open(KEY)
        watching = await b.subscribe(KEY)  # b's reader is blocked in a read
        await a.publish(KEY, _event(1))
        assert await take(watching, 1) == [(1, "tick")]
        tasks = [*a._tasks, *b._tasks]
        await b.close()
        await a.close()
    assert all(task.done() and not task.cancelled() for task in tasks), tasks
