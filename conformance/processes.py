"""Real server processes for the cases that need signals, crashes or two workers.

:class:`ServerProcess` starts an implementation's server command on a free
127.0.0.1 port, keeps everything it prints, waits until ``/health`` answers,
and sends it real signals. Whatever happens in the case, the process is gone
when the context exits (SIGKILL as the last resort) and its pipes are closed.

A free port is only free until someone binds it: on a busy machine another
test run's server can take it between our choice and our server's bind. So a
server counts as ready only when /health answers *and* the listening socket
belongs to its process (or a child of it, for servers that fork workers); a
server that lost its port to another process is started again on a new one.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import httpx
import psutil

from .contract import Implementation, TaskRef
from .waiting import WaitTimeout, eventually

#: Seconds a server gets to answer /health after it starts.
STARTUP_TIMEOUT = 30.0
#: Starts on a new port after another process took the one chosen.
PORT_ATTEMPTS = 3

#: Sets SIGINT and SIGTERM to their defaults and, when given, the soft limit
#: of open files, then becomes ``argv[2:]`` (same pid).
_DEFAULT_SIGNALS = (
    "import os, resource, signal, sys\n"
    "for sig in (signal.SIGINT, signal.SIGTERM):\n"
    "    signal.signal(sig, signal.SIG_DFL)\n"
    "if sys.argv[1]:\n"
    "    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]\n"
    "    resource.setrlimit(resource.RLIMIT_NOFILE, (int(sys.argv[1]), hard))\n"
    "os.execvp(sys.argv[2], sys.argv[2:])\n"
)


def with_default_signals(argv: Sequence[str], *, open_files: int | None = None) -> list[str]:
    """``argv``, started with SIGINT and SIGTERM at their default dispositions.

    A child inherits the signals its parent ignores (pytest under ``nohup``,
    some CI runners), and a program that ignores SIGINT never sees the Ctrl+C
    a case sends it. Resetting them in the child, before it becomes the
    program, needs no ``preexec_fn`` (unsafe in a process with threads).
    ``open_files`` sets its soft limit of open files, as a machine's default
    of 1,024 would, whatever this process's own limit is.
    """
    return [sys.executable, "-c", _DEFAULT_SIGNALS, str(open_files or ""), *argv]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def listens_on(pid: int, port: int) -> bool:
    """Whether process ``pid`` or one of its descendants listens on TCP ``port``."""
    try:
        root = psutil.Process(pid)
        family = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return False
    for process in family:
        try:
            sockets = process.net_connections(kind="tcp")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if any(s.status == psutil.CONN_LISTEN and s.laddr.port == port for s in sockets):
            return True
    return False


def _taken(port: int) -> bool:
    """Whether some process listens on 127.0.0.1:``port`` (it cannot be bound)."""
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


class PortTaken(Exception):
    """Another process bound the port chosen for a server before the server did."""


class ServerProcess:
    """One running server process of an implementation."""

    def __init__(
        self, impl: Implementation, *, grace: float, env: Mapping[str, str] | None = None
    ) -> None:
        self.impl = impl
        self.grace = grace
        self.extra_env = dict(env or {})
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.stdout = bytearray()
        self.stderr = bytearray()
        self._process: asyncio.subprocess.Process | None = None
        self._readers: list[asyncio.Task[None]] = []

    @property
    def pid(self) -> int:
        assert self._process is not None
        return self._process.pid

    @property
    def returncode(self) -> int | None:
        return self._process.returncode if self._process else None

    async def start(self) -> None:
        for attempt in range(1, PORT_ATTEMPTS + 1):
            try:
                return await self._start()
            except PortTaken:
                if attempt == PORT_ATTEMPTS:
                    raise AssertionError(
                        f"Another process took the server's port {PORT_ATTEMPTS} times."
                    ) from None
                await self.stop()
                self.port = free_port()
                self.url = f"http://127.0.0.1:{self.port}"
                self.stdout.clear()
                self.stderr.clear()

    async def _start(self) -> None:
        spec = self.impl.server_command("127.0.0.1", self.port, grace=self.grace)
        env = {**os.environ, **spec.env, "PYTHONUNBUFFERED": "1", **self.extra_env}
        self._process = await asyncio.create_subprocess_exec(
            *with_default_signals(spec.argv),
            cwd=spec.cwd,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        assert self._process.stdout is not None and self._process.stderr is not None
        self._readers = [
            asyncio.create_task(_drain(self._process.stdout, self.stdout), name="server-stdout"),
            asyncio.create_task(_drain(self._process.stderr, self.stderr), name="server-stderr"),
        ]
        try:
            await eventually(
                lambda: self._healthy(spec.ready_path),
                timeout=STARTUP_TIMEOUT,
                what=f"{self.impl.name}'s server to answer {spec.ready_path}",
            )
        except WaitTimeout:
            raise AssertionError(f"The server did not become ready.\n{self.output()}") from None

    async def _healthy(self, path: str) -> bool:
        if self.returncode is not None:
            if _taken(self.port):  # by someone else: ours has exited
                raise PortTaken(self.port)
            raise AssertionError(
                f"The server exited with {self.returncode} before it was ready.\n{self.output()}"
            )
        try:
            async with httpx.AsyncClient(base_url=self.url, timeout=2) as http:
                if (await http.get(path)).status_code != 200:
                    return False
        except httpx.TransportError:
            return False
        # An answer, but maybe from another process's server on this port.
        return listens_on(self.pid, self.port)

    async def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One HTTP request to the server, on a connection of its own."""
        async with httpx.AsyncClient(base_url=self.url, timeout=30) as http:
            return await http.request(method, path, **kwargs)

    async def start_task(self, ref: TaskRef) -> None:
        """Start ``ref`` on this server (``POST .../start``); fail unless it answers 202."""
        response = await self.request("POST", f"/tasks/{ref.model}/{ref.id}/start")
        assert response.status_code == 202, (response.status_code, response.text)

    def send_signal(self, sig: signal.Signals) -> None:
        assert self._process is not None
        self._process.send_signal(sig)

    async def wait_exit(self, timeout: float) -> int:
        """The exit status; fails with the process's output if it has not exited in time."""
        assert self._process is not None
        try:
            async with asyncio.timeout(timeout):
                status = await self._process.wait()
        except TimeoutError:
            raise AssertionError(
                f"The server did not exit within {timeout:g}s.\n{self.output()}"
            ) from None
        await asyncio.gather(*self._readers)
        return status

    def output(self) -> str:
        return (
            f"--- stdout ---\n{self.stdout.decode(errors='replace')}"
            f"--- stderr ---\n{self.stderr.decode(errors='replace')}"
        )

    async def stop(self) -> None:
        """Make sure the process is gone and its pipes are read to the end."""
        if self._process is None:
            return
        if self._process.returncode is None:
            self._process.kill()
            await self._process.wait()
        await asyncio.gather(*self._readers, return_exceptions=True)


async def _drain(stream: asyncio.StreamReader, into: bytearray) -> None:
    while chunk := await stream.read(65536):
        into.extend(chunk)


@contextlib.asynccontextmanager
async def running_server(
    impl: Implementation, *, grace: float = 5.0, env: Mapping[str, str] | None = None
) -> AsyncIterator[ServerProcess]:
    """Start a server process; stop it (killing it if need be) on exit."""
    server = ServerProcess(impl, grace=grace, env=env)
    try:
        await server.start()
        yield server
    finally:
        await server.stop()


__all__ = [
    "STARTUP_TIMEOUT",
    "PortTaken",
    "ServerProcess",
    "free_port",
    "listens_on",
    "running_server",
    "with_default_signals",
]
