"""The README's walkthroughs and the demo, run as a new user runs them (issue 25).

The commands come from README.md's own code blocks, so a walkthrough that
drifts from the code fails here. Each ``bash`` block's lines run one by one
through a real shell, from the repository root, with ``python`` this
interpreter; an output block right after a ``bash`` block shows what that
block's server or stream client prints (the first it starts), or else what
its last command prints. In an output block, a line ``...`` stands for any
lines, ``...`` within a line for any text, and timestamps and pids may
differ.

How the commands run: ``runserver_stream`` and ``stream_client.py`` keep
running in the background, as in their own terminals. After starting a
server the test waits until it answers ``/health``; after starting a stream
client, until the server has answered it (uvicorn logs the response once the
client is subscribed), as a person waits before typing the next command.
At the end every client must have ended with an event and the server must
exit 0 on Ctrl+C.

What differs from a person's terminal, and why: the three-terminal
walkthrough's database (``streaming.sqlite3`` in the current directory) is
a file of the test's own (``DATABASE_URL``), and the several-workers
walkthrough's PostgreSQL database and Redis keys get names of the test's
own, so the walkthrough never touches a user's data; both are removed at
the end. Port 8888 is the README's: the walkthroughs take turns on it.
"""

from __future__ import annotations

import contextlib
import fcntl
import http.client
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

import pytest

from conformance.processes import ChildProcess, free_port
from conformance.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
#: Seconds one command may take, or a wait for a server or a client.
DEADLINE = 30.0
#: The port the README's walkthroughs use.
PORT = 8888

TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(?:[.,]\d+)?(?:\+00:00)?")
PID = re.compile(r"\b(pid|process \[|kill -INT)\s*\d+")


# -- reading the README ----------------------------------------------------------------------------


@dataclass
class Step:
    """One command of a walkthrough, as written, and what the README shows it print."""

    line: str
    shows: list[str] | None = None

    @property
    def words(self) -> list[str]:
        """The command as the shell splits it, its comment dropped."""
        return shlex.split(self.line, comments=True)

    @property
    def background(self) -> bool:
        """Whether the README runs it with ``&``."""
        return self.words[-1] == "&"

    @property
    def command(self) -> str:
        """The command for ``bash -c``, without its comment and trailing ``&``."""
        words = self.words
        return shlex.join(words[:-1] if self.background else words)

    @property
    def is_server(self) -> bool:
        return self.words[:3] == ["python", "manage.py", "runserver_stream"]

    @property
    def is_client(self) -> bool:
        return self.words[:2] == ["python", "stream_client.py"]


def section(heading: str, text: str | None = None) -> str:
    """The README's text under ``heading`` (a whole heading line), up to the next heading."""
    lines = (README.read_text(encoding="utf-8") if text is None else text).splitlines()
    if heading not in lines:
        raise AssertionError(f"README.md has no heading {heading!r}")
    start = end = lines.index(heading) + 1
    fenced = False  # a "# comment" in a code block is no heading
    while end < len(lines) and (fenced or not re.match(r"#+ ", lines[end])):
        fenced ^= lines[end].startswith("```")
        end += 1
    return "\n".join(lines[start:end])


def blocks(text: str) -> list[tuple[str, list[str], bool]]:
    """The fenced blocks of ``text``: (info string, lines, whether it follows the previous one)."""
    found: list[tuple[str, list[str], bool]] = []
    lines = text.splitlines()
    index, last_end = 0, -2
    while index < len(lines):
        line = lines[index]
        if line.startswith("```"):
            info = line.removeprefix("```").strip()
            close = lines.index("```", index + 1)
            found.append((info, lines[index + 1 : close], index == last_end + 1))
            index = last_end = close
        index += 1
    return found


