"""The streaming server: SSE streams on raw ASGI, asgineer for the rest, on uvicorn.

Routes::

    GET  /health                       200 "OK"; 503 with the reason (draining, database)
    GET  /stream/<Model>/<id>          Server-Sent Events of one task; Last-Event-ID
                                       resumes, and is answered 204 past the task's end
    POST /tasks/<Model>/<id>/start     start a READY task
    POST /tasks/<Model>/<id>/retry     run a FAILED/CANCELLED/TIMED_OUT/INTERRUPTED task again
    POST /tasks/<Model>/<id>/cancel    cancel it; JSON body {"reason": "..."} optional

Streams are the hot path, so they bypass the framework: ``sse.StreamWriter``
writes a subscriber's queued events in one ``send`` and ``sse.Writers``
keeps one timer for every stream's keep-alive and write deadline. Every
other route is an asgineer handler. No request reaches a task unless its id
is canonical decimal, and no bad request gets a 5xx: the answer is 400, 404,
405, 409 or 413 with a reason, or 503 while the database is unavailable.

Shutdown: uvicorn's own SIGTERM/SIGINT handler would stop accepting and then
wait forever for open streams. :class:`StreamServer` first drains the
coordinator (tasks get their grace period, every stream gets a farewell event
and ends) and only then lets uvicorn exit. A second signal exits at once.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import re
import signal
import socket
from collections.abc import Awaitable, Callable
from types import FrameType
from typing import Any

import asgineer
import uvicorn

from . import db, sse
from .coordinator import (
    Coordinator,
    CoordinatorClosed,
    NothingMissed,
    UnknownTask,
    resolve_model,
)
from .models import StreamTask

logger = logging.getLogger(__name__)

ASGIApp = Callable[[dict[str, Any], Any, Any], Awaitable[None]]
Response = tuple[int, dict[str, str], str] | None

_STREAM = re.compile(r"/stream/(?P<model>[^/]+)/(?P<pk>[^/]*)/?")
_COMMAND = re.compile(r"/tasks/(?P<model>[^/]+)/(?P<pk>[^/]*)/(?P<command>start|retry|cancel)/?")
#: A task id or event id: ASCII decimal, no sign, no leading zero, below 2**63.
_DECIMAL = re.compile(r"0|[1-9][0-9]{0,17}")
#: Bytes of a request body the server reads (a cancel's reason is short).
BODY_LIMIT = 64 * 1024
_TEXT = {"content-type": "text/plain; charset=utf-8"}
_JSON = {"content-type": "application/json"}
_DATABASE_DOWN = {**_TEXT, "retry-after": "1"}


def parse_pk(raw: str) -> int:
    if not _DECIMAL.fullmatch(raw):
        raise UnknownTask(f"Task id must be an integer in plain decimal digits, got {raw!r}."[:300])
    return int(raw)


def _text(status: int, body: str) -> Response:
    return status, _TEXT, body


def _json(status: int, body: dict[str, Any]) -> Response:
    return status, _JSON, json.dumps(body)


def make_app(coordinator: Coordinator) -> ASGIApp:
    """The ASGI app for one coordinator."""
    config = coordinator.config
    writers = sse.Writers(keepalive=config.keepalive, write_deadline=config.write_deadline)

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/stream/"):
            await stream(scope, receive, send)
        else:
            await routes(scope, receive, send)

    async def stream(scope: dict[str, Any], receive: Any, send: Any) -> None:
        outcome = await open_stream(scope)
        if isinstance(outcome, tuple):
            status, reason = outcome
            await _respond(send, status, reason)
            return
        await writers.serve(sse.StreamWriter(send, outcome), receive, config.retry_ms)

    async def open_stream(scope: dict[str, Any]) -> Any:
        """The subscriber of a stream request, or the (status, reason) that refuses it."""
        if scope["method"] != "GET":
            return 405, "Use GET to stream a task."
        match = _STREAM.fullmatch(scope["path"])
        if match is None:
            return 404, f"Not found: {scope['path']!r}"[:300]
        if not coordinator.accepting:
            return 503, "Server is shutting down; reconnect to another server."
        raw = _header(scope, b"last-event-id")
        if raw and not _DECIMAL.fullmatch(raw):
            return 400, f"Last-Event-ID must be an event id in decimal digits, got {raw!r}."[:300]
        try:
            return await coordinator.subscribe(
                resolve_model(match["model"]),
                parse_pk(match["pk"]),
                last_event_id=int(raw) if raw else None,
            )
        except UnknownTask as exc:
            return 404, str(exc)
        except NothingMissed:
            # No event follows: only a 204 stops a browser's EventSource from
            # reconnecting for ever (an empty 200 makes it try again).
            return 204, ""
        except db.DatabaseUnavailable as exc:
            return 503, f"database unavailable: {exc}"

    async def handler(request: asgineer.HttpRequest) -> Response:
        try:
            return await dispatch(request)
        except db.DatabaseUnavailable as exc:
            return 503, _DATABASE_DOWN, f"database unavailable: {exc}"

    async def dispatch(request: asgineer.HttpRequest) -> Response:
        path = request.path
        if path == "/health":
            if request.method not in ("GET", "HEAD"):
                return _text(405, "Use GET.")
            problem = await coordinator.health()
            return _text(200, "OK") if problem is None else _text(503, problem)
        if match := _COMMAND.fullmatch(path):
            if request.method != "POST":
                return _text(405, f"Use POST to {match['command']} a task.")
            try:
                model, pk = resolve_model(match["model"]), parse_pk(match["pk"])
            except UnknownTask as exc:
                return _text(404, str(exc))
            if match["command"] == "cancel":
                return await cancel(request, model, pk)
            return await start(model, pk, retry=match["command"] == "retry")
        return _text(404, f"Not found: {path!r}"[:300])

    async def start(model: type[StreamTask], pk: int, *, retry: bool) -> Response:
        name = model.__name__
        try:
            if retry:
                started = await coordinator.retry_task(model, pk)
            else:
                started = await coordinator.start_task(model, pk)
        except CoordinatorClosed as exc:
            return _text(503, str(exc))
        except UnknownTask as exc:
            return _text(404, str(exc))
        if started:
            return _json(202, {"started": True})
        status = await db.run(
            lambda: model._default_manager.filter(pk=pk).values_list("status", flat=True).afirst()
        )
        expected = "FAILED, CANCELLED, TIMED_OUT or INTERRUPTED" if retry else "READY"
        return _json(409, {"started": False, "reason": f"{name} {pk} is {status}, not {expected}."})

    async def cancel(request: asgineer.HttpRequest, model: type[StreamTask], pk: int) -> Response:
        try:
            body = await request.get_body(limit=BODY_LIMIT)
        except asgineer.DisconnectedError:
            raise
        except OSError:
            return _text(413, f"The body must be at most {BODY_LIMIT} bytes.")
        try:
            parsed = json.loads(body) if body.strip() else {}
        except (ValueError, RecursionError):
            return _text(400, 'Body must be JSON, for example {"reason": "..."}.')
        reason = parsed.get("reason") if isinstance(parsed, dict) else None
        if reason is not None and not isinstance(reason, str):
            return _text(400, "'reason' must be a string.")
        if not await db.run(lambda: model._default_manager.filter(pk=pk).aexists()):
            return _text(404, f"{model.__name__} {pk} does not exist.")
        return _json(200, {"cancelled": await coordinator.cancel_task(model, pk, reason)})

    routes = asgineer.to_asgi(handler)
    return app


def _header(scope: dict[str, Any], name: bytes) -> str:
    """A request header's value as text; bytes that are not ASCII make it invalid, not an error."""
    for key, value in scope["headers"]:
        if key.lower() == name:
            return value.decode("latin-1").strip()
    return ""


