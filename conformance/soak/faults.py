"""The faults a soak injects, and the parts it owns to inject them.

The soak never touches what it shares with others (a Redis or PostgreSQL
server other runs use): it starts a Redis of its own (:class:`PrivateRedis`)
and stops that one; it puts a TCP relay of its own (:class:`Relay`) between
the workers and the database, and between the clients and each worker, and
cuts or refuses through those. Sessions are ended by the implementation's own
``drop_database_connections``, on its own database only.

:func:`schedule` draws the faults from a seed and what the implementation
declares, before the run: the same seed replays the same schedule.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import shutil
import signal
import socket
from dataclasses import asdict, dataclass
from typing import Any

from ..contract import Capability
from ..processes import ChildProcess, free_port
from ..waiting import wait_until

__all__ = ["Fault", "PrivateRedis", "Relay", "available_faults", "schedule"]

#: Seconds a relay's connect to its upstream may take.
CONNECT_TIMEOUT = 5.0
#: Bytes a relay moves at once.
CHUNK = 65536


class Relay:
    """A TCP relay on 127.0.0.1 that the harness owns: it can cut every connection, or refuse.

    Its upstream may change (a restarted worker listens on a new port);
    connections already open stay with the old one until they end.
    """

    def __init__(self, name: str, upstream: tuple[str, int] | None = None) -> None:
        self.name = name
        self.upstream = upstream
        self.refusing = False
        self.port = 0
        self._server: asyncio.Server | None = None
        self._pairs: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._pumps: set[asyncio.Task[None]] = set()

    def __repr__(self) -> str:
        state = "refusing" if self.refusing else f"{len(self._pairs)} open"
        return f"<Relay {self.name} :{self.port} -> {self.upstream}: {state}>"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.refusing or self.upstream is None:
            _abort(writer)
            return
        try:
            up_reader, up_writer = await asyncio.wait_for(
                asyncio.open_connection(*self.upstream), CONNECT_TIMEOUT
            )
        except (OSError, TimeoutError):
            _abort(writer)
            return
        pair = (writer, up_writer)
        self._pairs.add(pair)
        pumps = [
            asyncio.create_task(self._pump(reader, up_writer), name=f"relay-{self.name}-up"),
            asyncio.create_task(self._pump(up_reader, writer), name=f"relay-{self.name}-down"),
        ]
        self._pumps.update(pumps)
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pump in pumps:
                pump.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
            self._pumps.difference_update(pumps)
            self._pairs.discard(pair)
            for end in pair:
                end.close()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, ConnectionError):
            while chunk := await reader.read(CHUNK):
                writer.write(chunk)
                await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()

    def cut(self) -> int:
        """Reset every open connection, both sides; how many there were."""
        pairs = list(self._pairs)
        for pair in pairs:
            for end in pair:
                _abort(end)
        return len(pairs)

    async def close(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for pump in list(self._pumps):
            pump.cancel()
        await asyncio.gather(*self._pumps, return_exceptions=True)


def _abort(writer: asyncio.StreamWriter) -> None:
    transport = writer.transport
    if not transport.is_closing():
        transport.abort()


class PrivateRedis:
    """A ``redis-server`` of the soak's own, on a free port, with nothing saved to disk.

    :meth:`stop` and :meth:`start` are the fault: the same port, empty again
    (as a Redis that lost its memory would be).
    """

    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("Cannot start a private Redis: no redis-server on PATH.")
        self.binary = binary
        self.port = free_port()
        self._process: ChildProcess | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start_blocking(self) -> None:
        argv = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1"]
        argv += ["--save", "", "--appendonly", "no", "--protected-mode", "no"]
        self._process = ChildProcess(argv)
        wait_until(self._answers, timeout=20, what=f"the private Redis on port {self.port}")

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    async def start(self) -> None:
        await asyncio.to_thread(self.start_blocking)

    async def stop(self) -> None:
        if self._process is not None:
            await self._process.stop(signal.SIGKILL)
            self._process = None

    def stop_blocking(self) -> None:
        if self._process is not None:
            self._process.stop_blocking(signal.SIGKILL)
            self._process = None


@dataclass(frozen=True)
class Fault:
    """One fault: ``kind`` at ``at`` seconds into the run, on ``target``, for ``hold`` seconds."""

    at: float
    kind: str
    target: int | None
    hold: float

    def as_record(self) -> dict[str, Any]:
        return asdict(self)


def available_faults(
    capabilities: frozenset[Capability], *, workers: int, redis: bool, postgres: bool
) -> list[str]:
    """The kinds of fault this run can inject, from what the implementation declares."""
    kinds = ["client-cut"]
    if Capability.PROCESS in capabilities and Capability.RECOVERY in capabilities:
        kinds.append("sigkill")
    if Capability.PROCESS in capabilities and Capability.SIGNALS in capabilities:
        kinds.append("sigterm")
    if redis and workers > 1:
        kinds.append("redis-stop")
    if Capability.FAULT_INJECTION in capabilities:
        kinds.append("db-away")
        if postgres:
            kinds.append("db-sessions")
    return kinds


#: How often each kind is drawn, relative to the others.
WEIGHTS = {
    "client-cut": 3,
    "sigkill": 3,
    "sigterm": 2,
    "redis-stop": 2,
    "db-away": 2,
    "db-sessions": 2,
}


def schedule(seed: int, duration: float, kinds: list[str], workers: int) -> list[Fault]:
    """The faults of a run, drawn from ``seed`` alone: the same seed, the same schedule.

    The first comes after a few seconds of work; then one every 4 to 10
    seconds, each held 1.5 to 4 seconds, so that some overlap. None starts in
    the last few seconds: every fault has ended before the run drains.
    """
    rng = random.Random(f"{seed}:faults")
    faults = []
    at = rng.uniform(4.0, 7.0)
    while at < duration - 6.0:
        kind = rng.choices(kinds, weights=[WEIGHTS[k] for k in kinds])[0]
        target = rng.randrange(workers) if kind in ("sigkill", "sigterm", "client-cut") else None
        faults.append(Fault(round(at, 2), kind, target, round(rng.uniform(1.5, 4.0), 2)))
        at += rng.uniform(4.0, 10.0)
    return faults
