"""The suite's child processes start with SIGINT and SIGTERM at their defaults.

Whatever this process ignores (pytest under ``nohup``, a CI runner that
ignores SIGINT), a server or stream client the suite starts must still take
the Ctrl+C and SIGTERM that cases send it.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator

import pytest

from conformance.processes import with_default_signals

pytestmark = pytest.mark.timeout(30)

REPORT = (
    "import signal; "
    "print(signal.getsignal(signal.SIGINT) is signal.default_int_handler, "
    "signal.getsignal(signal.SIGTERM) is signal.SIG_DFL)"
)


@pytest.fixture
def parent_ignores_signals() -> Iterator[None]:
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@pytest.mark.usefixtures("parent_ignores_signals")
def test_child_when_parent_ignores_signals_then_started_with_their_defaults() -> None:
    inherited = subprocess.run(
        [sys.executable, "-c", REPORT], capture_output=True, text=True, check=True
    )
    reset = subprocess.run(
        with_default_signals([sys.executable, "-c", REPORT]),
        capture_output=True,
        text=True,
        check=True,
    )
    assert inherited.stdout.split() == ["False", "False"]  # what the fix is for
    assert reset.stdout.split() == ["True", "True"]


def test_child_when_started_with_default_signals_then_it_is_the_same_process() -> None:
    child = subprocess.Popen(
        with_default_signals([sys.executable, "-c", "import os; print(os.getpid())"]),
        stdout=subprocess.PIPE,
        text=True,
    )
    out, _ = child.communicate(timeout=20)
    assert int(out) == child.pid  # signals sent to the pid reach the program itself
