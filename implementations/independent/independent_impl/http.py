"""The HTTP interface: a raw ASGI app for SSE streams, starts, cancels, retries and health.

Routes::

    GET  /health                        200 "OK", or 503 with the reason
    GET  /stream/<model>/<id>           an SSE stream (Last-Event-ID resumes)
    POST /tasks/<model>/<id>/start      202, 409 (not READY), 404, 503
    POST /tasks/<model>/<id>/cancel     200 {"cancelled": bool}, 404
    POST /tasks/<model>/<id>/retry      202, 409, 404, 503

Anything else is 404, or 405 for a known path with another method; a
malformed request is a 4xx, never a 5xx (HTTP-8, EDGE-21).

A stream's headers go out only once its client is registered (HTTP-4), with
``retry:`` before any event (EDGE-15). Two coroutines serve it, the shape of
Starlette's streaming response: this one writes, a listener task waits for
the disconnect and ends the subscription when it comes (HTTP-6, EDGE-16).
Every write has a deadline (EDGE-17). ASGI has no way to drop a connection
whose client stopped reading: closing it waits for the unsent data for ever.
So a stalled stream aborts the transport of the server's response cycle
when the server exposes one (uvicorn does, as ``send.__self__.transport``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from conformance.contract import FAREWELL_EVENT, RuntimeClosed, TaskRef, UnknownTask

from .coordinator import RETRYABLE, STARTABLE, Coordinator, parse_task_id
from .fanout import Subscription
from .settings import Settings
from .store import StorageUnavailable

__all__ = ["App"]

logger = logging.getLogger("independent_impl.http")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_ACTIONS = ("start", "cancel", "retry")
_MAX_BODY = 64 * 1024
_LAST_EVENT_ID = re.compile(r"[0-9]{1,30}")
_SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]
_ROUTES = (
    "this server answers GET /health, GET /stream/<model>/<id> and "
    "POST /tasks/<model>/<id>/start|cancel|retry"
)


#: The longest request head (request line and headers) served (SPEC HTTP-10).
MAX_HEADER_BYTES = 64 * 1024


class _Stalled(Exception):
    """A write to the client did not finish within the write deadline."""


def _same_origin(scope: Scope, headers: Any) -> None:
    """Refuse a command sent by a page of another site (SPEC OPS-3).

    A browser names the page's origin in ``Origin``; this server has no
    pages of its own and allows no other site, so a command may carry its
    own origin only, or none (a command-line client).
    """
    values = [value for name, value in headers if name.lower() == b"origin"]
    if not values:
        return
    host = next((value for name, value in headers if name.lower() == b"host"), b"")
    own = f"{scope.get('scheme', 'http')}://{host.decode('latin-1')}".lower()
    origin = values[0].decode("latin-1").rstrip("/").lower()
    if origin != own:
        raise _Refused(403, f"Commands from another site ({origin[:100]}) are refused.")


class _Refused(Exception):
    """A request answered with an error status and a reason."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class _Responder:
    """The server's ``send``, noting whether a response has started."""

    def __init__(self, send: Send) -> None:
        self.raw = send
        self.started = False

    async def __call__(self, message: Message) -> None:
        if message.get("type") == "http.response.start":
            self.started = True
        await self.raw(message)


