"""Server-Sent Events over raw ASGI: one stream's writer, and the timer all streams share.

No Django inside. A :class:`StreamWriter` sends one subscriber's events: it
takes everything queued and writes it in one ``send``, then waits on the
subscriber for more, with no timer of its own. :class:`Writers` holds the
open streams of one server and one timer for all of them, which wakes a
stream that has been idle for ``keepalive`` seconds (it sends a comment, so
proxies keep it open and a vanished client is noticed) and aborts the
connection of a stream whose write has stalled for ``write_deadline``
seconds (a client that stopped reading: closing is the only way to free
what the server holds for it). A write is stalled while its transport's
buffer does not shrink: a slow client still draining a 10 MB event is
making progress, however long that takes on a busy machine.

The frames themselves are encoded once per event by ``bus.Message``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

logger = logging.getLogger(__name__)

#: Response headers of every event stream.
HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    # nginx and some proxies buffer responses unless told not to.
    (b"x-accel-buffering", b"no"),
]

#: An SSE comment: ignored by clients, keeps idle connections (and proxies) open.
KEEPALIVE = b": keepalive\n\n"

Send = Callable[[dict[str, Any]], Awaitable[None]]
Receive = Callable[[], Awaitable[dict[str, Any]]]


class Frame(Protocol):
    final: bool

    @property
    def sse(self) -> bytes: ...


class Source(Protocol):
    """What a writer reads from: ``bus.Subscriber``."""

    @property
    def ended(self) -> bool: ...

    def take(self) -> Sequence[Frame]: ...

    async def wait(self) -> None: ...

    def wake(self) -> None: ...

    def close(self) -> None: ...


class StreamWriter:
    """Writes one subscriber's events to one SSE response."""

    __slots__ = (
        "_buffered",
        "_send",
        "_transport",
        "aborted",
        "last_write",
        "sending_since",
        "source",
    )

    def __init__(self, send: Send, source: Source) -> None:
        self._send = send
        # uvicorn's send is a method of the object that holds the connection's
        # transport; an ASGI app has no other way to see a stalled write, or to
        # drop a connection whose buffers are full (a close would wait to flush).
        self._transport = getattr(getattr(send, "__self__", None), "transport", None)
        self._buffered: int | None = None
        self.source = source
        #: Loop time of the last completed write.
        self.last_write = 0.0
        #: Loop time a pending write began; None while no write is pending.
        self.sending_since: float | None = None
        self.aborted = False

    async def run(self, retry_ms: int, keepalive: float) -> None:
        """Send the response: headers, ``retry:``, then events until the subscriber ends."""
        loop = asyncio.get_running_loop()
        await self._timed(loop, {"type": "http.response.start", "status": 200, "headers": HEADERS})
        pending = b"retry: %d\n\n" % retry_ms
        while True:
            frames = self.source.take()
            ended = self.source.ended or self.aborted  # after take(): nothing more will come
            if frames:
                pending += b"".join([frame.sse for frame in frames])
            if pending or ended:
                await self._write(loop, pending, more=not ended)
                if ended:
                    return
                pending = b""
                continue
            if loop.time() - self.last_write >= keepalive:
                await self._write(loop, KEEPALIVE, more=True)
                continue
            await self.source.wait()

    async def _write(self, loop: asyncio.AbstractEventLoop, body: bytes, *, more: bool) -> None:
        await self._timed(loop, {"type": "http.response.body", "body": body, "more_body": more})

    async def _timed(self, loop: asyncio.AbstractEventLoop, message: dict[str, Any]) -> None:
        """Send, with the time it started where the shared timer can see a stall."""
        self.sending_since = self.last_write = loop.time()
        self._buffered = None
        try:
            await self._send(message)
        finally:
            self.sending_since = None

    def drained(self) -> bool:
        """Whether the pending write's buffer shrank since the last look (False if unseen)."""
        size = getattr(self._transport, "get_write_buffer_size", None)
        if size is None:
            return False
        unsent, before = size(), self._buffered
        self._buffered = unsent
        return before is not None and unsent < before

    def abort(self) -> None:
        """Close the connection now: its client stopped reading and a write stalled."""
        if self.aborted:
            return
        self.aborted = True
        self.source.close()
        if self._transport is not None:
            self._transport.abort()
        else:
            logger.warning(
                "cannot close a stalled stream: the server does not expose its transport"
            )


async def close_on_disconnect(receive: Receive, source: Source) -> None:
    """Close ``source`` when the client disconnects (a writer alone would never notice)."""
    while (await receive())["type"] != "http.disconnect":
        pass
    source.close()


class Writers:
    """The open streams of one server, and the one timer that serves them all."""

    def __init__(self, *, keepalive: float, write_deadline: float) -> None:
        self.keepalive = keepalive
        self.write_deadline = write_deadline
        self.period = min(keepalive, write_deadline) / 4
        self._open: set[StreamWriter] = set()
        self._timer: asyncio.TimerHandle | None = None
        #: Loop time the pending tick is due.
        self._due = 0.0

    def __len__(self) -> int:
        return len(self._open)

    async def serve(self, writer: StreamWriter, receive: Receive, retry_ms: int) -> None:
        """Run ``writer`` until its stream ends or its client leaves."""
        listener = asyncio.create_task(
            close_on_disconnect(receive, writer.source), name="streaming:disconnect-listener"
        )
        self._open.add(writer)
        if self._timer is None:
            self._schedule(asyncio.get_running_loop())
        try:
            await writer.run(retry_ms, self.keepalive)
        finally:
            self._open.discard(writer)
            writer.source.close()
            listener.cancel()
            await asyncio.gather(listener, return_exceptions=True)

    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        self._due = loop.time() + self.period
        self._timer = loop.call_later(self.period, self._tick)

    def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        # A late tick says the loop itself was held (a task's synchronous code,
        # a starved machine): no write could move then, whatever its client
        # did, so that time counts against none of them.
        held = max(0.0, now - self._due)
        for writer in tuple(self._open):
            if writer.sending_since is not None:
                if writer.drained():
                    writer.sending_since = now  # slow, not stalled
                    continue
                writer.sending_since += held
                if now - writer.sending_since > self.write_deadline:
                    writer.abort()
            elif now - writer.last_write >= self.keepalive:
                writer.source.wake()
        if self._open:
            self._schedule(loop)
        else:
            self._timer = None
