"""Real processes for the testing guide's flows: the server, the commands, the client.

Nothing here sleeps to synchronise. Every wait is for the thing itself (a
line on a process's output, the health endpoint answering, a row's status)
under a deadline, through the harness's processes (``conformance.processes``:
:class:`ServerProcess`, :class:`ChildProcess`), ``conformance.waiting.wait_until``
or a condition variable.

How a test knows a stream client is listening: the server registers a
client's subscriber before it sends the response headers, so a client is
registered once its response has begun. :class:`RelayProxy` sits between
``stream_client.py`` and the server and counts responses that have begun.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from conformance.contract import ServerSpec
from conformance.processes import ChildProcess, ServerProcess, with_default_signals
from conformance.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]

#: Deadline for one process to start, answer, or finish a short flow.
DEADLINE = 20.0


class RunserverStream:
    """``manage.py runserver_stream ...``: the server :class:`ServerProcess` starts."""

    name = "runserver_stream"

    def __init__(self, *extra: str) -> None:
        self.extra = extra

    def server_command(self, host: str, port: int, *, grace: float) -> ServerSpec:
        argv = [sys.executable, "manage.py", "runserver_stream", "--port", str(port)]
        return ServerSpec(argv=[*argv, "--grace", f"{grace:g}", *self.extra], cwd=str(ROOT))


def run(
    args: list[str], env: dict[str, str], timeout: float = DEADLINE
) -> subprocess.CompletedProcess[str]:
    """Run a short command (``manage.py ...`` or ``stream_client.py ...``) to its end."""
    return subprocess.run(
        with_default_signals([sys.executable, *args]),
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=timeout,
        check=False,
    )


def make_env(database: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STREAMING_", "DJANGO_"))}
    env.update(
        DATABASE_URL=f"sqlite:///{database}",
        DJANGO_SETTINGS_MODULE="streaming_project.settings",
        PYTHONUNBUFFERED="1",
        PYTHONIOENCODING="utf-8",
        # `python` in a command the guide prints is this interpreter.
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    )
    return env


# -- the relay -----------------------------------------------------------------


class RelayProxy:
    """A TCP relay to the server that counts responses that have begun.

    The server registers a stream's subscriber before it answers, so the
    count is the number of clients that are listening.
    """

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.05)
        self.port = int(self._listener.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self._cond = threading.Condition()
        self._answered = 0
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._stopping = threading.Event()
        self._acceptor = threading.Thread(target=self._accept, daemon=True)
        self._acceptor.start()

    def _accept(self) -> None:
        while not self._stopping.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            except OSError:
                client.close()
                continue
            with self._cond:
                self._sockets += [client, upstream]
            for src, dst, response in ((client, upstream, False), (upstream, client, True)):
                thread = threading.Thread(target=self._pump, args=(src, dst, response), daemon=True)
                self._threads.append(thread)
                thread.start()

    def _pump(self, src: socket.socket, dst: socket.socket, response: bool) -> None:
        counted = not response
        try:
            while data := src.recv(65536):
                dst.sendall(data)
                if not counted:
                    counted = True
                    with self._cond:
                        self._answered += 1
                        self._cond.notify_all()
        except OSError:
            pass
        finally:
            try:
                dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    def wait_for_listeners(self, count: int, timeout: float = DEADLINE) -> None:
        with self._cond:
            if not self._cond.wait_for(lambda: self._answered >= count, timeout):
                raise AssertionError(
                    f"{self._answered} of {count} clients got an answer within {timeout:g}s"
                )

    def close(self) -> None:
        self._stopping.set()
        self._acceptor.join(5)
        self._listener.close()
        with self._cond:
            sockets = list(self._sockets)
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for thread in self._threads:
            thread.join(5)
        for sock in sockets:
            sock.close()


# -- the database --------------------------------------------------------------


def task_status(database: Path, model: str, pk: int) -> str | None:
    """The stored status of one task, read straight from the SQLite file."""
    with closing(sqlite3.connect(database)) as connection:
        row = connection.execute(
            f"SELECT status FROM streaming_{model.lower()} WHERE id = ?", (pk,)
        ).fetchone()
    return row[0] if row else None


def task_count(database: Path, model: str) -> int:
    with closing(sqlite3.connect(database)) as connection:
        return int(
            connection.execute(f"SELECT COUNT(*) FROM streaming_{model.lower()}").fetchone()[0]
        )


# -- fixtures ------------------------------------------------------------------
# Test modules cannot import this file (tests/ is no package), so what they
# need comes as fixtures.


@pytest.fixture(scope="session")
def migrated_database(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A database `manage.py migrate` has set up once; tests get copies of it."""
    database = tmp_path_factory.mktemp("template") / "db.sqlite3"
    result = run(["manage.py", "migrate", "--verbosity", "0"], make_env(database), timeout=60)
    assert result.returncode == 0, result.stderr
    return database


