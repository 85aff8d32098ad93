#!/usr/bin/env python3
"""Set up and run the project with nothing but Python installed.

    python3 dev.py demo     the README's walkthrough in one terminal, on SQLite (about 15 s)
    python3 dev.py test     every suite and test, against every implementation (about 8 min)
    python3 dev.py report   keep the latest results in results/, make TEST_RESULTS.md
    python3 dev.py mutate   mutation-test the reference's core modules (mutmut 3)

Each creates ``.venv`` and installs the project and the implementations in
``implementations/`` into it on first use (again whenever a ``pyproject.toml``
changes). Extra arguments after ``test`` go to the suites' pytest session.
Set ``DATABASE_URL=postgres://...`` to run on PostgreSQL instead. ``demo``
and ``test`` write only to ``reports/`` (ignored by git); ``report`` is what
changes tracked files. ``mutate`` works in a staged copy in a temporary directory and
writes ``reports/mutation.json`` and ``reports/mutation.md``; its options
(``--sample N``, ``--offset K``, ``--max-children N``, ``--with-processes``, ``--resume DIR``,
``--again``, ``--rejudge``, ``--keep``) are in ``mutation/driver.py``.
Standard library only: this runs before anything is installed.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import venv
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PYTHON = BIN / ("python.exe" if os.name == "nt" else "python")
#: Implementations other than the reference, each its own package.
IMPLEMENTATIONS = ROOT / "implementations"
#: Each implementation besides the reference: the run that grades it (the
#: database of ``dev.py test``: "sqlite", or "postgresql", where CI's second
#: run also sets REDIS_URL) and the cases it is graded on. The baseline is
#: graded on the suites that name what the seed lacked and fails fast enough
#: for CI; its expected failures are declared per case. A stack that needs a
#: service is graded on the run that has it; each is a session of its own,
#: so one stack failing never stops the others.
OTHERS: dict[str, tuple[str, list[str]]] = {
    "independent": ("sqlite", []),
    "baseline": ("sqlite", ["--case", "FUNC", "--case", "HTTP", "--case", "EDGE"]),
    "eventstream": ("sqlite", []),
    "procrastinate": ("postgresql", []),
    # Celery on Redis: four declared cases that wait out their whole deadline
    # (a lost abort, a result never stored) are left out here, still declared
    # for a full grading (implementations/celery/README.md).
    "celery": (
        "postgresql",
        [
            "-k",
            "not (RACE-19 or RACE-21 or CANCEL-8 or "
            "(EDGE-1 and (SystemExit or KeyboardInterrupt or CancelledError)))",
        ],
    ),
    # The reference with its tasks as django.tasks @task functions (streaming.tasks):
    # graded where several workers share Redis, so MULTI judges that path too.
    "reference-tasks": ("postgresql", []),
}
#: pytest-xdist processes per session. Most cases wait (for a deadline, a
#: server, a signal) more than they compute: three per core keep the cores busy.
WORKERS = 3 * (os.cpu_count() or 1)


def ensure_venv() -> None:
    """Create .venv and install the suite, the reference and the implementations, editable.

    Once per set of pyprojects: the suite (``streaming-conformance``, the
    repository root), the reference (``django-streaming-reference``,
    ``reference/``) and each package in ``implementations/``.
    """
    projects = [
        ROOT / "pyproject.toml",
        ROOT / "reference" / "pyproject.toml",
        *sorted(IMPLEMENTATIONS.glob("*/pyproject.toml")),
    ]
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in projects)).hexdigest()[:12]
    stamp = VENV / f".installed-{digest}"
    if stamp.exists():
        return
    if not PYTHON.exists():
        print(f"Creating {VENV} ...", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    # pip's own output shows its progress: the first set-up downloads the
    # reference's stack and the test tools, a minute or two (issue 25).
    print(
        f"Installing the project, its implementations and test dependencies into {VENV} "
        "(a minute or two the first time; pip's output follows) ...",
        flush=True,
    )
    # Until December 2026 the suite and the reference were one distribution,
    # django-stream-conformance: its entry points would shadow theirs.
    subprocess.run(
        [PYTHON, "-m", "pip", "uninstall", "--yes", "--quiet", "django-stream-conformance"],
        cwd=ROOT,
        check=False,
        capture_output=True,
    )
    # Its metadata in the source tree would still be found from the root.
    shutil.rmtree(ROOT / "django_stream_conformance.egg-info", ignore_errors=True)
    editable = [arg for p in projects[2:] for arg in ("-e", str(p.parent))]
    subprocess.run(
        [
            PYTHON,
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "-e",
            ".[test]",
            "-e",
            "reference[test]",
            *editable,
        ],
        cwd=ROOT,
        check=True,
    )
    for old in VENV.glob(".installed-*"):
        old.unlink()
    stamp.touch()


#: How long ``dev.py test`` takes on two cores, said as it starts.
USUAL = "about 10 minutes on two cores on SQLite (five sessions), 5 on PostgreSQL (two)"
#: What a full run of ``test`` took last time, per database (seconds).
DURATIONS = "dev-test-durations.json"
#: Where the suites' sessions may write; everything else must be as it was.
#: (Python's bytecode caches and the tools' own directories aside.)
NOT_CHECKED = {".git", ".venv", ".tox", "reports", "__pycache__", ".mypy_cache", ".ruff_cache"}


@dataclass(frozen=True)
class Session:
    """One pytest session of ``dev.py test``: what it is, and its command."""

    label: str
    command: list[str]


def sessions(
    pytest_args: list[str],
    *,
    database: str,
    root: Path = ROOT,
    python: Path = PYTHON,
    workers: int = WORKERS,
) -> list[Session]:
    """The sessions ``dev.py test`` runs, in order; with ``pytest_args``, the first only."""
    reports = root / "reports"
    py = f"py{sys.version_info.major}.{sys.version_info.minor}"
    coverage = reports / f"coverage-{database}-{py}.xml"
    pytest = [str(python), "-m", "pytest", "--numprocesses", str(workers)]
    planned = [
        Session(
            f"suites and harness, reference, {database}",
            [
                *pytest,
                f"--junitxml={reports / f'junit-{database}-{py}.xml'}",
                f"--conformance-results={reports / f'results-reference-{database}-{py}.jsonl'}",
                "--cov",
                f"--cov-report=xml:{coverage}",
                "--cov-report=term:skip-covered",
                *pytest_args,
            ],
        )
    ]
    if pytest_args:
        return planned
    planned.append(
        Session(
            f"reference's own tests, {database}",
            [
                *pytest,
                "-c",
                "reference/pytest.ini",
                "reference/tests",
                f"--junitxml={reports / f'junit-reference-tests-{database}-{py}.xml'}",
                "--cov",
                "--cov-append",
                f"--cov-report=xml:{coverage}",
                "--cov-report=term:skip-covered",
            ],
        )
    )
    for name, (run, selection) in OTHERS.items():
        if run != database:
            continue
        planned.append(
            Session(
                f"suites, {name}, {database}",
                [
                    *pytest,
                    "conformance/suites",
                    "--impl",
                    name,
                    *selection,
                    f"--junitxml={reports / f'junit-{name}-{py}.xml'}",
                    f"--conformance-results={reports / f'results-{name}-{database}-{py}.jsonl'}",
                ],
            )
        )
    return planned


def session_env(root: Path, database: str) -> dict[str, str]:
    """The sessions' environment: coverage's data file and hypothesis's database in reports/.

    Both default to the working directory (``.coverage``, ``.hypothesis/``).
    """
    py = f"py{sys.version_info.major}.{sys.version_info.minor}"
    reports = root / "reports"
    return {
        **os.environ,
        "COVERAGE_FILE": str(reports / f".coverage-{database}-{py}"),
        "HYPOTHESIS_STORAGE_DIRECTORY": str(reports / "hypothesis"),
    }


def test(
    pytest_args: list[str], *, root: Path = ROOT, python: Path = PYTHON, workers: int = WORKERS
) -> int:
    """Run the suites, the reference's own tests, and the other implementations.

    Separate pytest sessions: the conformance suites against the reference
    with the harness's tests; the reference's tests under pytest-django
    (reference/pytest.ini), which the suites' session keeps out; and the
    suites against each other implementation, each on the run its
    :data:`OTHERS` entry names (a stack that needs PostgreSQL or Redis on the
    PostgreSQL run, which has both in CI; the rest keep their own storage).
    Extra arguments go to the first session, and then only it runs. Each
    session starts and ends with a banner. Nothing outside reports/ is
    written, and the run checks it. The exit status is
    the first session's that did not pass; a summary of every session ends
    the output, so a log that keeps only its tail still says which failed.
    """
    database = (
        "postgresql" if os.environ.get("DATABASE_URL", "").startswith("postgres") else "sqlite"
    )
    reports = root / "reports"
    reports.mkdir(exist_ok=True)
    planned = sessions(pytest_args, database=database, root=root, python=python, workers=workers)
    print(intro(len(planned), pytest_args, last=_durations(reports).get(database)))
    print(f"A banner marks where each starts and ends. They write to {reports} only.", flush=True)
    before = tree(root)
    env = session_env(root, database)
    outcomes = []
    started = time.monotonic()
    for number, session in enumerate(planned, 1):
        mark = f"[{number}/{len(planned)}]"
        banner(
            f"{mark} {session.label}: START at {time.strftime('%H:%M:%S')}",
            f"{' ' * len(mark)} {shlex.join(session.command)}",
        )
        code, seconds, lines = run_session(session.command, root, env)
        banner(f"{mark} {session.label}: END, {_meaning(code)} ({code}) in {_minutes(seconds)}")
        outcomes.append((session.label, code, seconds, lines))
    strays = sorted(tree(root) - before)
    print_summary(outcomes)
    if strays:
        shown = ", ".join(_collapsed(strays)[:20])
        print(f"Written outside reports/, which the sessions must not do: {shown}")
    if not pytest_args:
        _remember(reports, database, time.monotonic() - started)
    print("Results are in reports/. Keep them and remake TEST_RESULTS.md: python3 dev.py report")
    return next((code for _, code, _, _ in outcomes if code), 1 if strays else 0)


def intro(count: int, pytest_args: list[str], *, last: float | None) -> str:
    """What ``dev.py test`` says first: how many sessions, and how long they usually take."""
    said = f"dev.py test runs {count} pytest session{'s' * (count > 1)}"
    if pytest_args:
        return f"{said}: the suites and the harness's tests, with your arguments."
    when = f" (the last full run here: {_minutes(last)})" if last else ""
    return f"{said}, one after another: {USUAL}{when}."


def banner(*lines: str) -> None:
    """A line of its own that marks where a session starts or ends."""
    rule = "#" * 78
    print("\n".join(["", rule, *(f"## {line}" for line in lines), rule]), flush=True)


def tree(root: Path) -> set[str]:
    """Every file and directory under ``root``, but for those :data:`NOT_CHECKED`."""
    found: set[str] = set()
    for directory, subdirectories, files in os.walk(root):
        subdirectories[:] = [d for d in subdirectories if d not in NOT_CHECKED]
        here = Path(directory).relative_to(root)
        found.update((here / name).as_posix() for name in [*subdirectories, *files])
    return found


def _collapsed(paths: list[str]) -> list[str]:
    """``paths`` without those inside another of them (a new directory stands for its files)."""
    kept: list[str] = []
    for path in sorted(paths):
        if not any(path.startswith(f"{parent}/") for parent in kept):
            kept.append(path)
    return kept


def _durations(reports: Path) -> dict[str, float]:
    try:
        recorded = json.loads((reports / DURATIONS).read_text())
    except (OSError, ValueError):
        return {}
    return recorded if isinstance(recorded, dict) else {}


def _remember(reports: Path, database: str, seconds: float) -> None:
    recorded = {**_durations(reports), database: round(seconds)}
    (reports / DURATIONS).write_text(json.dumps(recorded, indent=2) + "\n")


def _minutes(seconds: float) -> str:
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest} s" if minutes else f"{rest} s"


#: pytest's exit codes, for the summary.
EXIT_CODES = {
    0: "passed",
    1: "tests failed",
    2: "interrupted",
    3: "internal error",
    4: "usage error",
    5: "no tests collected",
}
#: Lines of a session's output that say why it did not pass.
WHY = ("FAILED ", "ERROR ", "INTERNALERROR>", "mainloop:", "E   ")


def _meaning(code: int) -> str:
    return EXIT_CODES.get(code, "killed by a signal" if code < 0 else "exit code")


def run_session(
    command: list[str], root: Path, env: dict[str, str]
) -> tuple[int, float, list[str]]:
    """Run one pytest session, passing its output through; its exit code, seconds and lines."""
    started = time.monotonic()
    lines: list[str] = []
    with subprocess.Popen(
        command, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as process:
        assert process.stdout is not None
        for line in process.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            lines.append(line.rstrip("\n"))
    return process.returncode, time.monotonic() - started, lines


def print_summary(outcomes: list[tuple[str, int, float, list[str]]]) -> None:
    print("\n== sessions ==")
    for label, code, seconds, lines in outcomes:
        print(f"{label}: {_meaning(code)} ({code}) in {seconds:.0f} s")
        if code:
            why = [line for line in lines if line.startswith(WHY)]
            for line in why[:40] or lines[-20:]:
                print(f"    {line[:300]}")


def report() -> int:
    """Copy the latest results from reports/ to results/, then make TEST_RESULTS.md.

    results/ is tracked, so the report can be made again from the repository;
    a run replaces the file of its implementation, database and Python only.
    """
    kept = ROOT / "results"
    kept.mkdir(exist_ok=True)
    for path in sorted((ROOT / "reports").glob("results-*.jsonl")):
        shutil.copyfile(path, kept / path.name.removeprefix("results-"))
    for path in sorted((ROOT / "reports").glob("soak-*.json")):
        shutil.copyfile(path, kept / path.name)
    mutation = ROOT / "reports" / "mutation.json"
    if mutation.exists():
        shutil.copyfile(mutation, kept / "mutation.json")
    command = [PYTHON, "-m", "conformance", "report", "--html", "reports/matrix.html"]
    return subprocess.run(command, cwd=ROOT).returncode


#: The port the README's walkthrough uses; the demo takes another if it is busy.
DEMO_PORT = 8888


class DemoTerminal:
    """The demo's one terminal: whole lines, and a command's output right after the command.

    Stream clients run in the background, as in a terminal of their own; a
    thread copies each line they print. While a command runs in the
    foreground, their lines wait, so a command and its output stay together.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.after_blank = True

    def write(self, text: str) -> None:
        """Write ``text`` (whole lines), holding :attr:`lock`."""
        if text:
            sys.stdout.write(text if text.endswith("\n") else f"{text}\n")
            sys.stdout.flush()
            self.after_blank = text.endswith("\n\n") or text == "\n"

    def show(self, argv: list[str], *, after: str = "", why: str = "") -> None:
        """Write a command as it would be typed at the repository root, holding :attr:`lock`."""
        line = f"$ {shlex.join(argv)}{after}"
        self.write(("" if self.after_blank else "\n") + (f"{line}   # {why}" if why else line))

    def run(self, argv: list[str], *, env: dict[str, str], why: str = "") -> str:
        """Show ``argv``, run it in the foreground, write its output; stop the demo if it fails."""
        with self.lock:
            self.show(argv, why=why)
            done = subprocess.run(
                argv,
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                check=False,
            )
            self.write(done.stdout)
        if done.returncode:
            raise SystemExit(f"dev.py demo: {shlex.join(argv)} exited with {done.returncode}")
        return done.stdout

    def start(self, argv: list[str], *, env: dict[str, str], why: str = "") -> DemoClient:
        """Show ``argv`` with ``&``, start it in the background and copy what it prints."""
        with self.lock:
            self.show(argv, after=" &", why=why)
            return DemoClient(self, argv, env)