def walkthrough(heading: str) -> list[Step]:
    """The commands under ``heading``, in order, each with the output block that shows it."""
    steps: list[Step] = []
    commands: list[Step] = []
    for info, lines, adjacent in blocks(section(heading)):
        if info == "bash":
            commands = [Step(line) for line in lines if line.strip() and not line.startswith("#")]
            steps += commands
        elif info in ("", "text") and adjacent and commands:
            shown = next((s for s in commands if s.is_server or s.is_client), commands[-1])
            shown.shows = lines
            commands = []
        else:
            commands = []
    if not steps:
        raise AssertionError(f"README.md shows no commands under {heading!r}")
    return steps


# -- comparing output ------------------------------------------------------------------------------


def normalised(line: str) -> str:
    return PID.sub(r"\1 <n>", TIMESTAMP.sub("<ts>", line.rstrip()))


def line_pattern(expected: str) -> re.Pattern[str]:
    parts = [re.escape(normalised(part)) for part in expected.split("...")]
    return re.compile(".*".join(parts))


def matches(expected: list[str], actual: list[str], *, among_others: bool = False) -> bool:
    """Whether ``actual`` is what ``expected`` shows; ``among_others``: with any lines between."""
    if among_others:
        expected = ["...", *(e for line in expected for e in (line, "...")), "..."]
    actual = [normalised(line) for line in actual]
    # ends[j]: the lines of ``actual`` the expected lines so far can end before.
    ends = {0}
    for line in expected:
        if line == "...":
            ends = set(range(min(ends), len(actual) + 1)) if ends else set()
            continue
        pattern = line_pattern(line)
        ends = {j + 1 for j in ends if j < len(actual) and pattern.fullmatch(actual[j])}
    return len(actual) in ends


def assert_shows(step: Step, output: str, *, among_others: bool = False) -> None:
    assert step.shows is not None
    lines = output.rstrip("\n").split("\n") if output.strip() else []
    shown = list(step.shows)
    while shown and not shown[-1].strip():
        shown.pop()
    assert matches(shown, lines, among_others=among_others), (
        f"{step.line!r} printed what README.md does not show.\n"
        f"--- README.md shows:\n" + "\n".join(shown) + "\n--- it printed:\n" + output
    )


# -- running a walkthrough -------------------------------------------------------------------------


def in_shell(command: str) -> list[str]:
    """``command`` run by bash, both its streams in one, as in a terminal."""
    return ["bash", "-c", f"exec {command} 2>&1"]


def health(port: int) -> bool:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        connection.request("GET", "/health")
        return connection.getresponse().status == 200
    except (OSError, http.client.HTTPException):
        return False
    finally:
        connection.close()


