"""Tests of the conformance plugin itself: the harness every grade rests on.

Each test writes a small case file into pytester's directory and runs pytest
on it in a subprocess, so the plugin loads through its ``pytest11`` entry
point and implementations through ``--impl`` exactly as for a user. The
implementations are the fakes in ``tests/fake_impls.py``; the graded records
come from the ``--conformance-results`` JSON-lines file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from conformance import plugin, requirements

pytest_plugins = ["pytester"]
pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[1]
FULL = "tests.fake_impls:FullImpl"
BARE = "tests.fake_impls:BareImpl"
PARTIAL = "tests.fake_impls:PartialImpl"
XFAIL = "tests.fake_impls:XfailImpl"
RACY = "tests.fake_impls:RacyImpl"

#: Each fake's declared name, which node IDs and records carry.
NAMES = {
    "tests.fake_impls:FullImpl": "full",
    "tests.fake_impls:BareImpl": "bare",
    "tests.fake_impls:PartialImpl": "partial",
    "tests.fake_impls:XfailImpl": "xfail",
    "tests.fake_impls:RacyImpl": "racy",
}

RECORD_KEYS = {
    "case",
    "contract",
    "level",
    "suite",
    "nodeid",
    "test",
    "implementation",
    "impl_version",
    "mode",
    "grade",
    "reason",
    "duration",
    "python",
    "stack",
    "database",
    "platform",
    "run_id",
    "deprecated",
}

INI = """
[pytest]
asyncio_mode = strict
asyncio_default_fixture_loop_scope = function
asyncio_default_test_loop_scope = function
filterwarnings =
    error
"""

# Leak checks wait this long for a case's leftovers to settle; the cases
# below leak on purpose, so a short wait keeps them fast.
CONFTEST = """
from conformance import hygiene

hygiene.SETTLE_TIMEOUT = 0.2
"""

SELECTION_CASES = """
import pytest

@pytest.mark.case("FUNC-1")
def test_func_1(impl):
    pass

@pytest.mark.case("FUNC-10")
def test_func_10(impl):
    pass

@pytest.mark.case("FUNC-11")
def test_func_11(impl):
    pass

@pytest.mark.case("FUNC-12")
def test_func_12(impl):
    pass

@pytest.mark.case("HTTP-1")
def test_http_1(impl):
    pass

def test_not_a_case():
    pass