@pytest.fixture
def database(tmp_path: Path, migrated_database: Path) -> Path:
    """This test's own migrated SQLite file."""
    target = tmp_path / "db.sqlite3"
    for path in migrated_database.parent.glob(f"{migrated_database.name}*"):
        shutil.copy(path, target.with_name(path.name))
    return target


@pytest.fixture
def env(database: Path) -> dict[str, str]:
    """The environment of every process in this test: its database, unbuffered output."""
    return make_env(database)


@pytest.fixture(name="make_env")
def make_env_fixture() -> Callable[[Path], dict[str, str]]:
    """Build the environment for processes that use the SQLite file at a given path."""
    return make_env


@pytest.fixture(name="wait_until")
def wait_until_fixture() -> Callable[..., Any]:
    """``wait_until(predicate, timeout, what)``: the harness's, for a condition under a deadline."""

    def wait(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
        return wait_until(predicate, timeout=timeout, what=what)

    return wait


@pytest.fixture(name="run")
def run_fixture(env: dict[str, str]) -> Callable[..., subprocess.CompletedProcess[str]]:
    """``run("manage.py", "create_task", ...)``: run a short command to its end."""

    def run_command(*args: str, env: dict[str, str] = env) -> subprocess.CompletedProcess[str]:
        return run(list(args), env)

    return run_command


@pytest.fixture
def status(database: Path) -> Callable[[str, int], str | None]:
    """``status("ExampleTask", 1)``: a task's stored status (None: no such row)."""
    return lambda model, pk: task_status(database, model, pk)


@pytest.fixture
def count(database: Path) -> Callable[[str], int]:
    """``count("ExampleTask")``: how many tasks of a kind are stored."""
    return lambda model: task_count(database, model)


@pytest.fixture
def spawn(env: dict[str, str]) -> Iterator[Callable[..., ChildProcess]]:
    """``spawn("stream_client.py", ...)``: a background process, killed at teardown."""
    started: list[ChildProcess] = []

    def start(*args: str, env: dict[str, str] = env) -> ChildProcess:
        proc = ChildProcess([sys.executable, *args], env=env, cwd=ROOT)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop_blocking(signal.SIGKILL)


@pytest.fixture
def start_server(env: dict[str, str]) -> Iterator[Callable[..., ServerProcess]]:
    """``start_server(*extra_args, env=..., open_files=...)``: a healthy server that stops cleanly.

    At teardown each server gets SIGTERM; it must exit 0 without having
    logged a traceback (unless started with ``logs_tracebacks=True``, for a
    case that makes it log one on purpose).
    """
    started: list[ServerProcess] = []
    may_log_tracebacks: set[int] = set()

    def start(
        *extra: str,
        env: dict[str, str] = env,
        logs_tracebacks: bool = False,
        open_files: int | None = None,
    ) -> ServerProcess:
        server = ServerProcess(
            RunserverStream(*extra), grace=2.0, base_env=env, open_files=open_files
        )
        started.append(server)
        if logs_tracebacks:
            may_log_tracebacks.add(id(server))
        server.start_blocking()  # on a new port if another process took its own
        return server

    yield start
    problems = []
    for server in started:
        returncode = server.stop_blocking(signal.SIGTERM)
        output = server.describe()
        if returncode != 0:
            problems.append(f"the server did not shut down cleanly\n{output}")
        elif "Traceback" in output and id(server) not in may_log_tracebacks:
            problems.append(f"the server logged an exception\n{output}")
    assert not problems, "\n\n".join(problems)


@pytest.fixture
def start_server_to_kill(env: dict[str, str]) -> Iterator[Callable[..., ServerProcess]]:
    """``start_server_to_kill(env=...)``: a server the test kills itself (SIGKILL at teardown)."""
    started: list[ServerProcess] = []

    def start(*extra: str, env: dict[str, str] = env) -> ServerProcess:
        server = ServerProcess(RunserverStream(*extra), grace=2.0, base_env=env)
        started.append(server)
        server.start_blocking()
        return server

    yield start
    for server in started:
        server.stop_blocking(signal.SIGKILL)


@pytest.fixture
def server(start_server: Callable[..., ServerProcess]) -> ServerProcess:
    """A running streaming server for this test, on its own database."""
    return start_server()


@pytest.fixture
def relay(server: ServerProcess) -> Iterator[RelayProxy]:
    """A relay to the server that tells when stream clients are registered."""
    proxy = RelayProxy(server.port)
    try:
        yield proxy
    finally:
        proxy.close()


# -- Redis -----------------------------------------------------------------------

#: The Redis the bus tests use; they skip without one, except under CI=true.
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture(scope="session")
def redis_url() -> str:
    """``REDIS_URL`` (default ``redis://127.0.0.1:6379/0``) if a Redis answers there."""
    import redis

    try:
        with redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2) as client:
            client.ping()
    except redis.RedisError as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"Redis at REDIS_URL={REDIS_URL} does not answer ({exc}); CI needs it.")
        pytest.skip(f"needs a Redis at REDIS_URL={REDIS_URL} ({exc})")
    return REDIS_URL


