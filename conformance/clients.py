"""Clients the cases watch tasks through: in-process, or SSE over a real socket.

Both give a :class:`ClientStream`: an iterator of contract events that keeps
the trace of what it saw, so a failing case can show it. The HTTP client
talks to a real uvicorn server on 127.0.0.1 serving the implementation's ASGI
app (:func:`serve_asgi`), and reads the stream with ``httpx-sse``, which
shares nothing with any implementation. Every HTTP client of the harness is
made by :func:`http_client`; :mod:`conformance.wire` reads streams below any
HTTP library. :class:`RawSubscription` reads a ``Runtime.subscribe``
subscription with nothing of the harness in between.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator, Mapping, Sequence
from types import TracebackType
from typing import Any, Protocol

import httpx
import uvicorn
from httpx_sse import EventSource, ServerSentEvent, aconnect_sse

from .contract import WAITING_EVENT, ASGIApp, Event, Runtime, Subscription, TaskRef
from .waiting import WaitTimeout


def format_trace(events: Sequence[Event]) -> str:
    """The events a client saw, one per line, for failure messages."""
    if not events:
        return "  (no events)"
    return "\n".join(f"  #{e.id} {e.type} {json.dumps(dict(e.data), default=str)}" for e in events)


#: Seconds a harness client keeps an idle connection for reuse. A server may
#: close an idle keep-alive connection just as a request is sent on it, and a
#: POST so lost cannot be sent again: this stays well below the keep-alive
#: time of common servers (uvicorn's and hypercorn's 5 s, gunicorn's 2 s), so
#: the harness never sends on a connection a server could be closing.
IDLE_REUSE = 1.0


def http_client(
    base_url: str = "", *, timeout: float = 10.0, streaming: bool = False
) -> httpx.AsyncClient:
    """An HTTP client: the one place the harness makes one.

    ``timeout`` bounds each step of a request (connect, write, read); with
    ``streaming``, a read may wait as long as the case does, for a stream
    that is quiet until a task sends. There is no pool cap: a case may hold
    hundreds of streams open at once. An idle connection is reused for
    :data:`IDLE_REUSE` seconds at most.
    """
    return httpx.AsyncClient(
        base_url=base_url,
        timeout=httpx.Timeout(timeout, read=None if streaming else timeout),
        limits=httpx.Limits(
            max_connections=None, max_keepalive_connections=None, keepalive_expiry=IDLE_REUSE
        ),
    )


async def request(
    base_url: str, method: str, path: str, *, timeout: float = 10.0, **kwargs: Any
) -> httpx.Response:
    """One request, on a client of its own (``kwargs`` as for ``httpx.AsyncClient.request``)."""
    async with http_client(base_url, timeout=timeout) as http:
        return await http.request(method, path, **kwargs)


class ClientStream:
    """One client's view of one task's stream."""

    def __init__(self, ref: TaskRef, events: AsyncIterator[Event], closer: Any) -> None:
        self.ref = ref
        self.seen: list[Event] = []
        #: ``waiting`` notices (SPEC: MAY), set aside from the task's events.
        self.notices: list[Event] = []
        self.ended = False
        self._events = events
        self._closer = closer

    async def _read(self) -> Event:
        """The next of the task's events; a ``waiting`` notice is checked and set aside."""
        while True:
            event = await anext(self._events)
            if event.type != WAITING_EVENT:
                return event
            # Before any event, the last id is the client's own (0, or its Last-Event-ID).
            last = self.seen[-1].id if self.seen else event.id
            assert event.id == last and isinstance(event.data.get("message"), str), (
                f"A {WAITING_EVENT!r} notice carries the id of the last event before it "
                f"({last}) and a message; got id {event.id}, data {dict(event.data)}.\n"
                f"{self.trace()}"
            )
            self.notices.append(event)

    async def next(self, timeout: float = 5.0) -> Event:
        """The next event; fails with the trace if none comes in time or the stream ends."""
        try:
            async with asyncio.timeout(timeout):
                event = await self._read()
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
                extra = await self._read()
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

    async def read_to_end(self, timeout: float = 10.0) -> ClientStream:
        """Read through the terminal event; fail unless the stream then ends."""
        await self.until(timeout=timeout)
        await self.expect_end()
        return self

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


