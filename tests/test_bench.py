"""Where ``python -m conformance bench`` sends what is not its table, and what it records.

The terminal shows the table; the measured servers' output, this process's
log lines and its client processes' complaints go to a log file beside the
reports. The servers here are real processes (the benchmark's own raw-ASGI
broadcaster); the full benchmark, minutes long, is not run.
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from conformance import bench
from conformance.bench_report import describe_commit
from conformance.contract import ServerSpec

pytestmark = pytest.mark.timeout(60)

#: What the reference's servers print when the keeper takes a run from them.
LEASE_WARNING = "WARNING streaming.coordinator: Task 7 lost its lease (expired); stopping it"


def test_stderr_when_sent_to_log_then_logging_and_child_lines_reach_the_file_not_the_terminal(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "reports" / "bench.log"
    # Made as Django's LOGGING makes its console handler: on the process's stderr.
    handler = logging.StreamHandler(sys.__stderr__)
    logger = logging.getLogger("test_bench.lease")
    logger.addHandler(handler)
    try:
        with bench.stderr_to(log):
            logger.warning(LEASE_WARNING)
            subprocess.run(
                [sys.executable, "-c", "import sys; sys.stderr.write('a client complains\\n')"],
                check=True,
                timeout=30,
            )
        logger.warning("after the benchmark")
    finally:
        logger.removeHandler(handler)
    terminal = capfd.readouterr()
    assert LEASE_WARNING not in terminal.err and "a client complains" not in terminal.err
    assert "after the benchmark" in terminal.err, "stderr is the terminal's again afterwards"
    written = log.read_text(encoding="utf-8")
    assert LEASE_WARNING in written and "a client complains" in written
    assert "after the benchmark" not in written


class NoisyBroadcaster(bench.Broadcaster):
    """The benchmark's broadcaster, printing a reference server's warning as it starts."""

    name = "noisy broadcaster"

    def server_command(self, host: str, port: int, *, grace: float = 5.0) -> ServerSpec:
        spec = super().server_command(host, port, grace=grace)
        warn = f"import sys, runpy; print({LEASE_WARNING!r}, file=sys.stderr, flush=True); "
        run = "sys.argv.pop(0); runpy.run_module(sys.argv[0], run_name='__main__')"
        return ServerSpec(argv=[spec.argv[0], "-c", warn + run, *spec.argv[2:]])


@pytest.mark.asyncio
async def test_server_when_logged_then_its_output_is_in_the_log_once_it_stops(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    log_path = tmp_path / "bench.log"
    with log_path.open("w", encoding="utf-8") as log:
        async with bench.logged_server(NoisyBroadcaster(), log) as server:
            assert (await server.request("GET", "/health")).status_code == 200
            pid = server.pid
    written = log_path.read_text(encoding="utf-8")
    assert f"noisy broadcaster on {server.url}, pid {pid}" in written
    assert LEASE_WARNING in written
    assert LEASE_WARNING not in capfd.readouterr().err


def git(where: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=where, check=True, capture_output=True, timeout=30)


def test_commit_when_tree_clean_then_its_hash_and_when_changed_then_marked_dirty(
    tmp_path: Path,
) -> None:
    git(tmp_path, "init", "-q")
    (tmp_path / "a.txt").write_text("one\n", encoding="utf-8")
    git(tmp_path, "add", "a.txt")
    git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "one")
    head = subprocess.run(
        ["git", "rev-parse", "--short=12", "HEAD"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout.strip()
    assert describe_commit(tmp_path) == head
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "bench.md").write_text("untracked\n", encoding="utf-8")
    assert describe_commit(tmp_path) == head, "untracked output does not make the tree dirty"
    (tmp_path / "a.txt").write_text("two\n", encoding="utf-8")
    assert describe_commit(tmp_path) == f"{head}-dirty"


def test_commit_when_not_a_repository_then_unknown(tmp_path: Path) -> None:
    assert describe_commit(tmp_path) == "unknown"


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    return parser.parse_args(argv)


def test_arguments_when_save_alone_then_results_and_when_absent_then_nothing_saved() -> None:
    assert parse().save is None
    assert parse("--save").save == Path("results")
    assert parse("--save", "elsewhere").save == Path("elsewhere")
    assert parse().output == "reports"


def test_arguments_when_repeat_below_one_then_usage_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        parse("--repeat", "0")
    assert "at least 1" in capsys.readouterr().err
