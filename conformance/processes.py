"""Real server processes for the cases that need signals, crashes or two workers.

:class:`ServerProcess` starts a server command on a free 127.0.0.1 port,
keeps everything it prints, waits until ``/health`` answers, and sends it
real signals. Whatever happens in the case, the process is gone when the
context exits (SIGKILL as the last resort) and its pipes are closed.

One class serves the async suites and the blocking code of the reference's
tests and ``dev.py demo``: underneath is a :class:`subprocess.Popen` whose
output two threads collect, so each wait has a blocking twin:

=======================  ==========================
async (the suites)       blocking (threads, dev.py)
=======================  ==========================
``await start()``        ``start_blocking()``
``await wait_exit(t)``   ``wait(t)``
``await stop(sig, t)``   ``stop_blocking(sig, t)``
=======================  ==========================

:class:`ChildProcess` is one such process, of any command (a stream client,
a management command), started at once; a server starts one per port it
tries.

A free port is only free until someone binds it: on a busy machine another
test run's server can take it between our choice and our server's bind. So a
server counts as ready only when /health answers *and* the listening socket
belongs to its process (or a child of it, for servers that fork workers); a
server that lost its port to another process is started again on a new one.

Only the standard library is imported up front: dev.py imports this module
before anything is installed. httpx (the async health check, :meth:`request`)
and psutil (:func:`listens_on`) are imported where they are used.
"""

from __future__ import annotations

import contextlib
import functools
import http.client
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import IO, TYPE_CHECKING, Any, Literal, Protocol

from .contract import ServerSpec, TaskRef
from .waiting import WaitTimeout, eventually, wait_until

if TYPE_CHECKING:
    import httpx

#: Seconds a server gets to answer /health after it starts.
STARTUP_TIMEOUT = 30.0
#: Starts on a new port after another process took the one chosen.
PORT_ATTEMPTS = 3
#: Seconds a wait on a child process (a line of its output, its exit) allows unless told.
DEADLINE = 20.0

