"""The server process: uvicorn serving the glue's HTTP interface, a procrastinate worker inside.

``python -m procrastinate_impl HOST PORT GRACE``, with the session's
``PROCRASTINATE_IMPL_DB`` and ``DJANGO_SETTINGS_MODULE``.

procrastinate documents its worker both as a process of its own and inside
an asyncio application (``App.run_worker_async``); here it runs in the ASGI
lifespan, on a queue of this process's own, so the jobs of the starts this
server is sent run in this process and die with it. A SIGKILL leaves them
``doing`` with a silent worker: procrastinate's ``get_stalled_jobs`` finds
them, and any live runtime or server ends or reruns them (``store.recover``).

The worker's connector is the one procrastinate's Django management command
gives its worker (``get_worker_connector()``), on an app synchronised with
the Django one (``with_connector``): the glue's defers keep going through
Django's connection, inside the transaction that marks the task RUNNING.

On SIGTERM or SIGINT the server drains (the runtime's shutdown: 503 for new
work, the grace period for its runs, the rest stopped and recorded
INTERRUPTED, the farewell on every stream), then stops the worker and
exits 0. A second signal exits at once, with 0: the process ends where it
is (``os._exit``), as a SIGKILL would end it, and the runs it still held
are found stalled and ended by the live runtimes and servers.
"""

from __future__ import annotations

import asyncio
import os
import sys
from types import FrameType
from typing import Any

import uvicorn

from .http import HttpApp, Receive, Scope, Send

SETTINGS_MODULE = "procrastinate_impl.settings"


class ServerApp:
    """The ASGI app: the lifespan owns the runtime and the worker; requests go to the HTTP glue."""

    def __init__(self, grace: float) -> None:
        self.grace = grace
        self.queue = f"server-{os.getpid()}"
        self.runtime: Any = None
        self.http: Any = None
        self.worker_app: Any = None
        self.worker: asyncio.Task[None] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.lifespan(receive, send)
        else:
            await self.http(scope, receive, send)

    async def lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await self.startup()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.drain()
                await self.stop_worker()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def startup(self) -> None:
        from django.conf import settings
        from procrastinate.contrib.django import app

        from . import adapter
        from .adapter import ProcrastinateRuntime
        from .session import server_dsn

        conninfo = server_dsn(settings.DATABASES["default"]["NAME"])
        self.runtime = await ProcrastinateRuntime.open(conninfo, self.queue, 1000, wait_taken=True)
        self.http = HttpApp(
            self.runtime,
            keepalive=adapter.KEEPALIVE,
            write_deadline=adapter.WRITE_DEADLINE,
            max_head=adapter.ProcrastinateImplementation.max_header_bytes,
        )
        # with_connector, not replace_connector: the Django app keeps its
        # connector, so defers stay in the caller's transaction.
        self.worker_app = app.with_connector(app.connector.get_worker_connector())
        await self.worker_app.open_async()
        self.worker = asyncio.create_task(
            self.worker_app.run_worker_async(
                queues=[self.queue],
                name=self.queue,
                install_signal_handlers=False,
                shutdown_graceful_timeout=adapter.CANCEL_GRACE,
            ),
            name="procrastinate worker",
        )

    async def drain(self) -> None:
        """The runtime's shutdown: idempotent, so the signal's drain and the lifespan's share it."""
        if self.runtime is not None:
            await self.runtime.shutdown(self.grace)

    async def stop_worker(self) -> None:
        """Cancel ``run_worker_async``: procrastinate's own graceful stop, then close its app."""
        if self.worker is not None:
            self.worker.cancel()
            await asyncio.gather(self.worker, return_exceptions=True)
        if self.worker_app is not None:
            await self.worker_app.close_async()


class Server(uvicorn.Server):
    """uvicorn, its first reaction to a signal replaced: drain first, then exit."""

    def __init__(self, config: uvicorn.Config, app: ServerApp) -> None:
        super().__init__(config)
        self.app = app
        self.draining: asyncio.Task[None] | None = None
        self.loop: asyncio.AbstractEventLoop | None = None

    async def serve(self, sockets: Any = None) -> None:
        self.loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Not recorded in uvicorn's captured signals: it would raise them
        # again once it stops, and the process must exit 0.
        if self.draining is not None or self.loop is None:
            # A second signal: at once, whatever a run that ignores its
            # cancellation holds (asyncio.run would wait for it).
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)
        self.loop.call_soon_threadsafe(self._drain)

    def _drain(self) -> None:
        async def drain_then_exit() -> None:
            try:
                await self.app.drain()
            finally:
                self.should_exit = True

        self.draining = asyncio.ensure_future(drain_then_exit())


def main(argv: list[str]) -> int:
    host, port, grace = argv[0], int(argv[1]), float(argv[2])
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", SETTINGS_MODULE)
    import django

    django.setup()
    from .adapter import HEADER_TIMEOUT, ProcrastinateImplementation

    app = ServerApp(grace)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        http="h11",  # the protocol with a limit on a request head (HTTP-10)
        h11_max_incomplete_event_size=ProcrastinateImplementation.max_header_bytes,
        timeout_keep_alive=int(HEADER_TIMEOUT),
        ws="none",
        lifespan="on",
        log_level="warning",
    )
    Server(config, app).run()
    return 0