# -- pytest-django --------------------------------------------------------------


@pytest.fixture(scope="session")
def django_db_modify_db_settings(
    django_db_modify_db_settings_parallel_suffix: None, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Give SQLite's test database a file, not memory; keep pytest-django's xdist suffix.

    Under pytest-xdist each worker needs a test database of its own:
    pytest-django names them ``test_<name>_gw0`` and so on, through the
    fixture this one asks for first (overriding this fixture without it made
    every worker create the same PostgreSQL database).

    The coordinator reaches the database from the ORM's thread while a test
    runs in another; an in-memory database shared between threads locks whole
    tables, and those locks wait for no busy timeout. PostgreSQL keeps
    Django's usual ``test_<name>`` database.
    """
    from django.conf import settings

    database = settings.DATABASES["default"]
    if database["ENGINE"].endswith("sqlite3"):
        test_file = tmp_path_factory.mktemp("django-db") / "test.sqlite3"
        database.setdefault("TEST", {})["NAME"] = str(test_file)


@pytest.fixture(autouse=True)
def _orm_thread_connections_closed(request: pytest.FixtureRequest) -> Iterator[None]:
    """Close, after each database test, the connections its async ORM calls opened.

    ``sync_to_async`` runs ORM calls in one thread of asgiref's, which keeps
    its connections between tests; pytest-django closes only the main
    thread's. On PostgreSQL a connection left open there stops the test
    database from being dropped at the end of the session.
    """
    yield
    if request.node.get_closest_marker("django_db") is None:
        return
    from asgiref.sync import SyncToAsync
    from django.db import connections

    SyncToAsync.single_thread_executor.submit(connections.close_all).result(DEADLINE)


@pytest.fixture
def hold_orm_thread() -> Callable[[], contextlib.AbstractAsyncContextManager[None]]:
    """Keep the ORM's one thread busy, as a slow query would, for the ``async with`` block.

    Every async ORM call waits behind it: a way to make a database call slow
    without a slow database.
    """

    @contextlib.asynccontextmanager
    async def held() -> AsyncIterator[None]:
        from asgiref.sync import sync_to_async

        from conformance.waiting import eventually

        started, release = threading.Event(), threading.Event()

        def hold() -> None:
            started.set()
            release.wait(DEADLINE)

        busy = asyncio.ensure_future(sync_to_async(hold, thread_sensitive=True)())
        try:
            await eventually(started.is_set, what="the ORM's thread to be held")
            yield
        finally:
            release.set()
            await busy

    return held


@pytest_asyncio.fixture
async def coordinator() -> AsyncIterator[Any]:
    """A coordinator in this process whose cancelled tasks get a second; shut down after."""
    from streaming.coordinator import Coordinator

    made = Coordinator(cancel_grace=1.0)
    try:
        yield made
    finally:
        await made.shutdown(1.0)
