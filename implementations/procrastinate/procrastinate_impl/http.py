"""The glue's HTTP interface (SPEC's HTTP): plain ASGI over a runtime, for uvicorn.

procrastinate has no HTTP interface and no streams: this is the glue's, as
thin as SPEC allows. ``GET /health``; ``GET /stream/task/<id>``, Server-Sent
Events from the runtime's LISTEN/NOTIFY bus (``Last-Event-ID`` resumes from
the events table); ``POST /tasks/task/<id>/start``, ``/cancel``, ``/retry``.
Every refusal is plain text with a reason; nothing is answered 5xx but a
drain (503).

A stream's writes are watched: a client whose connection takes none of a
write for ``write_deadline`` is dropped (EDGE-17), through the transport
uvicorn puts behind ``send`` (``send.__self__.transport``), as the contract
allows. An idle stream gets a comment every ``keepalive`` seconds, so a
vanished client is noticed.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any

from conformance.contract import (
    FAREWELL_EVENT,
    Event,
    RuntimeClosed,
    TaskRef,
    UnknownTask,
)

from .bus import MODEL

if TYPE_CHECKING:
    from .adapter import ProcrastinateRuntime

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

#: The reconnect delay every stream suggests (EDGE-15), and the farewell's (SHUT-21).
RETRY_MS = 2000
#: The largest command body read; a larger one is refused (413).
MAX_BODY = 64 * 1024
ACTIONS = ("start", "cancel", "retry")


def task_pk(text: str) -> int | None:
    """A canonical task id (ASCII digits, no sign or leading zero, below 2^63), else None."""
    if not (text.isascii() and text.isdigit()) or (len(text) > 1 and text[0] == "0"):
        return None
    value = int(text)
    return value if value < 2**63 else None


class HttpApp:
    """SPEC's HTTP interface over one runtime."""

    def __init__(
        self,
        runtime: ProcrastinateRuntime,
        *,
        keepalive: float,
        write_deadline: float,
        max_head: int | None = None,
    ) -> None:
        self.runtime = runtime
        self.keepalive = keepalive
        self.write_deadline = write_deadline
        #: A request head longer than this is refused (431): uvicorn's h11 limit
        #: holds only for a head that arrives in several reads.
        self.max_head = max_head

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
        elif scope["type"] == "websocket":  # not served (HTTP-9): refused before accepting
            await send({"type": "websocket.close", "code": 1008, "reason": "No WebSocket here"})
        elif scope["type"] == "http":
            await self.http(scope, receive, send)

    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        method, path = scope["method"], scope["path"]
        if self.max_head is not None and head_size(scope) > self.max_head:
            return await reply(send, 431, f"The request head is over {self.max_head} bytes.")
        for name, value in scope["headers"]:
            if name == b"upgrade" and b"websocket" in value.lower():  # HTTP-9 (uvicorn --ws none)
                return await reply(send, 400, "No WebSocket here: streams are Server-Sent Events.")
        parts = path.split("/")[1:]
        if parts == ["health"]:
            if method not in ("GET", "HEAD"):
                return await reply(send, 405, "Use GET for /health.", allow="GET")
            if self.runtime.closed:
                return await reply(send, 503, "Draining: this server accepts no new work.")
            return await reply(send, 200, "OK")
        if len(parts) == 3 and parts[0] == "stream":
            route = "stream"
        elif len(parts) == 4 and parts[0] == "tasks" and parts[3] in ACTIONS:
            route = parts[3]
        else:
            return await reply(send, 404, f"Not found: {path!r} is not part of this interface.")
        model, id_text = parts[1], parts[2]
        pk = task_pk(id_text)
        if model != MODEL:
            return await reply(send, 404, f"No task model {model!r}: the one model is {MODEL!r}.")
        if pk is None:
            return await reply(send, 404, f"No task {id_text!r}: ids are canonical decimal.")
        ref = TaskRef(MODEL, str(pk))
        if route == "stream":
            if method != "GET":
                return await reply(send, 405, "Use GET to stream a task.", allow="GET")
            return await self.stream(ref, scope, receive, send)
        if method != "POST":
            return await reply(send, 405, f"Use POST to {route} a task.", allow="POST")
        if not same_origin(scope):  # a page on another site (OPS-3)
            return await reply(send, 403, "Commands from another site's pages are refused.")
        body = await read_body(receive)
        if body is None:
            return await reply(send, 413, f"A command's body is at most {MAX_BODY} bytes.")
        await self.command(route, ref, body, send)

    async def command(self, action: str, ref: TaskRef, body: bytes, send: Send) -> None:
        runtime = self.runtime
        try:
            if action == "cancel":
                reason = None
                if body.strip():
                    try:
                        payload = json.loads(body)
                    except (ValueError, RecursionError):
                        return await reply(send, 400, "The body is not JSON.")
                    if isinstance(payload, dict) and isinstance(payload.get("reason"), str):
                        reason = payload["reason"]
                if not await runtime.exists(ref):
                    return await reply(send, 404, f"No task {ref}.")
                cancelled = await runtime.cancel_task(ref, reason)
                answer = {"cancelled": cancelled}
                if not cancelled:
                    answer["reason"] = "The task is not READY or RUNNING (or a stop was asked)."
                return await reply_json(send, 200, answer)
            if runtime.closed:
                return await reply(send, 503, "Draining: this server starts nothing new.")
            if action == "start":
                if await runtime.start_task(ref):
                    return await reply_json(send, 202, {"started": True})
                state = await runtime.get_state(ref)
                return await reply(send, 409, f"{ref} is {state.status}, not READY.")
            if await runtime.retry_task(ref):
                return await reply_json(send, 202, {"retried": True})
            state = await runtime.get_state(ref)
            return await reply(
                send, 409, f"{ref} is {state.status}: only a run that did not succeed is retried."
            )
        except UnknownTask:
            return await reply(send, 404, f"No task {ref}.")
        except RuntimeClosed:
            return await reply(send, 503, "Draining: this server starts nothing new.")

    async def stream(self, ref: TaskRef, scope: Scope, receive: Receive, send: Send) -> None:
        if self.runtime.closed:
            return await reply(send, 503, "Draining: this server opens no new stream.")
        last = None
        for name, value in scope["headers"]:
            if name == b"last-event-id":
                last = task_pk(value.decode("latin-1").strip())
        try:
            if last is not None and await self.runtime.resumed_past_end(ref, last):
                # Nothing will come after the terminal event: EventSource stops (EDGE-14).
                return await send_head(send, 204, [])
            client = await self.runtime.subscribe(ref, last_event_id=last)
        except UnknownTask:
            return await reply(send, 404, f"No task {ref}.")
        # Registered before the headers go (HTTP-4).
        writer = Writer(send, self.write_deadline)

        async def leave_when_gone() -> None:  # a client that leaves is unregistered (HTTP-6)
            while (await receive())["type"] != "http.disconnect":
                pass
            await client.aclose()

        watcher = asyncio.create_task(leave_when_gone(), name=f"procrastinate_impl sse {ref}")
        try:
            await send_head(
                send,
                200,
                [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")],
                more=True,
            )
            await writer.write(f"retry: {RETRY_MS}\n\n".encode())
            events = aiter(client)
            while True:
                try:
                    async with asyncio.timeout(self.keepalive):
                        event = await anext(events)
                except TimeoutError:
                    await writer.write(b": keep-alive\n\n")
                    continue
                except StopAsyncIteration:
                    break
                # What else is queued goes in the same write.
                await writer.write(b"".join(frame(e) for e in (event, *client.take_queued())))
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except (OSError, ConnectionError):
            pass  # the client is gone, or was dropped for not reading
        finally:
            await client.aclose()
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)