#: A child process's output stream.
Stream = Literal["stdout", "stderr"]

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
    """A TCP port of 127.0.0.1 that nothing listened on a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def listens_on(pid: int, port: int) -> bool:
    """Whether process ``pid`` or one of its descendants listens on TCP ``port``."""
    import psutil  # not up front: dev.py imports this module without it

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


def _output(stdout: bytes, stderr: bytes) -> str:
    return (
        f"--- stdout ---\n{stdout.decode(errors='replace')}"
        f"--- stderr ---\n{stderr.decode(errors='replace')}"
    )


class PortTaken(Exception):
    """Another process bound the port chosen for a server before the server did."""


class ChildProcess:
    """A child process, started at once; two threads collect its output line by line.

    It starts with SIGINT and SIGTERM at their defaults
    (:func:`with_default_signals`). ``echo`` also copies each line to this
    process's own stdout or stderr as it comes.
    """

    def __init__(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        open_files: int | None = None,
        echo: bool = False,
    ) -> None:
        self.argv = list(argv)
        self._echo = echo
        self._changed = threading.Condition()
        self._output: dict[Stream, bytearray] = {"stdout": bytearray(), "stderr": bytearray()}
        self._lines: dict[Stream, list[str]] = {"stdout": [], "stderr": []}
        self._ended: set[Stream] = set()
        self._popen = subprocess.Popen(
            with_default_signals(self.argv, open_files=open_files),
            cwd=cwd,
            env=None if env is None else dict(env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        pipes: dict[Stream, IO[bytes] | None] = {
            "stdout": self._popen.stdout,
            "stderr": self._popen.stderr,
        }
        self._readers = [
            threading.Thread(target=self._read, args=(name, pipe), daemon=True)
            for name, pipe in pipes.items()
        ]
        for reader in self._readers:
            reader.start()

    def _read(self, name: Stream, pipe: IO[bytes]) -> None:
        echo = getattr(sys, name) if self._echo else None
        # Closed here, at its end: a process this one started may hold it open
        # after this one exits, and a pipe closed under a blocked read hangs.
        with pipe:
            for raw in pipe:
                line = raw.decode(errors="replace")
                with self._changed:
                    self._output[name] += raw
                    self._lines[name].append(line.removesuffix("\n").removesuffix("\r"))
                    self._changed.notify_all()
                if echo is not None:
                    echo.write(line)
                    echo.flush()
        with self._changed:
            self._ended.add(name)
            self._changed.notify_all()

    def __repr__(self) -> str:
        code = self._popen.poll()
        state = "running" if code is None else f"exited with {code}"
        return f"<{type(self).__name__} {self.pid} {' '.join(self.argv)}: {state}>"

    @property
    def pid(self) -> int:
        return self._popen.pid

    @property
    def returncode(self) -> int | None:
        """The exit status; None while the process runs."""
        return self._popen.poll()

    @property
    def stdout(self) -> bytes:
        """All it has written to stdout so far."""
        with self._changed:
            return bytes(self._output["stdout"])

    @property
    def stderr(self) -> bytes:
        """All it has written to stderr so far."""
        with self._changed:
            return bytes(self._output["stderr"])

    def lines(self, name: Stream = "stdout") -> list[str]:
        """The lines of ``name`` so far, without their line ends."""
        with self._changed:
            return list(self._lines[name])

    def text(self, name: Stream = "stdout") -> str:
        return "\n".join(self.lines(name))

    def output(self) -> str:
        """Both streams so far, for a failure's message."""
        return _output(self.stdout, self.stderr)

    def describe(self) -> str:
        """The process, its state and its output, for a failure's message."""
        return f"{self!r}\n{self.output()}"

    def wait_for_line(self, line: str, timeout: float = DEADLINE, name: Stream = "stdout") -> int:
        """Wait until ``line`` is a whole line of ``name``; return its index."""
        with self._changed:
            self._changed.wait_for(
                lambda: line in self._lines[name] or name in self._ended, timeout
            )
            if line in self._lines[name]:
                return self._lines[name].index(line)
        raise AssertionError(f"{line!r} never appeared on {name}.\n{self.describe()}")

    def send_signal(self, sig: int) -> None:
        """Send ``sig``, unless the process has exited."""
        self._popen.send_signal(sig)

    def wait(self, timeout: float = DEADLINE) -> int:
        """Wait until the process exits and its output is read; return its exit status.

        Fails with its output if it still runs after ``timeout`` seconds.
        """
        try:
            code = self._popen.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(self._outlived(timeout)) from None
        self._join_readers(timeout)
        return code

    async def wait_exit(self, timeout: float = DEADLINE) -> int:
        """:meth:`wait`'s async twin: it polls, and leaves the event loop free."""
        if not await self._exits_within(timeout):
            raise AssertionError(self._outlived(timeout))
        await self._readers_end_within(timeout)
        return self._popen.wait()

    def stop_blocking(self, sig: int = signal.SIGKILL, timeout: float = 10.0) -> int:
        """Send ``sig`` if it runs, then SIGKILL if it outlives ``timeout``; its exit status.

        Its output is read to the end, or for ``timeout`` seconds if a
        process it started holds its pipes open.
        """
        if self._popen.poll() is None:
            self._popen.send_signal(sig)
            try:
                self._popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self._popen.kill()
                self._popen.wait(timeout)
        self._join_readers(timeout)
        return self._popen.wait()

    async def stop(self, sig: int = signal.SIGKILL, timeout: float = 10.0) -> int:
        """:meth:`stop_blocking`'s async twin."""
        if self._popen.poll() is None:
            self._popen.send_signal(sig)
            if not await self._exits_within(timeout):
                self._popen.kill()
                if not await self._exits_within(timeout):
                    raise AssertionError(self._outlived(timeout))
        await self._readers_end_within(timeout)
        return self._popen.wait()

    def _outlived(self, timeout: float) -> str:
        return f"{self!r} did not exit within {timeout:g}s.\n{self.output()}"

    async def _exits_within(self, timeout: float) -> bool:
        try:
            await eventually(lambda: self._popen.poll() is not None, timeout=timeout, what="exit")
        except WaitTimeout:
            return self._popen.poll() is not None
        return True

    def _join_readers(self, timeout: float) -> None:
        for reader in self._readers:
            reader.join(timeout)

    async def _readers_end_within(self, timeout: float) -> None:
        def ended() -> bool:
            with self._changed:
                return len(self._ended) == len(self._readers)

        # As _join_readers: the output so far is what a descendant left open.
        with contextlib.suppress(WaitTimeout):
            await eventually(ended, timeout=timeout, what="the end of the output")


