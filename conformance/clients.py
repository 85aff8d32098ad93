"""Clients the cases watch tasks through: in-process, or SSE over a real socket.

Both give a :class:`ClientStream`: an iterator of contract events that keeps
the trace of what it saw, so a failing case can show it. The HTTP client
talks to a real uvicorn server on 127.0.0.1 serving the implementation's ASGI
app (:func:`serve_asgi`); its SSE parser is this suite's own, written from
the WHATWG specification and sharing nothing with any implementation.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator, Sequence
from typing import Any, Protocol

import httpx
import uvicorn

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
    """Subscribes with ``GET /stream/<model>/<id>`` over a real socket."""

    mode = "http"

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        # No pool cap: a case may hold hundreds of streams open at once.
        self.http = httpx.AsyncClient(
            base_url=base_url,
            timeout=httpx.Timeout(10, read=None),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=None),
        )
        self._open: list[Any] = []

    async def subscribe(self, ref: TaskRef, *, last_event_id: int | None = None) -> ClientStream:
        headers = {"accept": "text/event-stream"}
        if last_event_id is not None:
            headers["last-event-id"] = str(last_event_id)
        request = self.http.build_request("GET", ref.stream_path, headers=headers)
        response = await self.http.send(request, stream=True)
        if response.status_code != 200:
            body = (await response.aread()).decode(errors="replace")
            await response.aclose()
            raise HttpStatusError(response.status_code, body)
        self._open.append(response)
        return ClientStream(ref, parse_sse(response.aiter_lines()), response.aclose)

    async def aclose(self) -> None:
        for response in self._open:
            await response.aclose()
        await self.http.aclose()


async def parse_sse(lines: AsyncIterator[str]) -> AsyncIterator[Event]:
    """Turn SSE lines into contract events (``_``-prefixed keys become metadata)."""
    fields: dict[str, str] = {}
    data: list[str] = []
    async for line in lines:
        if line == "":
            if data:
                yield _to_event(fields, "\n".join(data))
            fields, data = {}, []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            data.append(value)
        elif name in ("event", "id", "retry"):
            fields[name] = value


def _to_event(fields: dict[str, str], raw: str) -> Event:
    payload = json.loads(raw)
    if not isinstance(payload, dict):
        raise AssertionError(f"SSE data is not a JSON object: {raw!r}")
    meta = {k: payload.pop(k) for k in ("_task_id", "_model", "_timestamp") if k in payload}
    if "retry" in fields:
        payload.setdefault("_retry", int(fields["retry"]))
    return Event(
        id=int(fields["id"]) if "id" in fields else 0,
        type=fields.get("event", "message"),
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
    "format_trace",
    "open_client",
    "parse_sse",
    "serve_asgi",
]
