"""Tests for ``python -m conformance report`` (conformance/report.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from conformance import cases, report  # noqa: E402
from conformance.__main__ import main as cli_main  # noqa: E402

RUN_1 = "2026-11-22T23:01:02Z-1234"
RUN_2 = "2026-11-23T08:00:00Z-5678"
SUITE_FILE = "conformance/suites/test_functional.py"


def record(**overrides: Any) -> dict[str, Any]:
    """Return a valid result record, with fields overridden."""
    case = overrides.get("case", "FUNC-1")
    test = overrides.get("test", "test_x_when_y_then_z")
    base: dict[str, Any] = {
        "case": case,
        "level": "MUST",
        "suite": "functional",
        "nodeid": f"{SUITE_FILE}::{test}[{case}-reference-inprocess]",
        "test": test,
        "implementation": "reference",
        "impl_version": "0.1.0",
        "mode": "inprocess",
        "grade": "pass",
        "reason": "",
        "duration": 0.123,
        "python": "3.11.7",
        "stack": "Django 5.2.19",
        "database": "sqlite",
        "platform": "Linux-x86_64",
        "run_id": RUN_1,
    }
    base.update(overrides)
    return base


def write_jsonl(path: Path, *records: dict[str, Any] | str) -> Path:
    """Write records (dicts as JSON, strings verbatim) one per line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [item if isinstance(item, str) else json.dumps(item) for item in records]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def section(markdown: str, title: str) -> str:
    """Return the body of one `## title` section of the Markdown report."""
    body = markdown.split(f"## {title}\n", 1)[1]
    return body.split("\n## ", 1)[0]


def table_rows(text: str) -> list[list[str]]:
    """Return the data rows of the Markdown tables in text, cells stripped."""
    rows = [line for line in text.splitlines() if line.startswith("|")]
    headers = {i - 1 for i, row in enumerate(rows) if row.startswith("|---")}
    data = [row for i, row in enumerate(rows) if i not in headers and not row.startswith("|---")]
    return [[cell.strip() for cell in row[2:-2].split(" | ")] for row in data]


def mixed_results(tmp_path: Path) -> Path:
    """Write a file with one result of every grade for the reference implementation."""
    return write_jsonl(
        tmp_path / "reports" / "results-reference.jsonl",
        record(case="FUNC-1", grade="pass"),
        record(case="FUNC-2", grade="pass"),
        record(case="FUNC-3", grade="fail", reason="expected 'done', got 'running'"),
        record(case="FUNC-4", grade="non-strict", level="SHOULD", reason="slow ack"),
        record(case="FUNC-5", grade="xfail", reason="known bug #12"),
        record(case="FUNC-6", grade="unsupported", reason="capability: cancellation"),
        record(case="FUNC-7", grade="unsupported", reason="capability: cancellation"),
        record(case="FUNC-8", grade="error", reason="timeout after 5s"),
    )


def test_summary_when_every_grade_present_then_counts_each_grade(
    tmp_path: Path,
) -> None:
    path = mixed_results(tmp_path)
    markdown = report.render_markdown(report.load_results([path]), [str(path)])
    rows = table_rows(section(markdown, "Summary"))
    assert rows == [
        [
            "reference",
            "sqlite",
            "1",
            "2",
            "1",
            "1",
            "1",
            "2",
            "1",
            "8",
            "does not conform",
            f"partial: FUNC (8 of {len({c.id for c in cases.collect()})})",
        ]
    ]


def test_summary_when_environments_differ_then_one_row_each(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "results-a.jsonl",
        record(database="sqlite", grade="pass"),
        record(database="postgresql", grade="pass"),
        record(database="postgresql", case="FUNC-2", grade="xfail", reason="r"),
    )
    markdown = report.render_markdown(report.load_results([path]), [str(path)])
    rows = table_rows(section(markdown, "Summary"))
    assert [row[1] for row in rows] == ["postgresql", "sqlite"]
    assert rows[0][3:-1] == ["1", "0", "0", "1", "0", "0", "2", "fails as declared"]