class HasServerCommand(Protocol):
    """What :class:`ServerProcess` needs of an implementation: its name and server command."""

    name: str

    def server_command(self, host: str, port: int, *, grace: float) -> ServerSpec: ...


class ServerProcess:
    """One server process of an implementation, on a free 127.0.0.1 port.

    Its environment is this process's (or ``base_env``), then the command's,
    then ``env``. ``open_files`` and ``echo`` are :class:`ChildProcess`'s.
    ``check_listener=False`` takes an answer on the port as the server's
    without asking psutil whose socket it is: dev.py, which runs on the
    standard library alone, does.
    """

    def __init__(
        self,
        impl: HasServerCommand,
        *,
        grace: float,
        env: Mapping[str, str] | None = None,
        base_env: Mapping[str, str] | None = None,
        open_files: int | None = None,
        echo: bool = False,
        check_listener: bool = True,
    ) -> None:
        self.impl = impl
        self.grace = grace
        self.extra_env = dict(env or {})
        self.base_env = None if base_env is None else dict(base_env)
        self.open_files = open_files
        self.echo = echo
        self.check_listener = check_listener
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._process: ChildProcess | None = None

    def __repr__(self) -> str:
        if self._process is None:
            state = "not started"
        else:
            code = self._process.returncode
            state = f"pid {self.pid}" if code is None else f"exited with {code}"
        return f"<ServerProcess {self.impl.name} on {self.url}: {state}>"

    def _started(self, action: str) -> ChildProcess:
        if self._process is None:
            raise RuntimeError(
                f"Cannot {action}: the server has not been started; "
                "await start() or call start_blocking() first."
            )
        return self._process

    @property
    def pid(self) -> int:
        return self._started("read its pid").pid

    @property
    def returncode(self) -> int | None:
        """The exit status; None while it runs, or before it starts."""
        return self._process.returncode if self._process else None

    @property
    def stdout(self) -> bytes:
        """All it has written to stdout so far (on the port it kept)."""
        return self._process.stdout if self._process else b""

    @property
    def stderr(self) -> bytes:
        """All it has written to stderr so far (on the port it kept)."""
        return self._process.stderr if self._process else b""

    def lines(self, name: Stream = "stdout") -> list[str]:
        """The lines of ``name`` so far, without their line ends."""
        return self._process.lines(name) if self._process else []

    def text(self, name: Stream = "stdout") -> str:
        return "\n".join(self.lines(name))

    def output(self) -> str:
        """Both streams so far, for a failure's message."""
        return _output(self.stdout, self.stderr)

    def describe(self) -> str:
        """The server, its state and its output, for a failure's message."""
        return f"{self!r}\n{self.output()}"

    def wait_for_line(self, line: str, timeout: float = DEADLINE, name: Stream = "stdout") -> int:
        """Wait until ``line`` is a whole line of ``name``; return its index."""
        return self._started("wait for a line").wait_for_line(line, timeout, name)

    async def start(self) -> None:
        """Start the server; return once it answers, on a new port if its own was taken."""
        for attempt in range(1, PORT_ATTEMPTS + 1):
            path = self._spawn()
            try:
                await eventually(
                    functools.partial(self._ready, path),
                    timeout=STARTUP_TIMEOUT,
                    what=f"{self.impl.name}'s server to answer {path}",
                )
            except PortTaken:
                await self.stop()
                self._next_port(attempt)
            except WaitTimeout:
                raise AssertionError(f"The server did not become ready.\n{self.output()}") from None
            else:
                return

    def start_blocking(self) -> None:
        """:meth:`start`'s blocking twin."""
        for attempt in range(1, PORT_ATTEMPTS + 1):
            path = self._spawn()
            try:
                wait_until(
                    functools.partial(self._ready_blocking, path),
                    timeout=STARTUP_TIMEOUT,
                    what=f"{self.impl.name}'s server to answer {path}",
                )
            except PortTaken:
                self.stop_blocking()
                self._next_port(attempt)
            except WaitTimeout:
                raise AssertionError(f"The server did not become ready.\n{self.output()}") from None
            else:
                return

    def _spawn(self) -> str:
        """Start the server's process on ``self.port``; the path that answers once it is ready."""
        spec = self.impl.server_command("127.0.0.1", self.port, grace=self.grace)
        base = os.environ if self.base_env is None else self.base_env
        self._process = ChildProcess(
            spec.argv,
            env={**base, **spec.env, "PYTHONUNBUFFERED": "1", **self.extra_env},
            cwd=spec.cwd,
            open_files=self.open_files,
            echo=self.echo,
        )
        return spec.ready_path

    def _next_port(self, attempt: int) -> None:
        if attempt == PORT_ATTEMPTS:
            raise AssertionError(f"Another process took the server's port {PORT_ATTEMPTS} times.")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"

    async def _ready(self, path: str) -> bool:
        import httpx

        from .clients import http_client

        self._check_running()
        try:
            async with http_client(self.url, timeout=2) as http:
                if (await http.get(path)).status_code != 200:
                    return False
        except httpx.TransportError:
            return False
        return self._owns_port()

    def _ready_blocking(self, path: str) -> bool:
        self._check_running()
        # http.client, not urllib: no proxy from the environment stands between.
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
        try:
            connection.request("GET", path)
            if connection.getresponse().status != 200:
                return False
        except (OSError, http.client.HTTPException):
            return False
        finally:
            connection.close()
        return self._owns_port()

    def _check_running(self) -> None:
        """Fail if the process has exited; PortTaken if another process holds its port."""
        code = self.returncode
        if code is None:
            return
        if _taken(self.port):  # by someone else: ours has exited
            raise PortTaken(self.port)
        raise AssertionError(f"The server exited with {code} before it was ready.\n{self.output()}")

    def _owns_port(self) -> bool:
        # An answer, but maybe from another process's server on this port.
        return not self.check_listener or listens_on(self.pid, self.port)

    async def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One HTTP request to the server, on a connection of its own."""
        from .clients import request

        return await request(self.url, method, path, timeout=30, **kwargs)

    async def start_task(self, ref: TaskRef) -> None:
        """Start ``ref`` on this server (``POST .../start``); fail unless it answers 202."""
        response = await self.request("POST", f"/tasks/{ref.model}/{ref.id}/start")
        assert response.status_code == 202, (response.status_code, response.text)

    def send_signal(self, sig: int) -> None:
        """Send ``sig``, unless the process has exited."""
        self._started("send it a signal").send_signal(sig)

    def wait(self, timeout: float = DEADLINE) -> int:
        """The exit status; fails with the output if it has not exited in time."""
        return self._started("wait for its exit").wait(timeout)

    async def wait_exit(self, timeout: float = DEADLINE) -> int:
        """:meth:`wait`'s async twin."""
        return await self._started("wait for its exit").wait_exit(timeout)

    def stop_blocking(self, sig: int = signal.SIGKILL, timeout: float = 10.0) -> int | None:
        """Make sure the process is gone (``sig``, then SIGKILL after ``timeout``); its status.

        None if it was never started.
        """
        return self._process.stop_blocking(sig, timeout) if self._process else None

    async def stop(self, sig: int = signal.SIGKILL, timeout: float = 10.0) -> int | None:
        """:meth:`stop_blocking`'s async twin."""
        return await self._process.stop(sig, timeout) if self._process else None


@contextlib.asynccontextmanager
async def running_server(
    impl: HasServerCommand, *, grace: float = 5.0, env: Mapping[str, str] | None = None
) -> AsyncIterator[ServerProcess]:
    """Start a server process; stop it (killing it if need be) on exit."""
    server = ServerProcess(impl, grace=grace, env=env)
    try:
        await server.start()
        yield server
    finally:
        await server.stop()


__all__ = [
    "DEADLINE",
    "STARTUP_TIMEOUT",
    "ChildProcess",
    "HasServerCommand",
    "PortTaken",
    "ServerProcess",
    "free_port",
    "listens_on",
    "running_server",
    "with_default_signals",
]