async def _respond(send: Any, status: int, reason: str) -> None:
    body = reason.encode()
    headers = [(b"content-type", b"text/plain; charset=utf-8")] if body else []
    if status == 503:
        headers.append((b"retry-after", b"1"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


class StreamServer(uvicorn.Server):
    """uvicorn, told to drain the coordinator before it stops accepting connections."""

    def __init__(self, config: uvicorn.Config, coordinator: Coordinator, grace: float) -> None:
        super().__init__(config)
        self.coordinator = coordinator
        self.grace = grace
        self._loop: asyncio.AbstractEventLoop | None = None
        self._draining = False
        self._drain: asyncio.Task[None] | None = None

    async def startup(self, sockets: Any = None) -> None:
        self._loop = asyncio.get_running_loop()
        await self.coordinator.started()
        await super().startup(sockets=sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Runs in the signal handler, between two bytecodes of the loop's thread:
        # only flags and call_soon_threadsafe here. The interrupted frame may be
        # a request's, in the middle of an ORM call: its context says so to
        # asgiref (which then refuses another ORM call, "would deadlock"), so
        # what runs from here gets a fresh context, not a copy of that one.
        name = signal.Signals(sig).name
        if self._loop is None:  # not serving yet: nothing to drain
            super().handle_exit(sig, frame)
        elif self._draining:
            logger.warning("second signal %s: exiting now", name)
            self.force_exit = True
            self._loop.call_soon_threadsafe(self.coordinator.abandon, context=contextvars.Context())
            super().handle_exit(sig, frame)
        else:
            logger.info("signal %s: draining for up to %gs", name, self.grace)
            self._draining = True
            self._loop.call_soon_threadsafe(self._begin_drain, context=contextvars.Context())

    def _begin_drain(self) -> None:
        self._drain = asyncio.create_task(self._drain_then_exit(), name="streaming:drain")

    async def _drain_then_exit(self) -> None:
        try:
            await self.coordinator.shutdown(self.grace)
            # The ORM's connections belong to the one thread sync_to_async runs
            # it in; close them there, or they are only dropped at exit.
            await self.coordinator.close_connections()
            logger.info("database connections closed")
        finally:
            self.should_exit = True


def serve(
    host: str,
    port: int,
    *,
    grace: float | None = None,
    log_level: str = "info",
    sock: socket.socket | None = None,
) -> None:
    """Run the streaming server until SIGTERM/SIGINT, then shut down gracefully.

    With ``sock``, accept on that listening socket (one a supervisor shares
    between workers) instead of binding ``host:port``.
    """
    coordinator = Coordinator()
    if grace is None:
        grace = coordinator.config.shutdown_grace
    config = uvicorn.Config(
        make_app(coordinator),
        host=host,
        port=port,
        log_level=log_level,
        lifespan="off",
        # Once the coordinator has drained, whatever is left gets this long.
        timeout_graceful_shutdown=5,
    )
    server = StreamServer(config, coordinator, grace)
    # uvicorn re-raises the signal it caught once it has stopped; ignoring it by
    # then makes a graceful shutdown exit with status 0 instead of dying of it.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)
    sockets = [sock] if sock is not None else None
    run_then_close(
        server.serve(sockets=sockets),
        loop_factory(config),
        leftovers=coordinator.config.cancel_grace,
    )


def loop_factory(config: uvicorn.Config) -> Callable[[], asyncio.AbstractEventLoop]:
    """The event loop uvicorn would run (uvloop when installed)."""
    factory = getattr(config, "get_loop_factory", None)  # uvicorn 0.36 and later
    made = factory() if factory is not None else None
    if made is None:
        config.setup_event_loop()  # earlier releases install a policy instead
        return asyncio.new_event_loop
    return made


def run_then_close(
    main: Awaitable[None], new_loop: Callable[[], asyncio.AbstractEventLoop], *, leftovers: float
) -> None:
    """Run ``main``, then give the tasks it left behind ``leftovers`` seconds to stop.

    ``asyncio.run`` would wait for ever for a task that swallows its
    cancellation, so a server with one could never exit, not even on a
    second signal. Tasks still running after that are abandoned, and said so.
    """
    loop = new_loop()
    try:
        loop.run_until_complete(main)
        left = [task for task in asyncio.all_tasks(loop) if not task.done()]
        for task in left:
            task.cancel()
        if left:
            _, stubborn = loop.run_until_complete(asyncio.wait(left, timeout=leftovers))
            if stubborn:
                names = ", ".join(sorted(task.get_name() for task in stubborn))
                logger.error(
                    "exiting without %d task(s) that ignore cancellation: %s", len(stubborn), names
                )
        loop.run_until_complete(loop.shutdown_asyncgens())
    finally:
        loop.close()
