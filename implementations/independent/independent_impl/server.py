"""The server process: ``python -m independent_impl.server --host H --port P --grace G``.

It serves one coordinator's ASGI app with uvicorn, on the session's database
(``INDEPENDENT_DATABASE`` and the other settings come from the environment).

The process owns its shutdown (SHUT). uvicorn's own reaction to SIGTERM
stops accepting and then waits for every open connection to close, which an
SSE stream never does. So uvicorn's signal capture is switched off and, on
the first SIGTERM or SIGINT, this process drains: new streams, starts and
``/health`` answer 503, running tasks get the grace period, the rest are
recorded INTERRUPTED, every open stream gets the farewell and ends; only then
is uvicorn told to exit, and it finds no connection left to wait for. A
second signal exits at once, with status 0 (SHUT-11), after a best-effort
record of the runs still going.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Iterator

import uvicorn

from .coordinator import Coordinator
from .http import MAX_HEADER_BYTES
from .settings import Settings
from .store import Store

__all__ = ["main", "serve"]

logger = logging.getLogger("independent_impl.server")

_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class _Server(uvicorn.Server):
    """uvicorn without its signal handlers: the drain decides when it exits."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _exit_now() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


async def serve(host: str, port: int, grace: float, settings: Settings) -> None:
    """Serve until a signal, then drain and return (or exit the process, if told twice)."""
    Store.initialize(settings.database)
    runtime = await Coordinator.start(settings)
    config = uvicorn.Config(
        runtime.asgi_app(),
        host=host,
        port=port,
        lifespan="off",
        # h11 stops reading a head that has not ended by this size (SPEC
        # HTTP-10); uvicorn's httptools protocol reads any head to its end.
        http="h11",
        h11_max_incomplete_event_size=MAX_HEADER_BYTES,
        ws="none",
        log_config=None,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=2,
    )
    server = _Server(config)
    loop = asyncio.get_running_loop()
    drain: asyncio.Task[None] | None = None

    async def drain_then_exit() -> None:
        try:
            await runtime.shutdown(grace)
        finally:
            server.should_exit = True

    def on_signal(sig: signal.Signals) -> None:
        nonlocal drain
        if drain is None:
            logger.info("%s: draining, running tasks get %g s", sig.name, grace)
            drain = loop.create_task(drain_then_exit(), name="independent:drain")
            return
        logger.warning("%s again: exiting at once", sig.name)
        runtime.emergency_interrupt()
        _exit_now()

    for sig in _SIGNALS:
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        await server.serve()
        if drain is not None:
            await drain
        else:
            await runtime.shutdown(grace)
    finally:
        for sig in _SIGNALS:
            loop.remove_signal_handler(sig)
    others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    if others:  # a task that ignores cancellation would hang asyncio.run's cleanup for ever
        logger.warning("Exiting with %d task(s) that would not stop", len(others))
        _exit_now()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m independent_impl.server", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8888)
    parser.add_argument("--grace", type=float, default=10.0, help="seconds tasks get on SIGTERM")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    settings = Settings.from_env(os.environ)
    asyncio.run(serve(args.host, args.port, args.grace, settings))


if __name__ == "__main__":
    main()
