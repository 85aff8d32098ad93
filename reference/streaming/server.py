"""The streaming server: an asgineer app on uvicorn that owns its shutdown.

Routes::

    GET  /health                       200 "OK"; 503 "draining" during shutdown
    GET  /stream/<Model>/<id>          Server-Sent Events of one task
    POST /tasks/<Model>/<id>/start     start a READY task
    POST /tasks/<Model>/<id>/cancel    cancel it; JSON body {"reason": "..."} optional

Each stream runs two things: a pump that writes queued events, and a watcher
that notices the client leaving (uvicorn's ``send`` silently does nothing
after a disconnect, so without the watcher a stream would outlive its client).
Whichever ends first ends the other.

Shutdown: uvicorn's own SIGTERM/SIGINT handler would stop accepting and then
wait forever for open streams. :class:`StreamServer` first drains the
coordinator (tasks get their grace period, every stream gets a farewell event
and ends) and only then lets uvicorn exit. A second signal exits at once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import signal
from collections.abc import Awaitable, Callable
from types import FrameType
from typing import Any

import asgineer
import uvicorn
from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import connections

from . import sse
from .bus import Subscriber
from .coordinator import Coordinator, CoordinatorClosed, UnknownTask, resolve_model

logger = logging.getLogger(__name__)

Response = tuple[int, dict[str, str], str] | None

_STREAM = re.compile(r"/stream/(?P<model>[^/]+)/(?P<pk>[^/]+)/?")
_COMMAND = re.compile(r"/tasks/(?P<model>[^/]+)/(?P<pk>[^/]+)/(?P<command>start|cancel)/?")
_TEXT = {"content-type": "text/plain; charset=utf-8"}
_JSON = {"content-type": "application/json"}


def _text(status: int, body: str) -> Response:
    return status, _TEXT, body


def _json(status: int, body: dict[str, Any]) -> Response:
    return status, _JSON, json.dumps(body)


def _parse_pk(raw: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise UnknownTask(f"Task id must be an integer, got {raw!r}.") from None


def make_app(coordinator: Coordinator) -> Callable[..., Awaitable[None]]:
    """The ASGI app for one coordinator."""
    keepalive = settings.STREAMING["KEEPALIVE"]

    async def handler(request: asgineer.HttpRequest) -> Response:
        path = request.path
        if path == "/health":
            if request.method not in ("GET", "HEAD"):
                return _text(405, "Use GET.")
            return _text(200, "OK") if coordinator.accepting else _text(503, "draining")
        if match := _STREAM.fullmatch(path):
            if request.method != "GET":
                return _text(405, "Use GET to stream a task.")
            return await _stream(request, match["model"], match["pk"])
        if match := _COMMAND.fullmatch(path):
            if request.method != "POST":
                return _text(405, f"Use POST to {match['command']} a task.")
            return await _command(request, match["model"], match["pk"], match["command"])
        return _text(404, f"Not found: {path}")

    async def _stream(request: asgineer.HttpRequest, model_name: str, raw_pk: str) -> Response:
        if not coordinator.accepting:
            return _text(503, "Server is shutting down; reconnect to another server.")
        raw_last_id = request.headers.get("last-event-id")
        try:
            last_event_id = int(raw_last_id) if raw_last_id else None
        except ValueError:
            return _text(400, f"Last-Event-ID must be an integer, got {raw_last_id!r}.")
        try:
            subscriber = await coordinator.subscribe(
                resolve_model(model_name), _parse_pk(raw_pk), last_event_id=last_event_id
            )
        except UnknownTask as exc:
            return _text(404, str(exc))
        try:
            await request.accept(200, sse.HEADERS)
            await _pump(request, subscriber)
        finally:
            subscriber.close()
        return None

    async def _pump(request: asgineer.HttpRequest, subscriber: Subscriber) -> None:
        watcher = asyncio.create_task(
            _close_on_disconnect(request, subscriber), name="streaming:disconnect-watcher"
        )
        try:
            while True:
                try:
                    message = await subscriber.get(timeout=keepalive)
                except StopAsyncIteration:
                    break
                await request.send(message.sse if message is not None else sse.KEEPALIVE)
        finally:
            if not watcher.done():
                # Waking it (not cancelling it) lets asgineer cancel its own helpers.
                subscriber.close()
                await request.wakeup()
            await watcher

    async def _command(
        request: asgineer.HttpRequest, model_name: str, raw_pk: str, command: str
    ) -> Response:
        try:
            model, pk = resolve_model(model_name), _parse_pk(raw_pk)
        except UnknownTask as exc:
            return _text(404, str(exc))
        if command == "start":
            try:
                started = await coordinator.start_task(model, pk)
            except CoordinatorClosed as exc:
                return _text(503, str(exc))
            except UnknownTask as exc:
                return _text(404, str(exc))
            if started:
                return _json(202, {"started": True})
            state = (
                await model._default_manager.filter(pk=pk).values_list("status", flat=True).afirst()
            )
            return _json(
                409, {"started": False, "reason": f"{model_name} {pk} is {state}, not READY."}
            )
        try:
            body = await request.get_json() if await request.get_body() else {}
        except (ValueError, UnicodeDecodeError):
            return _text(400, 'Body must be JSON, for example {"reason": "..."}.')
        reason = body.get("reason") if isinstance(body, dict) else None
        if reason is not None and not isinstance(reason, str):
            return _text(400, "'reason' must be a string.")
        if not await model._default_manager.filter(pk=pk).aexists():
            return _text(404, f"{model_name} {pk} does not exist.")
        return _json(200, {"cancelled": await coordinator.cancel_task(model, pk, reason)})

    return asgineer.to_asgi(handler)  # type: ignore[no-any-return]


async def _close_on_disconnect(request: asgineer.HttpRequest, subscriber: Subscriber) -> None:
    """Return when the client leaves (closing its subscriber) or the stream ends."""
    try:
        while not subscriber.closed:
            await request.sleep_while_connected(3600)
    except asgineer.DisconnectedError:
        subscriber.close()


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
        await super().startup(sockets=sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Runs in the signal handler, between two bytecodes of the loop's thread:
        # only flags and call_soon_threadsafe here.
        name = signal.Signals(sig).name
        if self._loop is None:  # not serving yet: nothing to drain
            super().handle_exit(sig, frame)
        elif self._draining:
            logger.warning("second signal %s: exiting now", name)
            self.force_exit = True
            self._loop.call_soon_threadsafe(self.coordinator.abandon)
            super().handle_exit(sig, frame)
        else:
            logger.info("signal %s: draining for up to %gs", name, self.grace)
            self._draining = True
            self._loop.call_soon_threadsafe(self._begin_drain)

    def _begin_drain(self) -> None:
        self._drain = asyncio.create_task(self._drain_then_exit(), name="streaming:drain")

    async def _drain_then_exit(self) -> None:
        try:
            await self.coordinator.shutdown(self.grace)
            # The ORM's connections belong to the one thread sync_to_async runs
            # it in; close them there, or they are only dropped at exit.
            await sync_to_async(connections.close_all, thread_sensitive=True)()
            logger.info("database connections closed")
        finally:
            self.should_exit = True


def serve(host: str, port: int, *, grace: float | None = None, log_level: str = "info") -> None:
    """Run the streaming server until SIGTERM/SIGINT, then shut down gracefully."""
    if grace is None:
        grace = settings.STREAMING["SHUTDOWN_GRACE"]
    coordinator = Coordinator()
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
    server.run()
