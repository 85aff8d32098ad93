#!/usr/bin/env python3
"""Set up and run the project with nothing but Python installed.

    python3 dev.py demo     the testing guide's flow, end to end, on SQLite
    python3 dev.py test     every suite and test, against every implementation
    python3 dev.py report   keep the latest results in results/, make TEST_RESULTS.md
    python3 dev.py mutate   mutation-test the reference's core modules (mutmut 3)

Each creates ``.venv`` and installs the project and the implementations in
``implementations/`` into it on first use (again whenever a ``pyproject.toml``
changes). Extra arguments after ``test`` go to the suites' pytest session.
Set ``DATABASE_URL=postgres://...`` to run on PostgreSQL instead. ``test``
writes only to ``reports/`` (ignored by git); ``report`` is what changes
tracked files. ``mutate`` works in a staged copy in a temporary directory and
writes ``reports/mutation.json`` and ``reports/mutation.md``; its options
(``--sample N``, ``--offset K``, ``--max-children N``, ``--with-processes``, ``--resume DIR``,
``--again``, ``--rejudge``, ``--keep``) are in ``mutation/driver.py``.
Standard library only: this runs before anything is installed.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
import venv
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from conformance.contract import ServerSpec

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PYTHON = BIN / ("python.exe" if os.name == "nt" else "python")
#: Implementations other than the reference, each its own package.
IMPLEMENTATIONS = ROOT / "implementations"
#: Each implementation besides the reference, and the cases it is graded on.
#: The baseline is graded on the suites that name what the seed lacked and
#: fails fast enough for CI; its expected failures are declared per case.
OTHERS: dict[str, list[str]] = {
    "independent": [],
    "baseline": ["--case", "FUNC", "--case", "HTTP", "--case", "EDGE"],
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
    print("Installing the project, its implementations and test dependencies ...", flush=True)
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
            "--quiet",
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


def test(pytest_args: list[str]) -> int:
    """Run the suites, the reference's own tests, and the other implementations.

    Separate pytest sessions: the conformance suites against the reference
    with the harness's tests; the reference's tests under pytest-django
    (reference/pytest.ini), which the suites' session keeps out; and the
    suites against each other implementation (on the SQLite run only: they
    keep their own storage). Extra arguments go to the first session, and
    then only it runs. Nothing outside reports/ is written. The exit status is
    the first session's that did not pass; a summary of every session ends
    the output, so a log that keeps only its tail still says which failed.
    """
    database = (
        "postgresql" if os.environ.get("DATABASE_URL", "").startswith("postgres") else "sqlite"
    )
    reports = ROOT / "reports"
    reports.mkdir(exist_ok=True)
    py = f"py{sys.version_info.major}.{sys.version_info.minor}"
    coverage = reports / f"coverage-{database}-{py}.xml"
    pytest = [PYTHON, "-m", "pytest", "--numprocesses", str(WORKERS)]
    sessions: list[tuple[str, list[str | Path]]] = [
        (
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
    if not pytest_args:
        reference = [
            *pytest,
            "-c",
            "reference/pytest.ini",
            "reference/tests",
            f"--junitxml={reports / f'junit-reference-tests-{database}-{py}.xml'}",
            "--cov",
            "--cov-append",
            f"--cov-report=xml:{coverage}",
            "--cov-report=term:skip-covered",
        ]
        sessions.append((f"reference's own tests, {database}", reference))
        if database == "sqlite":
            for name, selection in OTHERS.items():
                other = [
                    *pytest,
                    "conformance/suites",
                    "--impl",
                    name,
                    *selection,
                    f"--junitxml={reports / f'junit-{name}-{py}.xml'}",
                    f"--conformance-results={reports / f'results-{name}-sqlite-{py}.jsonl'}",
                ]
                sessions.append((f"suites, {name}, sqlite", other))
    outcomes = [(label, *run_session(command)) for label, command in sessions]
    print_summary(outcomes)
    print("Results are in reports/. Keep them and remake TEST_RESULTS.md: python3 dev.py report")
    return next((code for _, code, _, _ in outcomes if code), 0)


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


def run_session(command: list[str | Path]) -> tuple[int, float, list[str]]:
    """Run one pytest session, passing its output through; its exit code, seconds and lines."""
    started = time.monotonic()
    lines: list[str] = []
    with subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
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
        meaning = EXIT_CODES.get(code, "killed by a signal" if code < 0 else "exit code")
        print(f"{label}: {meaning} ({code}) in {seconds:.0f} s")
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
    mutation = ROOT / "reports" / "mutation.json"
    if mutation.exists():
        shutil.copyfile(mutation, kept / "mutation.json")
    command = [PYTHON, "-m", "conformance", "report", "--html", "reports/matrix.html"]
    return subprocess.run(command, cwd=ROOT).returncode


class RunserverStream:
    """``manage.py runserver_stream``: the demo's server, as the harness starts a server."""

    name = "runserver_stream"

    def server_command(self, host: str, port: int, *, grace: float) -> ServerSpec:
        from conformance.contract import ServerSpec

        argv = [str(PYTHON), str(ROOT / "manage.py"), "runserver_stream", "--port", str(port)]
        return ServerSpec(argv=[*argv, "--grace", f"{grace:g}"], cwd=str(ROOT))


