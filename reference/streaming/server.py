"""The streaming server: the HTTP side (``web/``) on uvicorn, with a graceful drain.

:func:`serve` runs one coordinator's app (``web.make_app``) under uvicorn,
with the edge limits of ``protocol.py`` on every connection.

Shutdown: uvicorn's own SIGTERM/SIGINT handler would stop accepting and then
wait forever for open streams. :class:`StreamServer` first drains the
coordinator (tasks get their grace period, every stream gets a farewell event
and ends) and only then lets uvicorn exit. A second signal exits at once.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import math
import os
import signal
import socket
import sys
from collections.abc import Awaitable, Callable
from types import FrameType
from typing import TYPE_CHECKING, Any, NoReturn

import uvicorn

from .coordinator import Coordinator
from .ops.logs import RedactTokens
from .ops.metrics import Metrics
from .protocol import EdgeLimits
from .web import make_app

if TYPE_CHECKING:
    from .tasks.pickup import Pickup

__all__ = [
    "StreamServer",
    "leftover_seconds",
    "loop_factory",
    "make_app",
    "run_then_close",
    "serve",
]

logger = logging.getLogger(__name__)

#: Seconds the tasks a second signal leaves behind get to stop (and record
#: how their runs ended) before the process exits without them.
FORCED_LEFTOVERS = 0.5


def _listed(setting: str | list[str] | None) -> list[str]:
    if setting is None:
        return []
    return [setting] if isinstance(setting, str) else list(setting)


class StreamServer(uvicorn.Server):
    """uvicorn, told to drain the coordinator before it stops accepting connections."""

    def __init__(self, config: uvicorn.Config, coordinator: Coordinator, grace: float) -> None:
        super().__init__(config)
        self.coordinator = coordinator
        self.grace = grace
        self._loop: asyncio.AbstractEventLoop | None = None
        self._draining = False
        self._drain: asyncio.Task[None] | None = None
        self.pickup: Pickup | None = None

    async def startup(self, sockets: Any = None) -> None:
        self._loop = asyncio.get_running_loop()
        await self.coordinator.started()
        self.pickup = pickup_tasks(self.coordinator)
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
        metrics = Metrics.of(self.coordinator)
        metrics.shutdown_drains.inc()
        began = asyncio.get_running_loop().time()
        try:
            if self.pickup is not None:
                await self.pickup.stop()
            await self.coordinator.shutdown(self.grace)
            drained = asyncio.get_running_loop().time() - began
            metrics.drain_seconds.observe(drained)
            logger.info("drained in %.2fs", drained)
            # The ORM's connections belong to the one thread sync_to_async runs
            # it in; close them there, or they are only dropped at exit.
            await self.coordinator.close_connections()
            logger.info("database connections closed")
        finally:
            self.should_exit = True


def pickup_tasks(coordinator: Coordinator) -> Pickup | None:
    """Start the ``django.tasks`` calls enqueued anywhere, when ``streaming.tasks`` is installed.

    Imported only then: without the app, Django's Tasks framework (or its
    backport, before Django 6.0) need not be installed.
    """
    from django.apps import apps

    if not apps.is_installed("streaming.tasks"):
        return None
    from .tasks.pickup import start_pickup

    return start_pickup(coordinator)


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
    settings = coordinator.config
    if grace is None:
        grace = settings.shutdown_grace
    metrics = Metrics.of(coordinator)
    config = uvicorn.Config(
        make_app(coordinator),
        host=host,
        port=port,
        log_level=log_level,
        lifespan="off",
        # WebSocket is not served: the app refuses an upgrade with a 4xx.
        ws="none",
        # Once the coordinator has drained, whatever is left gets this long.
        timeout_graceful_shutdown=5,
    )
    edge = EdgeLimits(
        header_bytes=settings.header_bytes,
        header_timeout=settings.header_timeout,
        connections_per_client=settings.max_connections_per_client,
        retry_after=math.ceil(settings.retry_ms / 1000),
        on_refusal=lambda reason: metrics.refused.labels(reason=reason).inc(),
        # A proxy uvicorn trusts speaks for many clients: the app counts them.
        trusted_proxies=",".join(_listed(config.forwarded_allow_ips)),
    )
    config.http = edge.protocol()
    # uvicorn's access lines carry each request's query, where an EventSource
    # sends its task token; made after uvicorn.Config has set its loggers up.
    logging.getLogger("uvicorn.access").addFilter(RedactTokens())
    server = StreamServer(config, coordinator, grace)
    # uvicorn re-raises the signal it caught once it has stopped; ignoring it by
    # then makes a graceful shutdown exit with status 0 instead of dying of it.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)
    sockets = [sock] if sock is not None else None
    grace_left = coordinator.config.cancel_grace
    run_then_close(
        server.serve(sockets=sockets),
        loop_factory(config),
        leftovers=lambda: leftover_seconds(forced=server.force_exit, cancel_grace=grace_left),
    )


def exit_at_once(status: int = 0) -> NoReturn:
    """End the process now that :func:`serve` has returned, without the interpreter's teardown.

    By then the coordinator has drained, its database and Redis connections
    are closed and the loop is closed: nothing is left to finalize but
    Django's module graph. Measured from SIGTERM to exit for an idle server
    on 2 cores busy with six other processes: 0.63-0.83 s with that teardown,
    0.18-0.22 s without; under tox's parallel matrix it went past the one
    second SHUT-3 allows. A process manager waits for every one of them.
    Logging and stdio are flushed first; no atexit hook of ours needs running.
    """
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def leftover_seconds(*, forced: bool, cancel_grace: float) -> float:
    """Seconds the tasks left at exit get to stop: a task's cancel grace, unless forced.

    A second signal means now: cancelled runs get a moment to record how they
    ended, not a whole cancel grace spent on a task that ignores its cancel.
    """
    return min(cancel_grace, FORCED_LEFTOVERS) if forced else cancel_grace


def loop_factory(config: uvicorn.Config) -> Callable[[], asyncio.AbstractEventLoop]:
    """The event loop uvicorn would run (uvloop when installed)."""
    factory = getattr(config, "get_loop_factory", None)  # uvicorn 0.36 and later
    made: Callable[[], asyncio.AbstractEventLoop] | None = (
        factory() if factory is not None else None
    )
    if made is None:
        config.setup_event_loop()  # earlier releases install a policy instead
        return asyncio.new_event_loop
    return made


def run_then_close(
    main: Awaitable[None],
    new_loop: Callable[[], asyncio.AbstractEventLoop],
    *,
    leftovers: Callable[[], float],
) -> None:
    """Run ``main``, then give the tasks it left behind ``leftovers()`` seconds to stop.

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
            _, stubborn = loop.run_until_complete(asyncio.wait(left, timeout=leftovers()))
            if stubborn:
                names = ", ".join(sorted(task.get_name() for task in stubborn))
                logger.error(
                    "exiting without %d task(s) that ignore cancellation: %s", len(stubborn), names
                )
        loop.run_until_complete(loop.shutdown_asyncgens())
    finally:
        loop.close()
