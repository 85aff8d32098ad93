"""Server processes as the cases use them, and what they answer and cost, read from outside.

Two workers of one deployment, a server draining with a run it holds, a
server killed under a run; whether ``/health`` answers as expected; the
resident memory and CPU time of the process, through ``psutil``.
"""

from __future__ import annotations

import re
import signal
from collections.abc import Awaitable, Callable

import httpx
import psutil

from . import behaviours
from .clients import HttpClient, request
from .contract import Behaviour, Event, Runtime, TaskRef, TaskStatus
from .processes import ServerProcess
from .waiting import eventually, status_is
from .wire import open_streams, stream_bodies

#: The ``spawn_server`` fixture: ``await spawn_server(grace=..., env=...)``.
Spawn = Callable[..., Awaitable[ServerProcess]]


async def two_workers(spawn_server: Spawn, *, grace: float = 5.0) -> tuple[ServerProcess, ...]:
    """Two server processes on the same storage: workers of one deployment."""
    return (await spawn_server(grace=grace), await spawn_server(grace=grace))


async def health_is(
    server: ServerProcess, status: int, *, timeout: float = 30.0
) -> httpx.Response | None:
    """``GET /health``'s response if it has ``status``, else None."""
    response = await request(server.url, "GET", "/health", timeout=timeout)
    return response if response.status_code == status else None


async def draining(server: ServerProcess) -> None:
    """Wait until ``server`` drains: ``/health`` answers 503."""
    await eventually(
        lambda: health_is(server, 503, timeout=2), what="/health to answer 503 while draining"
    )


async def draining_server(
    runtime: Runtime, spawn_server: Spawn, behaviour: Behaviour = behaviours.park
) -> ServerProcess:
    """A server sent SIGTERM while it runs a task of ``behaviour``, once it drains."""
    server = await spawn_server(grace=30)
    ref = await runtime.create_task(behaviour)
    await server.start_task(ref)
    await status_is(runtime, ref, TaskStatus.RUNNING)
    server.send_signal(signal.SIGTERM)
    await draining(server)
    return server


async def run_on_killed_server(
    runtime: Runtime, spawn_server: Spawn, ref: TaskRef, *, watch: int = 0
) -> list[Event]:
    """Start ``ref`` on a server process, then SIGKILL the server.

    With ``watch``, a client of that server first reads that many events;
    they are returned.
    """
    server = await spawn_server()
    async with HttpClient(server.url) as sse:
        stream = await sse.subscribe(ref)
        await server.start_task(ref)
        await status_is(runtime, ref, TaskStatus.RUNNING)
        seen = [await stream.next() for _ in range(watch)]
        server.send_signal(signal.SIGKILL)
        assert await server.wait_exit(10) == -signal.SIGKILL
    return seen


def rss(server: ServerProcess) -> int:
    """The server process's resident memory, in bytes."""
    return int(psutil.Process(server.pid).memory_info().rss)


def cpu_seconds(server: ServerProcess) -> float:
    """The CPU time the server process has used, user and system."""
    times = psutil.Process(server.pid).cpu_times()
    return float(times.user + times.system)


#: An ``id`` field's line, however the stream ends its lines: counted, whatever its value
#: (what an id must be is HTTP-2's to judge, not a measure of CPU time).
_ID_LINE = re.compile(rb"[\r\n]id:")


async def cpu_for(server: ServerProcess, runtime: Runtime, *, clients: int, events: int) -> float:
    """Server CPU seconds to fan ``events`` events out to ``clients`` bare clients."""
    ref = await runtime.create_task(behaviours.burst, {"count": events})
    readers = await open_streams(server.url, ref, clients)
    before = cpu_seconds(server)
    await server.start_task(ref)
    received = await stream_bodies(readers, timeout=120)
    spent = cpu_seconds(server) - before
    # Counted, not parsed: parsing them all would cost this process more than
    # the server spent sending them.
    assert all(len(_ID_LINE.findall(body)) == events + 1 for body in received)
    return spent


__all__ = [
    "Spawn",
    "cpu_for",
    "cpu_seconds",
    "draining",
    "draining_server",
    "health_is",
    "rss",
    "run_on_killed_server",
    "two_workers",
]