class RawSubscription:
    """A ``Runtime.subscribe`` subscription read with ``asyncio.wait_for``, and what was read.

    Nothing of the harness stands between the case and the subscription: a
    wait that times out cancels the subscription's own ``anext()``, as it
    would for any user of the contract.
    """

    def __init__(self, subscription: Subscription) -> None:
        self.subscription = subscription
        self.seen: list[Event] = []
        self._events = aiter(subscription)

    async def wait_next(self, timeout: float) -> Event:
        """The next event under ``asyncio.wait_for``: TimeoutError if none comes in time."""
        event = await asyncio.wait_for(anext(self._events), timeout)
        self.seen.append(event)
        return event

    async def next(self, timeout: float = 5.0) -> Event:
        """The next event; fails with the trace if none comes in time or the stream ends."""
        try:
            return await self.wait_next(timeout)
        except TimeoutError:
            raise WaitTimeout(f"No event within {timeout:g}s. Seen:\n{self.trace()}") from None
        except StopAsyncIteration:
            raise AssertionError(f"The stream ended early. Seen:\n{self.trace()}") from None

    async def times_out(self, timeout: float) -> bool:
        """Whether a wait for the next event raises TimeoutError (anything else propagates)."""
        try:
            await self.wait_next(timeout)
        except TimeoutError:
            return True
        return False

    async def until(self) -> list[Event]:
        """Read through the next terminal event; return what was read."""
        start = len(self.seen)
        while not (await self.next()).is_terminal:
            pass
        return self.seen[start:]

    def trace(self) -> str:
        return format_trace(self.seen)


@contextlib.asynccontextmanager
async def raw_subscription(runtime: Runtime, ref: TaskRef) -> AsyncIterator[RawSubscription]:
    """A :class:`RawSubscription` of ``ref``, closed on exit."""
    subscription = await runtime.subscribe(ref)
    try:
        yield RawSubscription(subscription)
    finally:
        await subscription.aclose()


class HttpStatusError(AssertionError):
    """A stream request answered with another status than 200."""

    def __init__(self, status: int, body: str, headers: httpx.Headers | None = None) -> None:
        super().__init__(f"HTTP {status}: {body}")
        self.status = status
        self.body = body
        self.headers = headers if headers is not None else httpx.Headers()


class HttpClient:
    """Subscribes with ``GET /stream/<model>/<id>`` over a real socket, read by ``httpx-sse``.

    ``answer_within`` bounds the wait for a stream's response headers, for
    cases where a refusal must come at once. Use it as an async context
    manager, or close it with :meth:`aclose`: either closes its streams.
    """

    mode = "http"

    def __init__(self, base_url: str, *, answer_within: float | None = None) -> None:
        self.base_url = base_url
        self.http = http_client(base_url, streaming=True)
        self._answer_within = answer_within
        self._open: list[SSEReader] = []

    async def subscribe(
        self,
        ref: TaskRef,
        *,
        last_event_id: int | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> ClientStream:
        """A stream of ``ref``; :class:`HttpStatusError` if it is not answered 200."""
        sent = dict(headers or {})
        if last_event_id is not None:
            sent["last-event-id"] = str(last_event_id)
        stack = contextlib.AsyncExitStack()
        async with asyncio.timeout(self._answer_within):
            source = await stack.enter_async_context(
                aconnect_sse(self.http, "GET", ref.stream_path, headers=sent)
            )
            response = source.response
            if response.status_code != 200:
                body = (await response.aread()).decode(errors="replace")
                await stack.aclose()
                raise HttpStatusError(response.status_code, body, response.headers)
        reader = SSEReader(source, stack)
        self._open.append(reader)
        return ClientStream(ref, reader, reader.aclose)

    async def aclose(self) -> None:
        for reader in self._open:
            await reader.aclose()
        await self.http.aclose()

    async def __aenter__(self) -> HttpClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()


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
    "RawSubscription",
    "SSEReader",
    "format_trace",
    "http_client",
    "open_client",
    "raw_subscription",
    "request",
    "serve_asgi",
]