class DemoClient:
    """A background process of the demo; what it prints goes to the demo's terminal."""

    def __init__(self, terminal: DemoTerminal, argv: list[str], env: dict[str, str]) -> None:
        self.terminal = terminal
        self.lines: list[str] = []
        self.process = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.copier = threading.Thread(target=self._copy, daemon=True)
        self.copier.start()

    def _copy(self) -> None:
        assert self.process.stdout is not None
        with self.process.stdout:
            for line in self.process.stdout:
                with self.terminal.lock:
                    self.terminal.write(line)
                    self.lines.append(line.rstrip("\n"))

    def printed(self, line: str) -> bool:
        """Whether it has printed ``line``, and the blank line that ends its block."""
        with self.terminal.lock:
            return line in self.lines and self.lines[-1] == ""

    def wait(self, timeout: float) -> int:
        code = self.process.wait(timeout)
        self.copier.join(timeout)
        return code


def _shown(path: Path) -> str:
    """``path`` as typed at the repository root: relative when it is inside it."""
    return path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else str(path)


def _http(python: str, method: str, url: str) -> list[str]:
    """``curl`` for a request, or the same from Python where curl is not installed."""
    if shutil.which("curl"):
        return ["curl", "-s", *(["-X", method] if method != "GET" else []), url]
    code = (
        "import sys, urllib.request as r; "
        "print(r.urlopen(r.Request(sys.argv[2], method=sys.argv[1])).read().decode())"
    )
    return [python, "-c", code, method, url]