class App:
    """The ASGI application of one coordinator."""

    def __init__(self, coordinator: Coordinator, settings: Settings) -> None:
        self._coordinator = coordinator
        self._settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope.get("type")
        if kind == "lifespan":
            await _lifespan(receive, send)
            return
        if kind != "http":  # a websocket: refuse it politely
            await receive()
            await send({"type": "websocket.close", "code": 1008})
            return
        tracked = _Responder(send)
        try:
            await self._route(scope, receive, tracked)
        except _Refused as refused:
            await _text(tracked, refused.status, refused.reason)
        except Exception:  # a bug: say so in the log, and answer if we still can
            logger.exception("Request %s %s failed", scope.get("method"), scope.get("path"))
            if not tracked.started:
                await _text(tracked, 500, "Internal error; see the server's log.")

    async def _route(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = str(scope.get("path", ""))
        method = str(scope.get("method", ""))
        headers = scope.get("headers", ())
        head = len(scope.get("raw_path") or b"") + len(scope.get("query_string") or b"")
        head += sum(len(name) + len(value) + 4 for name, value in headers)
        if head > MAX_HEADER_BYTES:  # a head that ended; h11 stops one that does not
            raise _Refused(431, f"The request head is over {MAX_HEADER_BYTES} bytes.")
        for name, value in headers:
            # A server without WebSocket support (ws="none") passes the
            # handshake on as a plain request: refuse it (SPEC HTTP-9).
            if name.lower() == b"upgrade" and b"websocket" in value.lower():
                raise _Refused(400, "WebSocket is not served here; streams are SSE.")
        parts = path.split("/")
        if path == "/health":
            _allow(method, "GET", path)
            await self._health(send)
        elif len(parts) == 4 and parts[:2] == ["", "stream"]:
            _allow(method, "GET", "/stream/<model>/<id>")
            await self._stream(scope, receive, send, parts[2], parts[3])
        elif len(parts) == 5 and parts[:2] == ["", "tasks"] and parts[4] in _ACTIONS:
            _allow(method, "POST", f"/tasks/<model>/<id>/{parts[4]}")
            _same_origin(scope, headers)
            await self._action(receive, send, parts[2], parts[3], parts[4])
        else:
            raise _Refused(404, f"Not found: {_ROUTES}.")

    async def _health(self, send: Send) -> None:
        reason = await self._coordinator.health()
        if reason is None:
            await _text(send, 200, "OK")
        else:
            await _text(send, 503, f"Unavailable: {reason}")

    def _ref(self, model: str, raw_id: str) -> TaskRef:
        if parse_task_id(model, raw_id) is None:
            raise _Refused(
                404,
                f"No task {model!r} {raw_id!r}: a model is letters, digits, '_' and '-', "
                "and an id is a plain decimal number.",
            )
        return TaskRef(model, raw_id)

    async def _action(
        self, receive: Receive, send: Send, model: str, raw_id: str, action: str
    ) -> None:
        coordinator = self._coordinator
        ref = self._ref(model, raw_id)
        try:
            if action == "cancel":
                cancelled = await coordinator.cancel(ref, await _reason(receive))
                if cancelled is None:
                    raise _Refused(404, f"No task {ref}.")
                await _json(send, 200, {"cancelled": cancelled})
                return
            allowed = STARTABLE if action == "start" else RETRYABLE
            result = await coordinator.begin(ref, allowed)
        except UnknownTask:
            raise _Refused(404, f"No task {ref}.") from None
        except RuntimeClosed:
            raise _Refused(503, "Unavailable: draining, the server is shutting down.") from None
        except StorageUnavailable as exc:
            raise _Refused(503, f"Unavailable: {exc}") from None
        if result is True:
            await _json(send, 202, {"started": True, "model": ref.model, "id": ref.id})
            return
        states = " or ".join(s.value for s in allowed)
        raise _Refused(409, f"Cannot {action} {ref}: it is {result}, and only {states} tasks can.")

    async def _stream(
        self, scope: Scope, receive: Receive, send: Send, model: str, raw_id: str
    ) -> None:
        if self._coordinator.closing:
            raise _Refused(503, "Unavailable: draining, the server is shutting down.")
        ref = self._ref(model, raw_id)
        try:
            sub = await self._coordinator.subscribe(ref, last_event_id=_last_event_id(scope))
        except UnknownTask:
            raise _Refused(404, f"No task {ref}.") from None
        except RuntimeClosed:
            raise _Refused(503, "Unavailable: draining, the server is shutting down.") from None
        except StorageUnavailable as exc:
            raise _Refused(503, f"Unavailable: {exc}") from None
        if sub.finished_empty:  # resumed at or past the end: stop reconnecting (EDGE-14)
            await sub.aclose()
            await send({"type": "http.response.start", "status": 204, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            return
        await self._pump(sub, receive, send, str(ref))

    async def _pump(self, sub: Subscription, receive: Receive, send: Send, label: str) -> None:
        pump = _Pump(sub, getattr(send, "raw", send), self._settings)
        listener = asyncio.create_task(
            _until_disconnect(receive, sub), name=f"independent:sse-listener:{label}"
        )
        try:
            await pump.run()
        except _Stalled:
            logger.info("Closing the stream of %s: its client stopped reading", label)
            _abort(send)
            await asyncio.wait({listener}, timeout=1.0)
        finally:
            sub.close_now()
            listener.cancel()
            await asyncio.gather(listener, return_exceptions=True)


class _Pump:
    """Writes one subscription to one SSE response.

    One timer per stream, every second, does what a timeout around every
    wait and every write would (those cost as much as the writes): it sends
    a keep-alive on a stream idle for ``keepalive``, and stops a write that
    has stalled for ``write_deadline`` by cancelling the pump (EDGE-17). A
    write whose transport buffer shrank since the last tick is slow, not
    stalled: its deadline starts again.
    """

    def __init__(self, sub: Subscription, send: Send, settings: Settings) -> None:
        self._sub = sub
        self._send = send
        self._settings = settings
        self._tick_every = min(1.0, settings.keepalive / 4, settings.write_deadline / 4)
        self._loop = asyncio.get_running_loop()
        self._last_write = self._loop.time()
        self._writing_since: float | None = None
        self._unsent: int | None = None
        self._buffered: Callable[[], int] | None = getattr(
            _transport(send), "get_write_buffer_size", None
        )
        self._stalled = False
        self._task = asyncio.current_task()
        self._timer = self._loop.call_later(self._tick_every, self._tick)

    def _tick(self) -> None:
        now = self._loop.time()
        if self._writing_since is not None:
            unsent = self._buffered() if self._buffered is not None else None
            if unsent is not None and self._unsent is not None and unsent < self._unsent:
                self._writing_since = now  # the client is reading, slowly
            self._unsent = unsent
            if now - self._writing_since >= self._settings.write_deadline - self._tick_every:
                self._stalled = True
                if self._task is not None:
                    self._task.cancel()
                return
        elif now - self._last_write >= self._settings.keepalive - self._tick_every:
            self._sub.poke()
        self._timer = self._loop.call_later(self._tick_every, self._tick)

    async def _write(self, message: Message) -> None:
        self._writing_since = self._loop.time()
        self._unsent = None
        try:
            await self._send(message)
        finally:
            self._writing_since = None
            self._last_write = self._loop.time()

    async def run(self) -> None:
        settings, sub = self._settings, self._sub
        try:
            await self._write(
                {"type": "http.response.start", "status": 200, "headers": _SSE_HEADERS}
            )
            await self._write(_chunk(b"retry: %d\n\n" % settings.retry_ms))
            while True:
                await sub.wait()
                # A task that sends in a burst wakes its clients once per event;
                # two turns gather the next events into the same write.
                for _ in range(2):
                    if sub.ended or sub.pending >= 16:
                        break
                    await asyncio.sleep(0)
                batch = sub.drain()
                if batch is None:
                    break
                if not batch:
                    await self._write(_chunk(b": keep-alive\n\n"))
                    continue
                retry = settings.retry_ms
                data = b"".join(
                    e.frame(retry if e.event.type == FAREWELL_EVENT else None) for e in batch
                )
                await self._write(_chunk(data))
            await self._write({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError:
            if not self._stalled:
                raise
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            raise _Stalled from None
        finally:
            self._timer.cancel()


async def _until_disconnect(receive: Receive, sub: Subscription) -> None:
    while True:
        message = await receive()
        if message.get("type") == "http.disconnect":
            sub.close_now()
            return


def _transport(send: Send) -> Any:
    """The connection's transport behind a server's ``send``, if the server exposes it."""
    return getattr(getattr(send, "__self__", None), "transport", None)


def _abort(send: Send) -> None:
    """Drop the connection at once (RST), unsent data and all, if the server lets us."""
    abort = getattr(_transport(getattr(send, "raw", send)), "abort", None)
    if callable(abort):
        abort()


def _allow(method: str, allowed: str, what: str) -> None:
    if method != allowed:
        raise _Refused(405, f"Method {method!r} not allowed: {what} answers {allowed} only.")


def _last_event_id(scope: Scope) -> int | None:
    """The ``Last-Event-ID`` header as an id; a value that is not one is ignored."""
    for name, value in scope.get("headers", ()):
        if bytes(name).lower() == b"last-event-id":
            text = bytes(value).decode("latin-1").strip()
            return int(text) if _LAST_EVENT_ID.fullmatch(text) else None
    return None


async def _reason(receive: Receive) -> str | None:
    """The optional ``{"reason": "..."}`` body of a cancel."""
    body = bytearray()
    while True:
        message = await receive()
        if message.get("type") != "http.request":
            break
        body += message.get("body", b"")
        if len(body) > _MAX_BODY:
            raise _Refused(413, f"The body is too large: at most {_MAX_BODY} bytes.")
        if not message.get("more_body"):
            break
    if not body.strip():
        return None
    try:
        payload = json.loads(bytes(body))
    except (ValueError, RecursionError):
        payload = None
    if not isinstance(payload, dict):
        raise _Refused(400, 'The body must be a JSON object, such as {"reason": "..."}.')
    reason = payload.get("reason")
    if reason is not None and not isinstance(reason, str):
        raise _Refused(400, "The reason must be a string.")
    return reason


def _chunk(data: bytes) -> Message:
    return {"type": "http.response.body", "body": data, "more_body": True}


async def _respond(send: Send, status: int, body: bytes, content_type: bytes) -> None:
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _text(send: Send, status: int, text: str) -> None:
    body = (text + "\n").encode("utf-8", "backslashreplace")
    await _respond(send, status, body, b"text/plain; charset=utf-8")


async def _json(send: Send, status: int, payload: object) -> None:
    await _respond(send, status, json.dumps(payload).encode(), b"application/json")


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message.get("type") == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message.get("type") == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