def demo() -> int:
    """The testing guide's three terminals, in one: server, create_task, stream_client."""
    # The harness's server process, as the suites start one: its modules import
    # only the standard library, and without psutil it does not ask whose
    # socket answers on the port.
    from conformance.processes import ServerProcess

    data = ROOT / ".demo"
    data.mkdir(exist_ok=True)
    for old in data.glob("demo.sqlite3*"):
        old.unlink()  # a fresh database, so the ids match the guide's
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{data / 'demo.sqlite3'}",
        "PYTHONUNBUFFERED": "1",
    }
    manage = [PYTHON, str(ROOT / "manage.py")]

    def step(title: str) -> None:
        print(f"\n$ {title}", flush=True)

    step("python manage.py migrate")
    subprocess.run([*manage, "migrate", "--verbosity", "0"], cwd=ROOT, env=env, check=True)
    server = ServerProcess(
        RunserverStream(),
        grace=10.0,  # runserver_stream's default
        env={"DATABASE_URL": env["DATABASE_URL"]},
        echo=True,  # terminal 1: its log
        check_listener=False,
    )
    step(f"python manage.py runserver_stream --port {server.port}   (terminal 1)")
    try:
        try:
            server.start_blocking()
        except AssertionError as exc:  # its output is above
            raise SystemExit(str(exc).partition("\n")[0]) from None
        base = server.url
        step('python manage.py create_task --type example --message "Hello, World!"   (terminal 2)')
        created = subprocess.run(
            [
                *manage,
                "create_task",
                "--type",
                "example",
                "--message",
                "Hello, World!",
                "--step-delay",
                "0.5",
                "--server",
                base,
            ],
            cwd=ROOT,
            env=env,
            check=True,
            capture_output=True,
            text=True,
        )
        print(created.stdout, end="", flush=True)
        task_id = created.stdout.split("ID: ", 1)[1].split()[0]
        step(f"python stream_client.py ExampleTask {task_id}   (terminal 3)")
        subprocess.run(
            [PYTHON, str(ROOT / "stream_client.py"), "ExampleTask", task_id, "--server", base],
            cwd=ROOT,
            env=env,
            check=True,
        )
        step('python manage.py create_task --type continue --message "Waiting for signal..."')
        created = subprocess.run(
            [
                *manage,
                "create_task",
                "--type",
                "continue",
                "--message",
                "Waiting for signal...",
                "--server",
                base,
            ],
            cwd=ROOT,
            env=env,
            check=True,
            capture_output=True,
            text=True,
        )
        print(created.stdout, end="", flush=True)
        task_id = created.stdout.split("ID: ", 1)[1].split()[0]
        step(f"python stream_client.py ContinueTask {task_id}   (waits for the signal)")
        client = subprocess.Popen(
            [PYTHON, str(ROOT / "stream_client.py"), "ContinueTask", task_id, "--server", base],
            cwd=ROOT,
            env=env,
        )
        step('python manage.py shell -c "...aupdate(continue_field=True)"   (the signal)')
        code = (
            "from streaming.models import ContinueTask; import asyncio; "
            f"asyncio.run(ContinueTask.objects.filter(pk={task_id}).aupdate(continue_field=True))"
        )
        subprocess.run([*manage, "shell", "-c", code], cwd=ROOT, env=env, check=True)
        client.wait(timeout=30)
        step(f"curl {base}/health")
        with urllib.request.urlopen(f"{base}/health", timeout=5) as response:
            print(response.read().decode())
    finally:
        step("kill -TERM <server>   (graceful shutdown)")
        status = server.stop_blocking(signal.SIGTERM, timeout=30)
        print(f"server exited with status {status}")
    return 0


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