"""


@pytest.fixture
def project(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    """A pytester directory where ``tests.fake_impls`` imports and warnings are errors."""
    path = os.environ.get("PYTHONPATH")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(ROOT), path) if p))
    pytester.makefile(".ini", pytest=INI)
    pytester.makeconftest(CONFTEST)
    return pytester


def run(project: pytest.Pytester, *args: str) -> tuple[pytest.RunResult, list[dict[str, Any]]]:
    """Run pytest in a subprocess; return its result and the graded records it wrote."""
    results = project.path / "results.jsonl"
    result = project.runpytest_subprocess(
        "-p",
        "no:randomly",
        "-p",
        "no:cacheprovider",
        f"--conformance-results={results}",
        *args,
        timeout=50,
    )
    lines = results.read_text(encoding="utf-8").splitlines() if results.exists() else []
    return result, [json.loads(line) for line in lines]


def by_test(records: list[dict[str, Any]], impl: str = FULL) -> dict[str, dict[str, Any]]:
    """The records of one implementation, by test function name."""
    return {r["test"]: r for r in records if r["implementation"] == NAMES[impl]}


def collected(result: pytest.RunResult) -> list[str]:
    """Node IDs listed by ``--collect-only -q``."""
    return [line for line in result.outlines if "::" in line]


# -- choosing implementations ---------------------------------------------------


def test_impl_option_when_name_is_unknown_then_usage_error_lists_registered_names(
    project: pytest.Pytester,
) -> None:
    project.makepyfile(
        test_cases="""
        import pytest

        @pytest.mark.case("FUNC-1")
        def test_ok(impl):
            pass
        """
    )
    result, records = run(project, "--impl", "nosuch")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    err = result.stderr.str()
    assert "Unknown implementation 'nosuch'" in err
    registered = err.split("Registered: ", 1)[1].split(".", 1)[0].split(", ")
    assert "reference" in registered, err
    assert "module:factory" in err
    assert records == []


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("tests.fake_impls:NoSuchFactory", "Cannot load implementation"),
        ("tests.fake_impls:not_an_implementation", "not a conformance.contract.Implementation"),
    ],
)
def test_load_implementation_when_path_is_wrong_then_usage_error(name: str, message: str) -> None:
    with pytest.raises(pytest.UsageError, match=message):
        plugin.load_implementation(name)


def test_impl_option_when_two_dotted_paths_given_then_each_case_runs_once_per_impl_named_in_node_id(
    project: pytest.Pytester,
) -> None:
    project.makepyfile(
        test_cases="""
        import pytest

        @pytest.mark.case("FUNC-1")
        def test_one(impl):
            pass

        @pytest.mark.case("FUNC-2")
        def test_two(impl):
            assert impl.name in ("full", "bare")
        """
    )
    result, records = run(project, "-v", "--impl", FULL, "--impl", BARE)
    result.assert_outcomes(passed=4)
    # Named in node IDs by the names they declare, not the paths given.
    assert sorted(r["nodeid"] for r in records) == sorted(
        f"test_cases.py::{test}[{NAMES[impl]}]"
        for test in ("test_one", "test_two")
        for impl in (FULL, BARE)
    )
    for record in records:
        assert record["nodeid"].endswith(f"[{record['implementation']}]")
        assert record["grade"] == "pass"
    assert {r["impl_version"] for r in records} == {"1.2.3", "0.0.1"}
    result.stdout.fnmatch_lines(["*test_one?full? PASSED*", "*test_one?bare? PASSED*"])


def test_results_when_case_is_graded_then_record_has_every_key(project: pytest.Pytester) -> None:
    project.makepyfile(
        test_records="""
        import pytest

        @pytest.mark.case("FUNC-14")
        def test_should(impl):
            pass
        """
    )
    result, records = run(project, "--impl", FULL)
    result.assert_outcomes(passed=1)
    [record] = records
    assert set(record) == RECORD_KEYS
    assert record["case"] == "FUNC-14"
    assert record["level"] == "SHOULD"
    assert record["suite"] == "records"
    assert record["test"] == "test_should"
    assert record["implementation"] == "full"
    assert record["impl_version"] == "1.2.3"
    assert record["mode"] is None
    assert (record["stack"], record["database"], record["platform"]) == (
        "none",
        "memory",
        "fake-os",
    )
    assert record["run_id"]
    assert isinstance(record["duration"], float)


# -- capabilities, expected failures, grades ----------------------------------


def test_requires_marker_when_impl_lacks_capability_then_unsupported_never_pass(
    project: pytest.Pytester,
) -> None:
    project.makepyfile(
        test_caps="""
        import pytest

        @pytest.mark.case("FUNC-12")
        @pytest.mark.requires("http")
        def test_needs_http(impl):
            assert "http" in impl.capabilities
        """,
        test_caps_module="""
        import pytest

        pytestmark = pytest.mark.requires("cancel")

        @pytest.mark.case("FUNC-13")
        @pytest.mark.requires("persistence", "http")
        def test_needs_all(impl):
            assert {"cancel", "persistence", "http"} <= impl.capabilities
        """,
    )
    result, records = run(project, "-rs", "--impl", FULL, "--impl", BARE, "--impl", PARTIAL)
    result.assert_outcomes(passed=3, skipped=3)
    result.stdout.fnmatch_lines(["SKIPPED *unsupported: bare lacks capability 'http'"])
    assert {r["grade"] for r in by_test(records, FULL).values()} == {"pass"}
    assert by_test(records, PARTIAL)["test_needs_http"]["grade"] == "pass"
    bare = by_test(records, BARE)["test_needs_http"]
    assert bare["grade"] == "unsupported"
    assert bare["reason"] == "unsupported: bare lacks capability 'http'"
    # The module's marker adds to the case's own: all three are required.
    bare_all = by_test(records, BARE)["test_needs_all"]
    assert bare_all["grade"] == "unsupported"
    assert (
        bare_all["reason"] == "unsupported: bare lacks capability 'cancel', 'http', 'persistence'"
    )
    partial = by_test(records, PARTIAL)["test_needs_all"]
    assert partial["grade"] == "unsupported"
    assert partial["reason"] == "unsupported: partial lacks capability 'cancel'"


def test_missing_when_needs_is_a_generator_then_every_lacking_capability_reported() -> None:
    impl = plugin.load_implementation(PARTIAL)
    assert requirements.missing(impl, (n for n in ["cancel", "http", "cancel"])) == ["cancel"]
    with pytest.raises(ValueError, match="Unknown capability 'htp'"):
        requirements.missing(impl, iter(["htp"]))


def test_expected_failure_when_case_fails_then_xfail_and_when_it_passes_then_run_fails_with_error(
    project: pytest.Pytester,
) -> None:
    # XfailImpl declares FUNC-1 an expected failure, and its start() raises.
    project.makepyfile(
        test_xfail="""
        import pytest

        @pytest.mark.case("FUNC-1")
        def test_fails(impl):
            assert False, "dropped an event"

        @pytest.mark.case("FUNC-1")
        def test_passes(impl):
            pass

        @pytest.mark.case("FUNC-1")
        @pytest.mark.asyncio
        async def test_fails_in_setup(runtime):
            pass

        @pytest.mark.case("FUNC-2")
        @pytest.mark.asyncio
        async def test_undeclared_fails_in_setup(runtime):
            pass
        """
    )
    result, records = run(project, "--impl", XFAIL)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.assert_outcomes(xfailed=2, failed=1, errors=1)
    result.stdout.fnmatch_lines(["*XPASS(strict)*xfail declares FUNC-1: known to drop events*"])
    grades = {name: (r["grade"], r["reason"]) for name, r in by_test(records, XFAIL).items()}
    assert grades["test_fails"] == ("xfail", "xfail declares FUNC-1: known to drop events")
    assert grades["test_fails_in_setup"] == ("xfail", "xfail declares FUNC-1: known to drop events")
    assert grades["test_passes"][0] == "error"
    assert grades["test_passes"][1].startswith("unexpected pass of an expected failure")
    assert grades["test_undeclared_fails_in_setup"][0] == "error"
    assert grades["test_undeclared_fails_in_setup"][1].startswith("setup failed:")
    assert "fake implementation cannot start" in grades["test_undeclared_fails_in_setup"][1]


def test_expected_failure_when_key_names_a_part_then_only_tests_containing_it_are_declared() -> (
    None
):
    from tests.fake_impls import FullImpl

    class Partly(FullImpl):
        expected_failures = {"FUNC-6:http": "notices no client leaving", "FUNC-9": "no status"}

    impl = Partly()
    declared = requirements.expected_failure(impl, "FUNC-6", "test_x[partly-http]")
    assert declared is not None and declared.kwargs["strict"] is True
    assert "declares FUNC-6:http: notices no client leaving" in declared.kwargs["reason"]
    assert requirements.expected_failure(impl, "FUNC-6", "test_x[partly-inprocess]") is None
    assert requirements.expected_failure(impl, "FUNC-7", "test_x[partly-http]") is None
    assert requirements.expected_failure(impl, "FUNC-9", "test_y[partly-inprocess]") is not None


def test_racy_failure_when_case_fails_or_passes_then_xfail_either_way(
    project: pytest.Pytester,
) -> None:
    project.makepyfile(
        test_racy="""
        import pytest

        @pytest.mark.case("FUNC-3")
        def test_lost_the_race(impl):
            assert False, "two starts won"

        @pytest.mark.case("FUNC-3")
        def test_won_the_race(impl):
            pass

        @pytest.mark.case("FUNC-4")
        def test_undeclared(impl):
            assert False, "not declared"
        """
    )
    result, records = run(project, "--impl", RACY)
    assert result.ret == pytest.ExitCode.TESTS_FAILED  # the undeclared failure still fails
    grades = {name: (r["grade"], r["reason"]) for name, r in by_test(records, RACY).items()}
    assert grades["test_lost_the_race"][0] == "xfail"
    assert (
        "failing in some interleavings: loses the race sometimes"
        in (grades["test_lost_the_race"][1])
    )
    assert grades["test_won_the_race"][0] == "xfail"
    assert grades["test_won_the_race"][1].startswith("passed this time; racy:")
    assert grades["test_undeclared"][0] == "fail"


def test_grade_when_must_or_should_breaks_or_case_hangs_then_fail_non_strict_or_error(
    project: pytest.Pytester,
) -> None:
    project.makepyfile(
        test_grades="""
        import threading

        import pytest

        @pytest.mark.case("FUNC-1")
        def test_holds(impl):
            pass

        @pytest.mark.case("FUNC-10")
        def test_must_breaks(impl):
            assert 1 + 1 == 3, "MUST broken"

        @pytest.mark.case("FUNC-14")
        def test_should_breaks(impl):
            assert 1 + 1 == 3, "SHOULD broken"

        @pytest.mark.case("FUNC-11")
        @pytest.mark.timeout(0.5)
        def test_hangs(impl):
            threading.Event().wait()  # the hang under test: nothing ever sets it
        """
    )
    result, records = run(project, "--impl", FULL)
    result.assert_outcomes(passed=1, failed=3)
    grades = by_test(records)
    assert grades["test_holds"]["grade"] == "pass"
    assert (grades["test_must_breaks"]["grade"], grades["test_must_breaks"]["level"]) == (
        "fail",
        "MUST",
    )
    assert "MUST broken" in grades["test_must_breaks"]["reason"]
    assert (grades["test_should_breaks"]["grade"], grades["test_should_breaks"]["level"]) == (
        "non-strict",
        "SHOULD",
    )
    assert "SHOULD broken" in grades["test_should_breaks"]["reason"]
    assert grades["test_hangs"]["grade"] == "error"
    assert grades["test_hangs"]["reason"].startswith("timed out")


def test_interrupt_when_a_task_raises_keyboard_interrupt_then_graded_fail_and_run_goes_on(
    project: pytest.Pytester,
) -> None:
    project.makepyfile(
        test_interrupt="""
        import asyncio

        import pytest


        async def interrupts(ctx):
            raise KeyboardInterrupt("raised by the task")


        @pytest.mark.case("EDGE-1")
        @pytest.mark.asyncio
        async def test_task_interrupts(runtime):
            ref = await runtime.create_task(interrupts)
            assert await runtime.start_task(ref)
            await asyncio.Event().wait()  # the fake lets the interrupt out of the loop


        @pytest.mark.case("FUNC-1")
        def test_after(impl):
            pass
        """
    )
    result, records = run(project, "--impl", FULL, "-p", "no:randomly")
    # The fake never records the run the interrupt ended, so its teardown finds it held.
    result.assert_outcomes(passed=1, failed=1, errors=1)
    grades = by_test(records)
    assert grades["test_task_interrupts"]["grade"] == "fail"
    assert "KeyboardInterrupt raised by a task escaped" in grades["test_task_interrupts"]["reason"]
    assert grades["test_after"]["grade"] == "pass"


# -- selection ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--case", "FUNC-1"], ["test_func_1"]),
        (["--case", "FUNC"], ["test_func_1", "test_func_10", "test_func_11", "test_func_12"]),
        (["--case", "FUNC-12", "--case", "HTTP"], ["test_func_12", "test_http_1"]),
        (["-k", "FUNC-12"], ["test_func_12"]),
        (["-k", "HTTP-1 or test_not_a_case"], ["test_http_1", "test_not_a_case"]),
    ],
    ids=["case-FUNC-1", "case-FUNC", "case-two-prefixes", "k-FUNC-12", "k-or"],
)
def test_selection_when_case_or_k_given_then_exactly_matching_cases_collected(
    project: pytest.Pytester, args: list[str], expected: list[str]
) -> None:
    project.makepyfile(test_select=SELECTION_CASES)
    result, _ = run(project, "--collect-only", "-q", "--impl", FULL, *args)
    assert result.ret == pytest.ExitCode.OK
    ids = [
        f"test_select.py::{name}" + ("" if name == "test_not_a_case" else f"[{NAMES[FULL]}]")
        for name in expected
    ]
    assert collected(result) == ids


# -- usage errors -------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "messages"),
    [
        (
            """
            import pytest

            @pytest.mark.case("FUNC-999")
            def test_cites_unknown(impl):
                pass
            """,
            ["test_usage.py::test_cites_unknown", "'FUNC-999' is not stated in SPEC.md"],
        ),
        (
            """
            def test_no_case_marker(impl):
                pass
            """,
            ["test_usage.py::test_no_case_marker", "@pytest.mark.case"],
        ),
        (
            """
            import pytest

            pytestmark = pytest.mark.requires("http")

            @pytest.mark.case("FUNC-1")
            @pytest.mark.requires("htp")
            def test_misspelt_capability(impl):
                pass
            """,
            ["test_usage.py::test_misspelt_capability", "Unknown capability 'htp'"],
        ),
    ],
    ids=["unknown-id", "no-case-marker", "unknown-capability"],
)
def test_collection_when_case_id_or_capability_unknown_or_id_missing_then_usage_error(
    project: pytest.Pytester, source: str, messages: list[str]
) -> None:
    project.makepyfile(test_usage=source)
    result, records = run(project, "--impl", FULL)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    err = result.stderr.str()
    for message in messages:
        assert message in err
    assert records == []


# -- hygiene ------------------------------------------------------------------


def test_hygiene_when_case_leaves_subscriber_or_pending_task_then_teardown_fails_graded_hygiene(
    project: pytest.Pytester,
) -> None:
    project.makepyfile(
        test_hygiene="""
        import asyncio

        import pytest

        pytestmark = pytest.mark.asyncio
        LEAKED = []


        async def two_steps(ctx):
            await ctx.send_event("step", {"n": 1})
            await ctx.send_event("step", {"n": 2})
            return {"done": True}


        @pytest.mark.case("FUNC-1")
        async def test_clean(runtime):
            ref = await runtime.create_task(two_steps)
            subscription = await runtime.subscribe(ref)
            assert await runtime.start_task(ref)
            events = [event async for event in subscription]
            await subscription.aclose()
            assert [e.type for e in events] == ["step", "step", "complete"]
            assert [e.id for e in events] == [1, 2, 3]


        @pytest.mark.case("FUNC-7")
        async def test_leaves_subscriber(runtime):
            ref = await runtime.create_task(two_steps)
            await runtime.subscribe(ref)  # never closed


        @pytest.mark.case("FUNC-11")
        async def test_leaks_task(runtime):
            LEAKED.append(asyncio.create_task(asyncio.Event().wait(), name="leaky-task"))
        """
    )
    result, records = run(project, "--impl", FULL)
    result.assert_outcomes(passed=3, errors=2)
    grades = by_test(records)
    assert grades["test_clean"]["grade"] == "pass"
    subscriber = grades["test_leaves_subscriber"]
    assert subscriber["grade"] == "fail"
    assert subscriber["reason"].startswith("hygiene:")
    assert "subscriber" in subscriber["reason"]
    task = grades["test_leaks_task"]
    assert task["grade"] == "fail"
    assert task["reason"].startswith("hygiene:")
    assert "leaky-task" in task["reason"]


def _report(when: str, outcome: str, longrepr: Any = None) -> pytest.TestReport:
    return pytest.TestReport("t.py::t", ("t.py", 1, "t"), {}, outcome, longrepr, when)


def test_grade_when_a_should_case_leaks_then_fail_not_non_strict() -> None:
    phases = {
        "setup": _report("setup", "passed"),
        "call": _report("call", "passed"),
        "teardown": _report("teardown", "failed", "E   HygieneError: tasks still pending"),
    }
    grade, reason = plugin.grade(phases, plugin.spec.Level.SHOULD)
    assert (grade, reason.startswith("hygiene:")) == ("fail", True)


@pytest.mark.parametrize(
    ("reason", "expected"),
    [
        ("unsupported: x lacks capability 'http'", "unsupported"),
        ("database not reachable", "error"),
    ],
)
def test_grade_when_skipped_then_unsupported_only_for_a_missing_capability(
    reason: str, expected: str
) -> None:
    phases = {"setup": _report("setup", "skipped", ("t.py", 1, f"Skipped: {reason}"))}
    assert plugin.grade(phases, plugin.spec.Level.MUST)[0] == expected


LINELESS_CASE = """
import types