def test_summary_when_one_database_has_several_environments_then_one_row_with_ranges(
    tmp_path: Path,
) -> None:
    path = write_jsonl(
        tmp_path / "results-a.jsonl",
        record(python="3.11.7", grade="pass"),
        record(python="3.12.1", grade="pass"),
        record(python="3.12.1", case="FUNC-2", grade="fail", reason="r"),
        record(implementation="misbehaving-hangs", grade="error", reason="timed out"),
    )
    markdown = report.render_markdown(report.load_results([path]), [str(path)])
    [row] = table_rows(section(markdown, "Summary"))
    assert row[:4] == ["reference", "sqlite", "2", "1"]
    assert row[4] == "0..1" and row[-2] == "does not conform", row
    planted = table_rows(section(markdown, "Planted faults"))
    assert planted == [["misbehaving-hangs", "1", "FUNC-1", "error 1"]]


def test_verdict_when_only_pass_unsupported_non_strict_then_conforms(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "results-a.jsonl",
        record(case="FUNC-1", grade="pass"),
        record(case="FUNC-3", grade="unsupported", reason="capability: http"),
        record(case="FUNC-4", grade="non-strict", reason="should be faster"),
    )
    results = report.load_results([path])
    assert report.verdict(results) == "conforms"
    assert (
        table_rows(section(report.render_markdown(results, [str(path)]), "Summary"))[0][-2]
        == "conforms"
    )


def test_verdict_when_declared_failures_and_nothing_else_broken_then_fails_as_declared(
    tmp_path: Path,
) -> None:
    path = write_jsonl(
        tmp_path / "results-a.jsonl",
        record(case="FUNC-1", grade="pass"),
        record(case="FUNC-2", grade="xfail", reason="declared"),
    )
    assert report.verdict(report.load_results([path])) == "fails as declared"


def mutation_summary() -> dict[str, Any]:
    """A small reports/mutation.json, as ``python3 dev.py mutate`` writes it."""
    bus = {
        "generated": 12,
        "mutants": 10,
        "killed": 8,
        "timeout": 1,
        "survived": 1,
        "suspicious": 0,
        "skipped": 0,
        "no_tests": 0,
        "other": 0,
        "equivalent": 1,
        "score": 0.9,
        "score_without_equivalents": 1.0,
    }
    return {
        "command": "python3 dev.py mutate --sample 1 --max-children 2",
        "date": "2026-12-01",
        "tool": "mutmut 3.8.1",
        "sample": 1,
        "total": dict(bus),
        "modules": {"bus.py": bus},
        "estimate": None,
        "equivalents_file": "reference/mutation_equivalents.toml",
        "survivors": [
            {
                "id": "streaming.bus.x_f__mutmut_3",
                "module": "bus.py",
                "function": "f",
                "where": "bus.py:40",
                "status": "survived",
                "change": "`a < b` → `a <= b`",
                "equivalent": True,
                "judged": "equivalent: a == b never happens",
            }
        ],
    }


def test_mutation_when_summary_given_then_scores_modules_and_survivors_shown(
    tmp_path: Path,
) -> None:
    path = write_jsonl(tmp_path / "results-a.jsonl", record())
    results = report.load_results([path])
    markdown = report.render_markdown(results, [str(path)], mutation_summary(), "m.json")
    mutation = section(markdown, "Mutation score")
    assert (
        "9 of 10 mutants of the reference killed (**90.0%**); without the 1 judged "
        "equivalent, 9 of 9 (**100.0%**). By `python3 dev.py mutate --sample 1 "
        "--max-children 2` (mutmut 3.8.1) on 2026-12-01, from `m.json`."
    ) in mutation
    assert "killed 8, timeout 1, survived 1, suspicious 0, skipped 0, no tests 0." in mutation
    assert ["bus.py", "10", "9", "1", "1", "90.0%", "100.0%"] in table_rows(mutation)
    assert (
        "Survivors: 1. Judged equivalent: 1, each with its reason in "
        "`reference/mutation_equivalents.toml`. Not killed: 0."
    ) in mutation
    assert "streaming.bus.x_f__mutmut_3" not in mutation
    assert "A sample" not in mutation


