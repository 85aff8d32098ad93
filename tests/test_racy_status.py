"""A racy case that passes says so: not XPASS, which reads as a fault (issue 25).

An implementation declares in ``racy_failures`` the cases it fails in some
interleavings only; a pass of one is as expected as a failure. The session
shows it as ``RACY-PASS`` and counts such passes, with the reason, at the end.
Run as in tests/test_plugin.py: pytest in a subprocess, the plugin loaded
through its entry point, the fake implementation through ``--impl``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]
pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[1]

INI = """
[pytest]
asyncio_mode = strict
asyncio_default_fixture_loop_scope = function
asyncio_default_test_loop_scope = function
filterwarnings =
    error
"""

CASES = """
import pytest

@pytest.mark.case("FUNC-3")
def test_won_the_race(impl):
    pass

@pytest.mark.case("FUNC-3")
def test_won_it_again(impl):
    pass

@pytest.mark.case("FUNC-3")
def test_lost_the_race(impl):
    assert False, "two starts won"

@pytest.mark.case("FUNC-1")
def test_holds(impl):
    pass
"""


@pytest.fixture
def project(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    """A pytester directory where ``tests.fake_impls`` imports."""
    path = os.environ.get("PYTHONPATH")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(ROOT), path) if p))
    pytester.makefile(".ini", pytest=INI)
    pytester.makepyfile(test_racy=CASES)
    return pytester


def run(project: pytest.Pytester, *args: str) -> pytest.RunResult:
    return project.runpytest_subprocess(
        "-p",
        "no:randomly",
        "-p",
        "no:cacheprovider",
        "--impl",
        "tests.fake_impls:RacyImpl",
        f"--conformance-results={project.path / 'results.jsonl'}",
        *args,
    )


def test_racy_case_when_it_passes_then_the_session_shows_racy_pass_not_xpass(
    project: pytest.Pytester,
) -> None:
    result = run(project, "-v", "-rA")

    output = result.stdout.str()
    assert result.ret == pytest.ExitCode.OK, output
    assert re.search(r"test_won_the_race\[racy\] RACY-PASS", output), output
    assert re.search(r"test_lost_the_race\[racy\] XFAIL", output), output
    assert re.search(r"test_holds\[racy\] PASSED", output), output
    assert "XPASS" not in output
    assert "xpassed" not in output
    assert re.search(r"=+ 1 passed, 1 xfailed, 2 racy passed in ", output), output


def test_racy_case_when_it_passes_then_the_grades_say_how_many_and_why_that_is_expected(
    project: pytest.Pytester,
) -> None:
    result = run(project)

    result.stdout.fnmatch_lines(
        [
            "*conformance grades*",
            "racy: pass 1, xfail 3",
            "racy: 2 racy cases passed this time. racy declares them in racy_failures: they "
            "fail in some interleavings only, so a pass is expected too; both are graded xfail.",
        ]
    )


def test_racy_cases_when_run_under_xdist_then_the_controller_shows_racy_pass(
    project: pytest.Pytester,
) -> None:
    result = run(project, "-n", "2", "-v")

    output = result.stdout.str()
    assert result.ret == pytest.ExitCode.OK, output
    assert re.search(r"RACY-PASS .*test_won_the_race\[racy\]", output), output
    assert "XPASS" not in output
    assert "racy: 2 racy cases passed this time." in output
