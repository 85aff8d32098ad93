"""Implementations that break the contract on purpose get the grades the plugin promises.

Each ``misbehaving-*`` implementation (``implementations/misbehaving``) is the
reference with one fault planted. Run through the real suites in a pytest
session of its own, each must be graded as README.md says (a hang or a crash
is an *error*, a broken stream or a leak a *fail*), and the session must go
on to grade the cases after it. Their graded results are written where the
report finds them, so the matrix shows them beside the real implementations.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: implementation -> (arguments that pick its cases, case test name -> grade and reason start).
EXPECTED: dict[str, tuple[list[str], dict[str, tuple[str, str]]]] = {
    "misbehaving-hangs": (
        ["--case", "FUNC-1", "--case", "HTTP-1", "--mode", "inprocess", "--case-timeout", "5"],
        {
            "test_started_task_when_run_then_client_gets_events_in_order_then_complete": (
                "error",
                "timed out",
            ),
            "test_health_when_server_accepts_work_then_200_ok": ("pass", ""),
        },
    ),
    "misbehaving-crashes": (
        ["--case", "FUNC-1", "--case", "HTTP-1", "--mode", "inprocess"],
        {
            "test_started_task_when_run_then_client_gets_events_in_order_then_complete": (
                "error",
                "setup failed",
            ),
            "test_health_when_server_accepts_work_then_200_ok": ("error", "setup failed"),
        },
    ),
    "misbehaving-garbles": (
        ["--case", "FUNC-1", "--case", "FUNC-3", "--case", "HTTP-1", "--mode", "inprocess"],
        {
            "test_started_task_when_run_then_client_gets_events_in_order_then_complete": (
                "fail",
                "",
            ),
            "test_events_when_streamed_then_ids_count_from_one_with_task_metadata": ("fail", ""),
            "test_health_when_server_accepts_work_then_200_ok": ("pass", ""),
        },
    ),
    "misbehaving-leaks": (
        ["--case", "FUNC-1", "--case", "FUNC-7", "--mode", "inprocess"],
        {
            "test_started_task_when_run_then_client_gets_events_in_order_then_complete": (
                "fail",
                "hygiene",
            ),
            "test_one_client_leaves_when_task_runs_then_it_is_unregistered_and_others_continue": (
                "fail",
                "",
            ),
        },
    ),
    # The memory cases' teeth: bounds derived from what is declared catch these.
    "misbehaving-hoards": (
        ["--case", "EDGE-20"],
        {
            "test_server_when_many_tasks_with_big_events_finished_then_memory_is_bounded": (
                "fail",
                "AssertionError: resident memory grew by",
            ),
        },
    ),
    "misbehaving-bloats": (
        ["--case", "PERF-4"],
        {"test_server_when_many_tasks_ran_then_memory_grew_less_than_the_bound": ("fail", "")},
    ),
}


#: A session of a few cases takes seconds, a minute on a loaded machine.
SESSION_DEADLINE = 150


@pytest.mark.timeout(SESSION_DEADLINE + 30)
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_misbehaving_implementation_when_run_then_graded_as_promised_and_run_goes_on(
    name: str,
) -> None:
    selection, expected = EXPECTED[name]
    # Named like the session's own results: under tox, after the environment,
    # so environments running side by side (tox -p) never share a file.
    python = f"py{sys.version_info[0]}.{sys.version_info[1]}"
    database = (
        "postgresql" if os.environ.get("DATABASE_URL", "").startswith("postgres") else "sqlite"
    )
    where = os.environ.get("TOX_ENV_NAME") or f"{database}-{python}"
    results = ROOT / "reports" / f"results-{name}-{where}.jsonl"
    results.parent.mkdir(exist_ok=True)
    run = run_session(
        [
            sys.executable,
            "-m",
            "pytest",
            "conformance/suites",
            "--impl",
            name,
            *selection,
            "-p",
            "no:randomly",
            f"--conformance-results={results}",
            "-q",
        ]
    )
    output = run.stdout[-3000:] + run.stderr[-2000:]
    assert run.returncode in (0, 1), f"the session did not finish normally:\n{output}"
    graded = {}
    for line in results.read_text().splitlines():
        record = json.loads(line)
        graded[record["test"]] = (record["grade"], record["reason"])
    assert set(graded) == set(expected), f"cases graded: {sorted(graded)}\n{output}"
    for test, (grade, reason) in expected.items():
        got_grade, got_reason = graded[test]
        assert got_grade == grade and got_reason.startswith(reason), (test, graded[test], output)


def run_session(command: list[str]) -> subprocess.CompletedProcess[str]:
    """Run a pytest session; if it outlives its deadline, fail with where each thread stood.

    The session's own case timeout should end a hang. If the session itself
    hangs, SIGABRT makes faulthandler print every thread's stack before it
    dies, and that output is the failure's message.
    """
    env = {**os.environ, "PYTHONFAULTHANDLER": "1"}
    with subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as process:
        try:
            stdout, stderr = process.communicate(timeout=SESSION_DEADLINE)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGABRT)
            stdout, stderr = process.communicate()
            pytest.fail(
                f"the session did not end within {SESSION_DEADLINE} s; its threads:\n"
                f"{stdout[-3000:]}\n{stderr[-12000:]}"
            )
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)