import pytest


def _lineless_traceback():
    # A generator's frame, and an instruction of its code that has no line
    # number: where a signal handler (pytest-timeout's alarm, a Ctrl+C) may
    # raise on Python 3.11+, leaving a traceback entry whose tb_lineno is None.
    def steps():
        try:
            yield 1
        except ValueError as exc:
            yield exc
        for step in range(3):
            yield step

    frame = steps().gi_frame
    offset = next(start for start, _, line in steps.__code__.co_lines() if line is None)
    return types.TracebackType(None, frame, offset, -1)


@pytest.mark.case("FUNC-1")
def test_func_1(impl):
    lineless = _lineless_traceback()
    assert lineless.tb_lineno is None
    raise AssertionError("raised where no line is").with_traceback(lineless)


@pytest.mark.case("HTTP-1")
def test_http_1(impl):
    pass
"""


def test_case_when_its_traceback_has_an_entry_without_a_line_then_graded_fail_and_run_goes_on(
    project: pytest.Pytester,
) -> None:
    # pytest's report of such a failure raised TypeError (tb_lineno - 1), an
    # internal error that ended the whole session (CI, stop 20 and 21: baseline).
    project.makepyfile(test_cases=LINELESS_CASE)
    result, records = run(project, "--impl", FULL, "test_cases.py")
    assert result.ret == 1, result.stdout.str()[-3000:]
    graded = by_test(records)
    assert graded["test_func_1"]["grade"] == "fail", graded
    assert "raised where no line is" in graded["test_func_1"]["reason"], graded
    assert graded["test_http_1"]["grade"] == "pass", graded


# -- what a first plug-in meets -----------------------------------------------------


def test_no_impl_when_cases_are_collected_then_usage_error_lists_registered_ones(
    project: pytest.Pytester,
) -> None:
    project.makepyfile(
        test_cases="""
        import pytest

        @pytest.mark.case("FUNC-1")
        def test_one(impl):
            pass
        """
    )
    result = project.runpytest_subprocess("-p", "no:randomly", timeout=50)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: No implementation named: pass --impl NAME (registered:*"])
    # A session with no conformance case needs none: the plugin stays out of the way.
    project.makepyfile(test_cases="def test_plain():\n    pass\n")
    plain = project.runpytest_subprocess("-p", "no:randomly", timeout=50)
    plain.assert_outcomes(passed=1)


def test_method_when_it_raises_not_implemented_then_graded_error_naming_it(
    project: pytest.Pytester,
) -> None:
    project.makepyfile(
        test_cases="""
        import pytest

        @pytest.mark.case("EDGE-4")
        @pytest.mark.asyncio
        async def test_retry(runtime):
            await runtime.retry_task(None)

        @pytest.mark.case("FUNC-1")
        def test_after(impl):
            pass
        """
    )
    _, records = run(project, "--impl", FULL)
    grades = {r["test"]: (r["grade"], r["reason"]) for r in records}
    assert grades["test_after"] == ("pass", "")
    grade, reason = grades["test_retry"]
    assert grade == "error", grades
    assert reason.startswith("not implemented: Runtime.retry_task: "), reason
    assert "does not declare the 'retry' capability" in reason


def test_not_implemented_when_raised_below_the_contract_then_graded_as_a_failure(
    project: pytest.Pytester,
) -> None:
    # Machinery that raises NotImplementedError has a bug, not a missing
    # capability: a broken MUST fails, it is not excused as an error.
    project.makepyfile(
        test_cases="""
        import pytest

        def _machinery():
            raise NotImplementedError("half-built branch")

        @pytest.mark.case("FUNC-1")
        def test_deep(impl):
            _machinery()
        """
    )
    _, records = run(project, "--impl", FULL)
    (record,) = records
    assert (record["grade"], record["level"]) == ("fail", "MUST"), record
    assert "half-built branch" in record["reason"]


def test_partial_run_when_some_cases_selected_then_the_summary_says_so(
    project: pytest.Pytester,
) -> None:
    project.makepyfile(test_select=SELECTION_CASES)
    result, _ = run(project, "--impl", FULL, "--case", "FUNC-1")
    result.stdout.fnmatch_lines(
        ["partial run: 1 of the suite's * requirements were graded (FUNC); *"]
    )


def test_xdist_when_cases_run_in_several_workers_then_one_results_file_holds_them_all(
    project: pytest.Pytester,
) -> None:
    project.makepyfile(test_select=SELECTION_CASES)
    result, records = run(project, "--impl", FULL, "-n", "2")
    assert result.ret == pytest.ExitCode.OK, result.stdout.str()
    assert sorted(r["case"] for r in records) == [
        "FUNC-1",
        "FUNC-10",
        "FUNC-11",
        "FUNC-12",
        "HTTP-1",
    ]
    assert len({r["run_id"] for r in records}) == 1  # one run, though two workers wrote it
    result.stdout.fnmatch_lines(["full: pass 5"])
