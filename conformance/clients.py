"""Clients the cases watch tasks through: in-process, or SSE over a real socket.

Both give a :class:`ClientStream`: an iterator of contract events that keeps
the trace of what it saw, so a failing case can show it. The HTTP client
talks to a real uvicorn server on 127.0.0.1 serving the implementation's ASGI
app (:func:`serve_asgi`), and reads the stream with ``httpx-sse``, which
shares nothing with any implementation.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, Protocol

import httpx
import uvicorn
from httpx_sse import EventSource, ServerSentEvent, aconnect_sse

from .contract import ASGIApp, Event, Runtime, Subscription, TaskRef
from .waiting import WaitTimeout


def format_trace(events: Sequence[Event]) -> str:
    """The events a client saw, one per line, for failure messages."""
    if not events:
        return "  (no events)"
    return "\n".join(f"  #{e.id} {e.type} {json.dumps(dict(e.data), default=str)}" for e in events)


class ClientStream:
    """One client's view of one task's stream."""

    def __init__(self, ref: TaskRef, events: AsyncIterator[Event], closer: Any) -> None:
        self.ref = ref
        self.seen: list[Event] = []
        self.ended = False
        self._events = events
        self._closer = closer

    async def next(self, timeout: float = 5.0) -> Event:
        """The next event; fails with the trace if none comes in time or the stream ends."""
        try:
            async with asyncio.timeout(timeout):
                event = await anext(self._events)
        except TimeoutError:
            raise WaitTimeout(
                f"No event from {self.ref} within {timeout:g}s. Seen so far:\n{self.trace()}"
            ) from None
        except StopAsyncIteration:
            self.ended = True
            raise AssertionError(
                f"The stream of {self.ref} ended while an event was expected. Seen:\n{self.trace()}"
            ) from None
        self.seen.append(event)
        return event

    async def until(self, *types: str, timeout: float = 10.0) -> list[Event]:
        """Read until an event of one of ``types`` (default: a terminal one); return all read."""
        start = len(self.seen)
        while True:
            event = await self.next(timeout)
            if (event.type in types) if types else event.is_terminal:
                return self.seen[start:]

    async def expect_end(self, timeout: float = 5.0) -> None:
        """Fail unless the stream ends (with no further event) within ``timeout``."""
        try:
            async with asyncio.timeout(timeout):
                extra = await anext(self._events)
        except StopAsyncIteration:
            self.ended = True
            return
        except TimeoutError:
            raise WaitTimeout(
                f"The stream of {self.ref} did not end within {timeout:g}s. Seen:\n{self.trace()}"
            ) from None
        self.seen.append(extra)
        raise AssertionError(
            f"The stream of {self.ref} went on after its end: {extra.type}. Seen:\n{self.trace()}"
        )

    def trace(self) -> str:
        return format_trace(self.seen)

    async def aclose(self) -> None:
        await self._closer()


class Client(Protocol):
    mode: str

    async def subscribe(
        self, ref: TaskRef, *, last_event_id: int | None = None
    ) -> ClientStream: ...

    async def aclose(self) -> None: ...


class InProcessClient:
    """Subscribes through ``Runtime.subscribe``."""

    mode = "inprocess"

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self._open: list[Subscription] = []

    async def subscribe(self, ref: TaskRef, *, last_event_id: int | None = None) -> ClientStream:
        subscription = await self.runtime.subscribe(ref, last_event_id=last_event_id)
        self._open.append(subscription)
        return ClientStream(ref, aiter(subscription), subscription.aclose)

    async def aclose(self) -> None:
        for subscription in self._open:
            await subscription.aclose()


class HttpStatusError(AssertionError):
    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"HTTP {status}: {body}")
        self.status = status
        self.body = body


class HttpClient:
    """Subscribes with ``GET /stream/<model>/<id>`` over a real socket, read by ``httpx-sse``."""

    mode = "http"

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        # No pool cap: a case may hold hundreds of streams open at once.
        self.http = httpx.AsyncClient(
            base_url=base_url,
            timeout=httpx.Timeout(10, read=None),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=None),
        )
        self._open: list[SSEReader] = []

    async def subscribe(self, ref: TaskRef, *, last_event_id: int | None = None) -> ClientStream:
        headers = {} if last_event_id is None else {"last-event-id": str(last_event_id)}
        stack = contextlib.AsyncExitStack()
        source = await stack.enter_async_context(
            aconnect_sse(self.http, "GET", ref.stream_path, headers=headers)
        )
        if source.response.status_code != 200:
            body = (await source.response.aread()).decode(errors="replace")
            await stack.aclose()
            raise HttpStatusError(source.response.status_code, body)
        reader = SSEReader(source, stack)
        self._open.append(reader)
        return ClientStream(ref, reader, reader.aclose)

    async def aclose(self) -> None:
        for reader in self._open:
            await reader.aclose()
        await self.http.aclose()


_END = object()


class SSEReader:
    """Contract events from one SSE response, read by a task of their own.

    The task starts at the first read, so a stream nobody reads stays unread
    on the socket (a client that reads nothing is one). It feeds a queue, so a
    read that times out or is cancelled loses nothing: an async generator over
    the response would be closed for good by the first cancelled ``anext()``.
    """

    def __init__(self, source: EventSource, stack: contextlib.AsyncExitStack) -> None:
        self._source = source
        self._stack = stack
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._ended = False

    def __aiter__(self) -> SSEReader:
        return self

    async def __anext__(self) -> Event:
        if self._ended:
            raise StopAsyncIteration
        if self._task is None:
            self._task = asyncio.create_task(self._read(), name="conformance:sse-reader")
        item = await self._queue.get()
        if item is _END:
            self._ended = True
            raise StopAsyncIteration
        if isinstance(item, BaseException):
            self._ended = True
            raise item
        return item  # type: ignore[no-any-return]

    async def _read(self) -> None:
        try:
            async for sse in self._source.aiter_sse():
                if sse.data:  # a block without data (a lone retry:) dispatches nothing
                    self._queue.put_nowait(_to_event(sse))
        except (httpx.HTTPError, ValueError, AssertionError) as exc:
            self._queue.put_nowait(exc)
        finally:
            self._queue.put_nowait(_END)

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._ended = True
        await self._stack.aclose()


def _not_json(constant: str) -> Any:
    raise AssertionError(f"SSE data is not strict JSON (RFC 8259 has no {constant}; FUNC-20)")


def _to_event(sse: ServerSentEvent) -> Event:
    """A contract event from an SSE one (``_``-prefixed keys of its data become metadata).

    The data must be strict JSON, as a browser's ``JSON.parse`` reads it:
    ``NaN`` and ``Infinity`` fail the case.
    """
    payload = json.loads(sse.data, parse_constant=_not_json)
    if not isinstance(payload, dict):
        raise AssertionError(f"SSE data is not a JSON object: {sse.data!r}")
    meta = {k: payload.pop(k) for k in ("_task_id", "_model", "_timestamp") if k in payload}
    if sse.retry is not None:
        payload.setdefault("_retry", sse.retry)
    return Event(
        id=int(sse.id) if sse.id else 0,
        type=sse.event or "message",
        data=payload,
        task_id=str(meta.get("_task_id", "")),
        model=str(meta.get("_model", "")),
        timestamp=str(meta.get("_timestamp", "")),
    )


async def read_raw_stream(
    base_url: str, ref: TaskRef, *, opened: Callable[[], None] | None = None
) -> bytes:
    """One bare-socket SSE client: send the request, check the headers, read to EOF.

    ``opened`` is called once the response headers are in, that is once the
    server has registered this client (HTTP-4). Light enough to run by the
    thousand in one process, where an HTTP client library would not be.
    """
    host, port = base_url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        # Connection: close, so the stream's end is the connection's, not a
        # keep-alive timeout later.
        request = f"GET {ref.stream_path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
        writer.write(request.encode())
        head = await reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            raise HttpStatusError(int(head[9:12]), head.decode(errors="replace"))
        if opened is not None:
            opened()
        return await reader.read()
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


def raw_frames(body: bytes) -> list[dict[str, str]]:
    """The SSE frames of a raw response body that carry data (chunked encoding removed)."""
    text = _unchunk(body).decode(errors="replace")
    frames: list[dict[str, str]] = []
    current: dict[str, str] = {}
    for line in text.replace("\r\n", "\n").split("\n"):
        if line == "":
            if "data" in current:
                frames.append(current)
            current = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(":")
            current[name] = value.removeprefix(" ")
    return frames


def _unchunk(body: bytes) -> bytes:
    """The payload of an HTTP/1.1 chunked body (a body that is not chunked comes back whole)."""
    out = bytearray()
    rest = body
    while rest:
        size_line, sep, rest = rest.partition(b"\r\n")
        try:
            size = int(size_line.split(b";")[0], 16)
        except ValueError:
            return body  # not chunked after all
        if not sep or size == 0:
            break
        out += rest[:size]
        rest = rest[size + 2 :]
    return bytes(out)


@contextlib.asynccontextmanager
async def serve_asgi(app: ASGIApp) -> AsyncIterator[str]:
    """Serve ``app`` with uvicorn on a free 127.0.0.1 port; yield its base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, lifespan="off", log_level="warning", timeout_graceful_shutdown=2)
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve(sockets=[sock]), name="conformance:uvicorn")
    try:
        while not server.started:
            if serving.done():
                await serving  # raises what stopped it
                raise RuntimeError("uvicorn stopped before it started")
            await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await serving
        sock.close()


async def open_client(mode: str, runtime: Runtime, stack: contextlib.AsyncExitStack) -> Client:
    """A client of ``mode`` for ``runtime``, closed (with its server) by ``stack``."""
    if mode == "inprocess":
        client: Client = InProcessClient(runtime)
    elif mode == "http":
        base_url = await stack.enter_async_context(serve_asgi(runtime.asgi_app()))
        client = HttpClient(base_url)
    else:
        raise ValueError(f"Unknown client mode {mode!r}: use 'inprocess' or 'http'.")
    stack.push_async_callback(client.aclose)
    return client


__all__ = [
    "Client",
    "ClientStream",
    "HttpClient",
    "HttpStatusError",
    "InProcessClient",
    "SSEReader",
    "format_trace",
    "open_client",
    "raw_frames",
    "read_raw_stream",
    "serve_asgi",
]