def test_mutation_when_survivor_not_equivalent_then_listed_with_its_judgement(
    tmp_path: Path,
) -> None:
    path = write_jsonl(tmp_path / "results-a.jsonl", record())
    summary = mutation_summary()
    summary["survivors"][0].update(equivalent=False, judged="not killed: test a == b")
    markdown = report.render_markdown(report.load_results([path]), [str(path)], summary)
    assert (
        "| streaming.bus.x_f__mutmut_3 | bus.py:40 | `a &lt; b` → `a &lt;= b` "
        "| not killed: test a == b |"
    ) in section(markdown, "Mutation score")  # cells escaped


def test_mutation_when_sampled_then_estimate_of_all_mutants_shown(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "results-a.jsonl", record())
    summary = mutation_summary()
    summary["sample"] = 4
    summary["estimate"] = {"mutants": 40, "killed": 36, "score": 0.9, "minutes": 80}
    markdown = report.render_markdown(report.load_results([path]), [str(path)], summary)
    assert (
        "A sample: every 4th mutant of each module, 10 of the 40 generated. "
        "Scored module by module as their samples, all of them would be about 90.0% killed."
    ) in section(markdown, "Mutation score")


def test_main_when_mutation_json_exists_then_section_rendered_from_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mixed_results(tmp_path)
    kept = tmp_path / "results" / "mutation.json"
    kept.parent.mkdir()
    kept.write_text(json.dumps(mutation_summary()), encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    assert report.main(["--input-glob", "reports/results-*.jsonl"]) == 0
    mutation = section((tmp_path / "TEST_RESULTS.md").read_text(encoding="utf-8"), "Mutation score")
    assert "9 of 10 mutants of the reference killed (**90.0%**)" in mutation
    assert "from `results/mutation.json`" in mutation


def test_main_when_no_mutation_json_then_section_says_not_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mixed_results(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert report.main(["--input-glob", "reports/results-*.jsonl"]) == 0
    mutation = section((tmp_path / "TEST_RESULTS.md").read_text(encoding="utf-8"), "Mutation score")
    assert mutation.strip() == (
        "Not run: there is no `results/mutation.json`. `python3 dev.py mutate`, "
        "then `python3 dev.py report`, puts one there."
    )


@pytest.mark.parametrize("grade", ["fail", "error"])
def test_verdict_when_fail_or_error_present_then_does_not_conform(grade: str) -> None:
    results = [
        report._record(record(grade="pass"), "a"),
        report._record(record(grade=grade), "a"),
    ]
    assert report.verdict(results) == "does not conform"


def test_failing_cases_when_case_fails_then_listed_with_reason(tmp_path: Path) -> None:
    path = mixed_results(tmp_path)
    failing = section(
        report.render_markdown(report.load_results([path]), [str(path)]),
        "Failing cases",
    )
    rows = table_rows(failing)
    assert [(row[0], row[1]) for row in rows] == [
        ("error", "FUNC-8"),
        ("fail", "FUNC-3"),
        ("non-strict", "FUNC-4"),
    ]
    fail_row = rows[1]
    assert fail_row[2:4] == ["MUST", "test_x_when_y_then_z"]
    assert "reference (sqlite, Python 3.11.7, Django 5.2.19, inprocess)" == fail_row[4]
    assert fail_row[5] == "expected 'done', got 'running'"
    assert "FUNC-5" not in failing and "FUNC-6" not in failing


def test_failing_cases_when_reason_long_with_pipes_then_one_line_truncated_escaped(
    tmp_path: Path,
) -> None:
    reason = "a|b\nsecond <i>line " + "x" * 500
    path = write_jsonl(tmp_path / "results-a.jsonl", record(grade="fail", reason=reason))
    failing = section(
        report.render_markdown(report.load_results([path]), [str(path)]),
        "Failing cases",
    )
    line = next(line for line in failing.splitlines() if line.startswith("| fail |"))
    assert "a\\|b second &lt;i>line xxx" in line
    assert "x" * 250 not in line
    assert line.endswith("… |")


def test_unsupported_when_same_capability_then_grouped_with_case_ids(
    tmp_path: Path,
) -> None:
    path = mixed_results(tmp_path)
    unsupported = section(
        report.render_markdown(report.load_results([path]), [str(path)]),
        "Unsupported cases",
    )
    assert table_rows(unsupported) == [["capability: cancellation", "FUNC-6, FUNC-7", "reference"]]


def test_suite_table_when_two_suites_then_counts_per_suite(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "results-a.jsonl",
        record(case="FUNC-1", suite="functional", grade="pass"),
        record(case="FUNC-2", suite="functional", grade="fail", reason="r"),
        record(case="LOAD-1", suite="load", grade="error", reason="hang"),
    )
    suites = section(
        report.render_markdown(report.load_results([path]), [str(path)]),
        "Results per implementation and suite",
    )
    assert "### reference" in suites
    assert table_rows(suites) == [
        ["functional", "1", "1", "0", "0", "0", "0", "2"],
        ["load", "0", "0", "0", "0", "0", "1", "1"],
    ]


def test_environment_when_rendered_then_lists_versions_run_ids_and_sources(
    tmp_path: Path,
) -> None:
    path = write_jsonl(tmp_path / "results-a.jsonl", record(stack=None, mode=None))
    markdown = report.render_markdown(report.load_results([path]), [str(path)])
    rows = table_rows(section(markdown, "Environment"))
    env = ["reference", "sqlite", "3.11.7", "n/a"]
    assert rows == [[*env, "0.1.0", "n/a", "Linux-x86_64", "n/a", RUN_1, str(path)]]


def test_markdown_when_rendered_then_starts_with_generated_notice(
    tmp_path: Path,
) -> None:
    path = write_jsonl(tmp_path / "results-a.jsonl", record())
    markdown = report.render_markdown(report.load_results([path]), [str(path)])
    first = markdown.splitlines()[0]
    assert "python -m conformance report" in first
    assert str(path) in first
    assert "do not edit by hand" in first


def test_load_when_duplicate_runs_then_latest_run_id_wins(tmp_path: Path) -> None:
    newer = write_jsonl(tmp_path / "results-1.jsonl", record(grade="pass", run_id=RUN_2))
    older = write_jsonl(tmp_path / "results-2.jsonl", record(grade="fail", run_id=RUN_1))
    results = report.load_results([newer, older])
    assert [(r.grade, r.run_id, r.source) for r in results] == [("pass", RUN_2, str(newer))]


def test_load_when_same_test_in_other_mode_then_both_kept(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "results-a.jsonl",
        record(mode="inprocess"),
        record(mode="http", grade="fail"),
    )
    assert sorted(r.mode or "" for r in report.load_results([path])) == [
        "http",
        "inprocess",
    ]


def test_load_when_malformed_lines_then_skipped_and_reported(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_jsonl(
        tmp_path / "results-a.jsonl",
        record(case="FUNC-1"),
        "{not json",
        "",
        "[1, 2]",
        json.dumps(record(grade="bogus")),
        json.dumps({"case": "FUNC-9"}),
        record(case="FUNC-2", extra_key="ignored"),
    )
    results = report.load_results([path])
    assert [r.case for r in results] == ["FUNC-1", "FUNC-2"]
    err = capsys.readouterr().err
    for line_number in (2, 3, 4, 5, 6):
        assert f"{path}:{line_number}:" in err
    assert f"{path}:2: invalid JSON" in err
    assert f"{path}:3: blank line" in err
    assert f"{path}:1:" not in err and f"{path}:7:" not in err


def test_render_when_repeated_or_input_shuffled_then_byte_identical(
    tmp_path: Path,
) -> None:
    path = mixed_results(tmp_path)
    first = report.load_results([path])
    markdown, page = (
        report.render_markdown(first, [str(path)]),
        report.render_html(first),
    )
    lines = path.read_text(encoding="utf-8").splitlines()
    write_jsonl(path, *reversed(lines))
    again = report.load_results([path])
    assert again == first
    assert report.render_markdown(again, [str(path)]) == markdown
    assert report.render_html(again) == page
    assert report.render_markdown(first, ["b", "a"]) == report.render_markdown(first, ["a", "b"])
    assert report.render_markdown(list(reversed(first)), [str(path)]) == markdown


def test_main_when_no_inputs_match_then_exit_2_with_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pattern = str(tmp_path / "nothing-*.jsonl")
    code = report.main(["--input-glob", pattern, "--output", str(tmp_path / "out.md")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and pattern in err and "Traceback" not in err
    assert not (tmp_path / "out.md").exists()


def test_main_when_inputs_match_then_writes_markdown_and_html(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mixed_results(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert (
        report.main(["--input-glob", "reports/results-*.jsonl", "--html", "reports/matrix.html"])
        == 0
    )
    markdown = (tmp_path / "TEST_RESULTS.md").read_text(encoding="utf-8")
    page = (tmp_path / "reports" / "matrix.html").read_text(encoding="utf-8")
    assert "`reports/results-reference.jsonl`" in markdown.splitlines()[0]
    assert "| reference | sqlite | 1 | 2 | 1 | 1 | 1 | 2 | 1 | 8 |" in markdown
    assert page.startswith("<!DOCTYPE html>") and "FUNC-8" in page


def test_cli_when_report_subcommand_then_dispatches_to_report(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "results-a.jsonl", record())
    output = tmp_path / "nested" / "TEST_RESULTS.md"
    code = cli_main(["report", "--input-glob", str(path), "--output", str(output)])
    assert code == 0
    assert "| reference | sqlite |" in output.read_text(encoding="utf-8")


def test_cli_when_no_subcommand_then_usage_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli_main([])
    assert exit_info.value.code == 2
    assert "COMMAND" in capsys.readouterr().err


def soak_summary(**overrides: Any) -> dict[str, Any]:
    """A summary as ``python -m conformance soak`` writes it."""
    return {
        "impl": "reference",
        "seed": 27,
        "duration": 600.0,
        "workers": 2,
        "database": "postgresql",
        "redis": True,
        "date": "2026-12-07",
        "ran": 649.2,
        "counts": {"tasks": 911, "events": 38783, "clients": 2434},
        "faults": {"redis-stop": 8, "sigkill": 15},
        "ok": True,
        "violations": {},
        "first": [],
        **overrides,
    }


def test_main_when_soak_summaries_kept_then_each_run_and_its_verdict_shown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mixed_results(tmp_path)
    kept = tmp_path / "results"
    kept.mkdir()
    again = soak_summary(judged_again=True)
    (kept / "soak-reference-postgresql-2w-600s.json").write_text(json.dumps(again))
    broken = soak_summary(
        impl="independent",
        workers=1,
        database="own",
        redis=False,
        ok=False,
        violations={"cancel": 2, "recovery": 1},
        first=["a cancel of soak/3 answered true, but the task ended FAILED"],
    )
    (kept / "soak-independent-own-1w-90s.json").write_text(json.dumps(broken))
    monkeypatch.chdir(tmp_path)
    assert report.main(["--input-glob", "reports/results-*.jsonl"]) == 0
    soak = section((tmp_path / "TEST_RESULTS.md").read_text(encoding="utf-8"), "Soak under faults")
    rows = {row[0]: row for row in table_rows(soak)}
    assert rows["reference"][1:4] == ["2", "postgresql + Redis", "27"]
    assert rows["reference"][4] == "649 s (2026-12-07, judged again from its history)"
    assert rows["independent"][4] == "649 s (2026-12-07)"
    assert rows["reference"][5] == "911 tasks, 38783 events, 2434 clients"
    assert rows["reference"][6:] == ["redis-stop 8, sigkill 15", "clean"]
    assert rows["independent"][7] == "**3 violations**: cancel 2, recovery 1"
    assert "- independent: a cancel of soak/3 answered true, but the task ended FAILED" in soak


def test_main_when_no_soak_summary_then_section_says_not_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mixed_results(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert report.main(["--input-glob", "reports/results-*.jsonl"]) == 0
    soak = section((tmp_path / "TEST_RESULTS.md").read_text(encoding="utf-8"), "Soak under faults")
    assert soak.strip().startswith("Not run: no soak summary in `results/soak-*.json`.")