@dataclass
class Walk:
    """A walkthrough's commands run in order; its background processes, stopped at the end."""

    env: dict[str, str]
    #: What the test changes in a command (its words), and why: see the module's docstring.
    rewrite: Callable[[list[str]], list[str]] = lambda words: words
    servers: list[ChildProcess] = field(default_factory=list)
    clients: list[tuple[Step, ChildProcess]] = field(default_factory=list)

    def run(self, steps: list[Step]) -> None:
        for step in steps:
            words = step.words[:-1] if step.background else step.words
            step = Step(shlex.join(self.rewrite(words)) + " &" * step.background, step.shows)
            words = step.words
            if words[0] == "export":
                name, _, value = words[1].partition("=")
                self.env[name] = value
            elif step.is_server:
                self.start_server(step)
            elif step.is_client:
                self.start_client(step)
            else:
                self.run_to_end(step)
        for step, client in self.clients:
            assert client.wait(DEADLINE) == 0, client.describe()
            assert "Stream ended with: " in client.text(), client.describe()
            if step.shows is not None:
                assert_shows(step, client.text())
        for server in self.servers:
            server.send_signal(signal.SIGINT)  # Ctrl+C
            assert server.wait(DEADLINE) == 0, server.describe()

    def start_server(self, step: Step) -> None:
        server = ChildProcess(in_shell(step.command), env=self.env, cwd=ROOT)
        self.servers.append(server)
        port = int(step.words[step.words.index("--port") + 1])
        wait_until(
            lambda: health(port) or server.returncode is not None,
            timeout=DEADLINE,
            what=f"the server to answer /health on port {port}",
        )
        assert server.returncode is None, server.describe()
        if step.shows is not None:
            assert_shows(step, server.text(), among_others=True)

    def start_client(self, step: Step) -> None:
        client = ChildProcess(in_shell(step.command), env=self.env, cwd=ROOT)
        self.clients.append((step, client))
        path = f"/stream/{step.words[2]}/{step.words[3]}"
        answered = f'"GET {path} HTTP/1.1" 200'
        opened = sum(1 for s, _ in self.clients if s.words[2:4] == step.words[2:4])

        def subscribed() -> bool:
            if client.returncode is not None:
                raise AssertionError(f"the client ended early.\n{client.describe()}")
            return sum(server.text().count(answered) for server in self.servers) >= opened

        wait_until(subscribed, timeout=DEADLINE, what=f"the server to answer {step.line!r}")

    def run_to_end(self, step: Step) -> None:
        done = subprocess.run(
            in_shell(step.command),
            cwd=ROOT,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            text=True,
            timeout=DEADLINE,
            check=False,
        )
        assert done.returncode == 0, f"{step.line!r} exited with {done.returncode}:\n{done.stdout}"
        if step.shows is not None:
            assert_shows(step, done.stdout)

    def stop(self) -> None:
        """Stop whatever still runs: Ctrl+C, then SIGKILL to it and anything it started."""
        import psutil

        for process in [*(c for _, c in self.clients), *self.servers]:
            if process.returncode is not None:
                continue
            children: list[psutil.Process] = []
            with contextlib.suppress(psutil.Error):
                children = psutil.Process(process.pid).children(recursive=True)
            process.stop_blocking(signal.SIGINT, timeout=DEADLINE)
            for child in children:
                with contextlib.suppress(psutil.Error):
                    child.kill()


@pytest.fixture
def walk(tmp_path: Path, make_env: Callable[[Path], dict[str, str]]) -> Iterator[Walk]:
    """A walk on its own SQLite file; whatever it started is stopped after the test."""
    made = Walk(make_env(tmp_path / "streaming.sqlite3"))
    try:
        yield made
    finally:
        made.stop()


def needed(what: str) -> NoReturn:
    """Skip for want of ``what``; under CI=true, fail: CI provides it."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{what}; CI provides it.")
    pytest.skip(what)


@pytest.fixture
def readme_port() -> Iterator[int]:
    """Port 8888, for this test alone: the walkthroughs take turns, and no one else may hold it."""
    lock_path = Path(tempfile.gettempdir()) / f"streaming-walkthrough-{PORT}.lock"
    with lock_path.open("a") as lock:

        def locked() -> bool:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            return True

        wait_until(locked, timeout=90, what=f"the other walkthrough to free port {PORT}")
        try:
            with socket.socket() as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    probe.bind(("127.0.0.1", PORT))
                except OSError as exc:
                    needed(f"port {PORT}, which the README's walkthroughs use, is taken ({exc})")
            yield PORT
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


# -- the walkthroughs ------------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_three_terminal_walkthrough_when_run_as_written_then_prints_what_the_readme_shows(
    walk: Walk, readme_port: int
) -> None:
    steps = walkthrough("## The walkthrough (three terminals)")
    assert sum(s.shows is not None for s in steps) >= 3, "the walkthrough shows no output"

    walk.run(steps)


@pytest.mark.timeout(120)
def test_tasks_walkthrough_when_run_as_written_then_a_task_enqueued_in_a_shell_streams(
    walk: Walk, readme_port: int
) -> None:
    steps = walkthrough("### Django's Tasks framework: `@task`, streamed and cancellable")
    assert any(s.is_client for s in steps) and any(s.is_server for s in steps)

    walk.run(steps)


#: The PostgreSQL server the several-workers walkthrough names.
POSTGRES = "postgres://postgres@127.0.0.1:5432/postgres"


@pytest.fixture
def own_database() -> Iterator[str]:
    """A database name of this test's own for the walkthrough's ``streaming``; dropped after."""
    import psycopg

    try:
        psycopg.connect(POSTGRES, connect_timeout=3).close()
    except psycopg.OperationalError as exc:
        needed(f"needs a database server (PostgreSQL at {POSTGRES}): {exc}".strip())
    if not any((Path(d) / "createdb").exists() for d in os.environ["PATH"].split(os.pathsep)):
        needed("needs PostgreSQL's createdb, which the walkthrough runs")
    name = f"walkthrough_{uuid.uuid4().hex[:12]}"
    try:
        yield name
    finally:
        with psycopg.connect(POSTGRES, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def own_redis_prefix(walk: Walk) -> Iterator[str]:
    """A Redis key prefix of this test's own; its keys are deleted after."""
    import redis

    url = "redis://127.0.0.1:6379/0"
    try:
        with redis.Redis.from_url(url, socket_connect_timeout=2) as client:
            client.ping()
    except redis.RedisError as exc:
        needed(f"needs a Redis at {url} ({exc})")
    prefix = f"walkthrough-{uuid.uuid4().hex[:12]}"
    walk.env["STREAMING_REDIS_PREFIX"] = prefix
    try:
        yield prefix
    finally:
        with redis.Redis.from_url(url) as client:
            for key in client.scan_iter(f"{prefix}:*"):
                client.delete(key)