class Writer:
    """Writes a stream's frames; drops a connection that takes nothing of a write in time."""

    def __init__(self, send: Send, deadline: float) -> None:
        self.send = send
        self.deadline = deadline
        self.transport = getattr(getattr(send, "__self__", None), "transport", None)

    async def write(self, body: bytes) -> None:
        message = {"type": "http.response.body", "body": body, "more_body": True}
        sending = asyncio.ensure_future(self.send(message))
        loop = asyncio.get_running_loop()
        progress_at, buffered = loop.time(), None
        try:
            while True:
                done, _ = await asyncio.wait({sending}, timeout=self.deadline / 4)
                if done:
                    return sending.result()
                size = self._buffered()
                if size is None:
                    continue  # no transport to watch: the server's own flow control decides
                if buffered is None or size < buffered:
                    progress_at = loop.time()  # some of it reached the client
                buffered = size
                if loop.time() - progress_at >= self.deadline:
                    self.transport.abort()  # stalled: the client stopped reading (EDGE-17)
                    raise ConnectionError("The client took nothing for the write deadline.")
        finally:
            if not sending.done():
                sending.cancel()
                await asyncio.gather(sending, return_exceptions=True)

    def _buffered(self) -> int | None:
        size = getattr(self.transport, "get_write_buffer_size", None)
        return size() if size is not None else None


def same_origin(scope: Scope) -> bool:
    """No ``Origin`` (not a browser page), or one naming the host the request was sent to."""
    headers = dict(scope["headers"])
    origin = headers.get(b"origin")
    if origin is None:
        return True
    host = headers.get(b"host", b"")
    return bool(host) and origin.split(b"://", 1)[-1].rstrip(b"/").lower() == host.lower()


def head_size(scope: Scope) -> int:
    """About the bytes of the request's head: its request line and header lines."""
    line = len(scope["method"]) + len(scope.get("raw_path") or b"") + len(scope["query_string"])
    return line + 16 + sum(len(name) + len(value) + 4 for name, value in scope["headers"])


def frame(event: Event) -> bytes:
    meta = {"_task_id": event.task_id, "_model": event.model, "_timestamp": event.timestamp}
    data = json.dumps({**event.data, **meta}, default=str)
    lines = [f"event: {event.type}", f"data: {data}", f"id: {event.id}"]
    if event.type == FAREWELL_EVENT:  # a reconnect delay with the farewell (SHUT-21)
        lines.append(f"retry: {RETRY_MS}")
    return ("\n".join(lines) + "\n\n").encode()


async def read_body(receive: Receive) -> bytes | None:
    """The request's body, or None once it passes ``MAX_BODY``."""
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


async def send_head(
    send: Send, status: int, headers: list[tuple[bytes, bytes]], *, more: bool = False
) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})
    if not more:
        await send({"type": "http.response.body", "body": b""})


async def reply(send: Send, status: int, text: str, *, allow: str | None = None) -> None:
    headers = [(b"content-type", b"text/plain; charset=utf-8")]
    if allow:
        headers.append((b"allow", allow.encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": (text + "\n").encode()})


async def reply_json(send: Send, status: int, data: dict[str, Any]) -> None:
    headers = [(b"content-type", b"application/json")]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": json.dumps(data).encode()})


async def _lifespan(receive: Receive, send: Send) -> None:
    """Nothing to start or stop: the runtime is the caller's (the server's own lifespan wraps)."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
