"""A bus shared by several worker processes, on Redis streams and pub/sub.

Each task's events go to one Redis stream, ``<prefix>:events:<Model>:<pk>``,
and each entry's id is the event's own (``<id>-0``). So the stream keeps the
order and the ids every worker shows its clients, ``MAXLEN`` bounds its
history, and reading it from an id is a resume; pub/sub would give none of
these. A stream outlives its task's end by ``ENDED_TTL`` seconds.

- The worker that runs a task publishes to its own clients first (its hub),
  then to the stream, through one writer task that pipelines entries in
  order, off the publishing path.
- One reader task per worker reads the streams of the tasks it has clients
  for but does not run, and hands new entries to its hub.
- A client of a task running elsewhere is seeded from the stream: its latest
  entry, or every entry after the id it resumes from.
- A cancel goes to the owner's channel, ``<prefix>:control:<owner>``; each
  worker listens on its own.
- A farewell stays local: a worker that stops tells its own clients only.

While Redis is away, events still reach this worker's clients; what the
writer holds (up to ``buffer_limit`` entries) is sent once Redis is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import deque
from typing import Any, cast

import redis.asyncio as redis
from redis.exceptions import RedisError, ResponseError
from redis.typing import EncodableT, FieldT

from .bus import Bus, CancelHandler
from .events import Event
from .hub import Hub, Message, Subscriber

logger = logging.getLogger(__name__)

#: Entries a task's stream keeps at least (``MAXLEN ~``): how far another
#: worker's reader may fall behind a burst before its clients miss events.
STREAM_LENGTH = 10_000
#: Seconds a task's stream is kept after its final event.
ENDED_TTL = 3600
#: Milliseconds a read waits for new entries before it looks at what to watch again.
READ_BLOCK_MS = 100
#: Entries per pipelined write, and per read.
BATCH = 500
#: Seconds without a new entry of a task after which an ending found in
#: storage is handed to its clients here. While entries still come, the
#: reader brings the run's own terminal event after every event before it:
#: the owner stores its outcome before its last events may have reached Redis.
QUIET = 2.0


class RedisBus(Bus):
    """Events shared between workers through one Redis."""

    def __init__(
        self, hub: Hub, url: str, *, prefix: str, keep: int, buffer_limit: int = 100_000
    ) -> None:
        super().__init__(hub)
        # One connection each, opened before the bus counts as ready: the
        # reader blocks on its own, the writer pipelines on its own, the control
        # channel listens on its own, and the rest (seeding a client, resuming,
        # asking for a cancel) shares one. A pipeline and a pub/sub take their
        # connection from the client's pool, so those two clients keep a pool
        # (of one, as each is used by one task at a time).
        self.url = url
        self._reader = redis.Redis.from_url(url, single_connection_client=True)
        self._writer = redis.Redis.from_url(url)
        self.redis = redis.Redis.from_url(url, single_connection_client=True)
        self._listener = redis.Redis.from_url(url)
        self._listening = asyncio.Event()
        self.prefix = prefix
        self.keep = keep
        self._outbox: deque[tuple[str, Message]] = deque(maxlen=buffer_limit)
        self._wanted = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._watching = asyncio.Event()
        self._closing = False
        #: Stream read positions of the keys this worker watches.
        self._cursors: dict[str, str] = {}
        #: Loop time the reader last got an entry of each watched task.
        self._heard: dict[str, float] = {}
        self._tasks: list[asyncio.Task[None]] = []
        #: Entries dropped because Redis stayed away while the buffer filled.
        self.dropped = 0

    def _stream(self, key: str) -> str:
        return f"{self.prefix}:events:{key}"

    def _channel(self, owner: str) -> str:
        return f"{self.prefix}:control:{owner}"

    # -- lifecycle -----------------------------------------------------------------

    def start(self, owner: str, on_cancel: CancelHandler) -> None:
        if self._tasks:
            return
        self._tasks = [
            asyncio.create_task(self._write_forever(), name="streaming:redis-writer"),
            asyncio.create_task(self._read_forever(), name="streaming:redis-reader"),
            asyncio.create_task(self._listen(owner, on_cancel), name="streaming:redis-control"),
        ]

    async def ready(self) -> None:
        """Return once every connection is open and the control channel listened to."""
        pipe = self._writer.pipeline(transaction=False)
        pipe.ping()  # queued: the pipeline's connection opens when it executes
        await asyncio.gather(self._reader.ping(), pipe.execute(), self.redis.ping())
        async with asyncio.timeout(10):
            await self._listening.wait()

    async def problem(self) -> str | None:
        """None if Redis answers a PING on a connection of its own within 2 s; else why not.

        Its own connection: the bus's are busy (the reader blocks in a read),
        and one that broke is what this should find.
        """
        try:
            async with (
                asyncio.timeout(2.0),
                redis.Redis.from_url(self.url, socket_connect_timeout=2) as client,
            ):
                await client.ping()
        except (RedisError, OSError, TimeoutError) as exc:
            return f"bus unavailable: Redis does not answer ({type(exc).__name__}: {exc})"[:300]
        return None

    async def close(self) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2.0):
                await self._idle.wait()  # what is published reaches the stream first
        # The reader and the listener stop between two reads of theirs: a
        # command cancelled while redis-py reads its reply can leave the task
        # stuck in its reconnect (seen with redis-py 8.1, about 1 in 100).
        if self._closing:
            return
        self._closing = True
        self._watching.set()
        self._wanted.set()
        if not self._tasks:  # never started
            pending: set[asyncio.Task[None]] = set()
        else:
            _, pending = await asyncio.wait(self._tasks, timeout=READ_BLOCK_MS / 1000 + 1.0)
        for task in pending:
            task.cancel()  # a write Redis does not take, or a read that would not end
        if pending:
            _, stuck = await asyncio.wait(pending, timeout=1.0)
            for task in stuck:
                logger.error("redis bus: %s did not stop; left behind", task.get_name())
        self._tasks = []
        for client in (self._reader, self._writer, self.redis, self._listener):
            await client.aclose()

    # -- publishing ------------------------------------------------------------------

    async def publish(
        self, key: str, event: Event, *, final: bool = False, json_data: str | None = None
    ) -> Message:
        message = self.hub.publish(key, event, final=final, json_data=json_data)
        self._send(key, message)
        return message

    async def announce(self, key: str, event: Event) -> None:
        self._send(key, Message(event, final=True))

    def _send(self, key: str, message: Message) -> None:
        if len(self._outbox) == self._outbox.maxlen:
            self.dropped += 1
        self._outbox.append((key, message))
        self._idle.clear()
        self._wanted.set()

    async def _write_forever(self) -> None:
        delay = 0.1
        while True:
            await self._wanted.wait()
            self._wanted.clear()
            while self._outbox:
                # Taken off the buffer first: if it overflows while this batch
                # waits for Redis, what is dropped is newer entries, not these.
                batch = [self._outbox.popleft() for _ in range(min(BATCH, len(self._outbox)))]
                while True:
                    try:
                        await self._write(batch)
                        break
                    except RedisError as exc:
                        logger.warning("redis bus: cannot write %d events (%s)", len(batch), exc)
                        await asyncio.sleep(delay)  # back off while Redis is away
                        delay = min(delay * 2, 5.0)
                delay = 0.1
            self._idle.set()
            if self._closing:
                return

    async def _write(self, batch: list[tuple[str, Message]]) -> None:
        pipe = self._writer.pipeline(transaction=False)
        for key, message in batch:
            stream = self._stream(key)
            pipe.xadd(
                stream,
                _fields(message),
                id=f"{message.event.id}-0",
                maxlen=self.keep,
                approximate=True,
            )
            if message.final:
                pipe.expire(stream, ENDED_TTL)
        for result in await pipe.execute(raise_on_error=False):
            if isinstance(result, ResponseError):
                # An id at or below the stream's last: a run that lost its task
                # still sending (its successor's ids are above). Not for clients.
                logger.warning("redis bus: entry refused (%s)", result)
            elif isinstance(result, Exception):
                raise result

    async def request_cancel(self, owner: str, key: str, reason: str) -> None:
        message = json.dumps({"cancel": key, "reason": reason})
        try:
            await self.redis.publish(self._channel(owner), message)
        except RedisError as exc:
            # The request is in the task's row: the owner's keeper acts on it.
            logger.warning("redis bus: cancel of %s not sent to %s (%s)", key, owner, exc)

    async def _listen(self, owner: str, on_cancel: CancelHandler) -> None:
        while not self._closing:
            try:
                async with self._listener.pubsub() as pubsub:
                    await pubsub.subscribe(self._channel(owner))
                    self._listening.set()
                    while not self._closing:
                        message = await pubsub.get_message(
                            ignore_subscribe_messages=True, timeout=READ_BLOCK_MS / 1000
                        )
                        if message is not None and message["type"] == "message":
                            asked = json.loads(message["data"])
                            on_cancel(asked["cancel"], asked["reason"])
            except RedisError as exc:
                logger.warning("redis bus: control channel lost (%s); listening again", exc)
                await asyncio.sleep(1.0)  # back off while Redis is away

    # -- the other workers' events -------------------------------------------------------

    async def subscribe(
        self, key: str, *, after: int | None = None, final: Event | None = None
    ) -> Subscriber:
        if final is None and key not in self.watched_here():
            # A run elsewhere (or one not started): what the stream already has
            # comes first, then the reader goes on from there.
            entries = await self._entries(key, after)
            if entries:
                self._heard[key] = asyncio.get_running_loop().time()
            for entry_id, fields in entries:
                self._accept(key, _message(key, entry_id, fields), seeding=True)
                self._cursors[key] = entry_id
            # With nothing to seed, the reader starts where the client stands.
            self._cursors.setdefault(key, "0-0" if after is None else f"{after}-0")
        subscriber = await super().subscribe(key, after=after, final=final)
        self._watching.set()
        return subscriber

    def deliver(self, key: str, event: Event) -> None:
        heard = self._heard.get(key)
        if heard is not None and asyncio.get_running_loop().time() - heard < QUIET:
            return  # its events are still coming; the keeper looks again next period
        super().deliver(key, event)

    def watched_here(self) -> set[str]:
        """Keys a run of this worker publishes on."""
        return self.hub.active_keys()

    async def _entries(self, key: str, after: int | None) -> list[tuple[str, dict[bytes, bytes]]]:
        stream = self._stream(key)
        try:
            if after is None:
                entries = await self.redis.xrevrange(stream, count=1)
            else:
                entries = await self.redis.xrange(stream, min=f"{after + 1}-0")
            return [_decoded(entry) for entry in cast(list[Entry], entries)]
        except RedisError as exc:
            logger.warning("redis bus: cannot read %s (%s)", stream, exc)
            return []

    async def history(self, key: str, *, after: int, before: int | None) -> list[Message]:
        stream = self._stream(key)
        upper = f"{before - 1}-0" if before is not None else "+"
        try:
            entries = await self.redis.xrange(stream, min=f"{after + 1}-0", max=upper)
        except RedisError as exc:
            logger.warning("redis bus: cannot read %s (%s)", stream, exc)
            return []
        decoded = map(_decoded, cast(list[Entry], entries))
        return [_message(key, entry_id, fields) for entry_id, fields in decoded]

    def _accept(self, key: str, message: Message, *, seeding: bool = False) -> None:
        """Hand an entry read from Redis to this worker's clients, once."""
        if not seeding and not self.hub.has_subscribers(key):
            self._cursors.pop(key, None)
            return
        latest = self.hub.latest_id(key)
        if latest is None or latest < message.event.id:
            self.hub.publish(key, message.event, final=message.final, json_data=message.json)

    async def _read_forever(self) -> None:
        while not self._closing:
            watched = set(self.watched_elsewhere())
            for key in list(self._cursors):
                if key not in watched:
                    del self._cursors[key]
                    self._heard.pop(key, None)
            if not self._cursors:
                self._watching.clear()
                await self._watching.wait()  # set by a new client, or by close()
                continue
            streams: dict[Any, Any] = {
                self._stream(key): cursor for key, cursor in self._cursors.items()
            }
            try:
                read = await self._reader.xread(streams, count=BATCH, block=READ_BLOCK_MS)
            except RedisError as exc:
                logger.warning("redis bus: cannot read (%s)", exc)
                await asyncio.sleep(1.0)  # back off while Redis is away
                continue
            now = asyncio.get_running_loop().time()
            for stream, entries in cast(list[tuple[bytes, list[Entry]]], read):
                key = stream.decode().removeprefix(f"{self.prefix}:events:")
                self._heard[key] = now
                for entry_id, fields in map(_decoded, entries):
                    if key in self._cursors:
                        self._cursors[key] = entry_id
                        self._accept(key, _message(key, entry_id, fields))

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "pending": len(self._outbox), "dropped": self.dropped}


#: An entry of a Redis stream as redis-py returns it: its id, and its fields.
Entry = tuple[bytes, dict[bytes, bytes]]


def _fields(message: Message) -> dict[FieldT, EncodableT]:
    event = message.event
    head = {"type": event.type, "task_id": event.task_id, "ts": event.timestamp}
    return {"e": json.dumps(head), "d": message.json, "f": "1" if message.final else ""}


def _decoded(entry: Entry) -> tuple[str, dict[bytes, bytes]]:
    entry_id, fields = entry
    return entry_id.decode(), fields


def _message(key: str, entry_id: str, fields: dict[bytes, bytes]) -> Message:
    """The message an entry carries; its id is the entry's, ``<event id>-0``."""
    head = json.loads(fields[b"e"])
    data = fields[b"d"].decode()
    event_id = int(entry_id.partition("-")[0])
    model = key.partition(":")[0]
    event = Event(event_id, head["type"], json.loads(data), head["task_id"], model, head["ts"])
    return Message(event, final=bool(fields.get(b"f")), json_data=data)