@pytest.mark.timeout(120)
def test_several_workers_walkthrough_when_run_as_written_then_every_client_gets_every_event(
    walk: Walk, readme_port: int, own_database: str, own_redis_prefix: str
) -> None:
    steps = walkthrough("### Several workers")

    def on_own_database(words: list[str]) -> list[str]:
        if words[0] == "createdb":
            return [*words[:-1], own_database]
        if words[0] == "export" and words[1].startswith("DATABASE_URL="):
            return ["export", f"{words[1].rpartition('/')[0]}/{own_database}"]
        return words

    walk.rewrite = on_own_database
    walk.run(steps)

    assert len(walk.clients) >= 2
    events = [c.lines()[3:] for _, c in walk.clients]
    assert all(lines == events[0] for lines in events), [c.describe() for _, c in walk.clients]
    assert events[0][-3:-1] == ["Stream ended with: COMPLETE", "Total events received: 5"]


# -- the demo --------------------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_demo_when_run_then_prints_the_readme_transcript_and_logs_the_server_to_a_file(
    tmp_path: Path, make_env: Callable[[Path], dict[str, str]]
) -> None:
    transcript = next(
        lines for info, lines, _ in blocks(section("### The demo")) if info in ("", "text")
    )
    port = free_port()
    reports = tmp_path / "reports"
    env = make_env(tmp_path / "unused.sqlite3")
    del env["DATABASE_URL"]  # the demo picks its own
    code = (
        "import sys; from pathlib import Path; import dev; "
        "sys.exit(dev.demo(python=Path(sys.executable), port=int(sys.argv[1]), "
        "reports=Path(sys.argv[2])))"
    )

    done = subprocess.run(
        [sys.executable, "-c", code, str(port), str(reports)],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )

    assert (done.returncode, done.stderr) == (0, ""), done.stdout + done.stderr
    # The demo names its interpreter as typed at the repository root: relative
    # inside it (.venv/bin/python, or tox's .tox/<env>/bin/python).
    python = Path(sys.executable)
    typed = python.relative_to(ROOT).as_posix() if python.is_relative_to(ROOT) else str(python)
    printed = (
        done.stdout.replace(shlex.quote(typed), ".venv/bin/python")
        .replace(str(reports), "reports")
        .replace(f" --server http://127.0.0.1:{port}", "")
        .replace(str(port), str(PORT))
    )
    assert_shows(Step("python3 dev.py demo", transcript), printed)
    log = (reports / "demo-server.log").read_text()
    assert f"Starting streaming server on 127.0.0.1:{port}" in log
    assert "INFO" in log and "INFO" not in done.stdout