def _answers(url: str) -> bool:
    """Whether ``url`` answers 200 (http.client: no proxy from the environment between)."""
    parts = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=2)
    try:
        connection.request("GET", parts.path)
        return connection.getresponse().status == 200
    except (OSError, http.client.HTTPException):
        return False
    finally:
        connection.close()


def demo(
    *, python: Path = PYTHON, port: int | None = None, reports: Path = ROOT / "reports"
) -> int:
    """The README's walkthrough in one terminal: each command as typed, then what it prints.

    The server runs in the background and logs to ``reports/demo-server.log``;
    the database is a fresh ``reports/demo.sqlite3``, so the ids match the
    README's. Port 8888 unless another process holds it.
    """
    from conformance.processes import free_port
    from conformance.waiting import WaitTimeout, wait_until

    reports.mkdir(parents=True, exist_ok=True)
    for old in reports.glob("demo.sqlite3*"):
        old.unlink()  # a fresh database, so the ids match the README's
    log_path = reports / "demo-server.log"
    if port is None and _port_taken(DEMO_PORT):
        port = free_port()
        print(f"Port {DEMO_PORT} is taken: the server uses {port}, and --server says so.\n")
    port = port or DEMO_PORT
    base = f"http://127.0.0.1:{port}"
    server_option = [] if port == DEMO_PORT else ["--server", base]
    py = _shown(python)
    database = f"sqlite:///{_shown(reports / 'demo.sqlite3')}"
    env = {**os.environ, "DATABASE_URL": database, "PYTHONUNBUFFERED": "1"}
    terminal = DemoTerminal()

    print("The README's walkthrough in one terminal: each command as you would type it at")
    print("the repository root (copy it to run it yourself), then what it prints.\n", flush=True)
    terminal.show(["export", f"DATABASE_URL={database}"], why="a fresh database for the demo")
    terminal.run([py, "manage.py", "migrate", "--verbosity", "0"], env=env)
    server_argv = [py, "manage.py", "runserver_stream", "--port", str(port)]
    terminal.show(
        server_argv,
        after=f" > {_shown(log_path)} 2>&1 &",
        why="terminal 1: the server, its log in that file",
    )
    with log_path.open("w") as log:
        server = subprocess.Popen(
            server_argv,
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    def server_log() -> str:
        return log_path.read_text(errors="replace")

    def answered(path: str) -> int:
        return server_log().count(f'"GET {path} HTTP/1.1" 200')

    clients: list[DemoClient] = []
    try:
        wait_until(
            lambda: server.poll() is not None or _answers(f"{base}/health"),
            timeout=30,
            what=f"the server to answer {base}/health",
        )
        if server.poll() is not None:
            tail = "\n".join(server_log().splitlines()[-15:])
            raise SystemExit(f"dev.py demo: the server exited with {server.returncode}:\n{tail}")
        terminal.run(
            [
                py,
                "manage.py",
                "create_task",
                "--type",
                "example",
                "--message",
                "Hello, World!",
                "--no-start",
                *server_option,
            ],
            env=env,
            why="terminal 2",
        )
        client = terminal.start(
            [py, "stream_client.py", "ExampleTask", "1", *server_option],
            env=env,
            why="terminal 3: it waits for the task to start",
        )
        clients.append(client)
        wait_until(
            lambda: answered("/stream/ExampleTask/1") and client.printed(""),
            timeout=30,
            what="the server to answer the stream client",
        )
        terminal.run(
            _http(py, "POST", f"{base}/tasks/ExampleTask/1/start"),
            env=env,
            why="terminal 2: start it",
        )
        if client.wait(60):
            raise SystemExit("dev.py demo: the stream client failed")
        created = terminal.run(
            [
                py,
                "manage.py",
                "create_task",
                "--type",
                "continue",
                "--message",
                "Waiting for signal...",
                *server_option,
            ],
            env=env,
        )
        client = terminal.start(
            [py, "stream_client.py", "ContinueTask", "1", *server_option],
            env=env,
            why="shows STARTED, then waits",
        )
        clients.append(client)
        wait_until(
            lambda: client.printed("[1] Event: STARTED"),
            timeout=30,
            what="the stream client to show STARTED",
        )
        signal_code = created.split('shell -c "', 1)[1].split('"\n', 1)[0]
        terminal.run(
            [py, "manage.py", "shell", "--verbosity", "0", "-c", signal_code],
            env=env,
            why="the signal: the line create_task printed, quiet",
        )
        if client.wait(60):
            raise SystemExit("dev.py demo: the stream client failed")
        terminal.run(_http(py, "GET", f"{base}/health"), env=env)
    except (WaitTimeout, subprocess.TimeoutExpired) as exc:
        raise SystemExit(f"dev.py demo: {exc} The server's log: {_shown(log_path)}") from None
    finally:
        for client in clients:
            if client.process.poll() is None:
                client.process.kill()
        with terminal.lock:
            terminal.show(["kill", "-INT", str(server.pid)], why="Ctrl+C in terminal 1: it drains")
            if server.poll() is None:
                server.send_signal(signal.SIGINT)
            try:
                status = server.wait(30)
            except subprocess.TimeoutExpired:
                server.kill()
                status = server.wait()
            terminal.write(f"The server exited with {status}. Its log: {_shown(log_path)}")
    return 0 if status == 0 else 1


def _port_taken(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def mutate(args: list[str]) -> int:
    """Mutation-test the reference with mutmut 3, in a staged copy (see mutation/driver.py)."""
    from mutation import driver

    return driver.main(args, root=ROOT, bin_dir=BIN)


def main(argv: list[str]) -> int:
    commands = {
        "demo": demo,
        "test": lambda: test(argv[1:]),
        "report": report,
        "mutate": lambda: mutate(argv[1:]),
    }
    if not argv or argv[0] not in commands:
        print(__doc__)
        return 2
    ensure_venv()
    return commands[argv[0]]()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
