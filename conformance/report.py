"""Render conformance results (JSON lines) as TEST_RESULTS.md and an HTML matrix.

The pytest plugin writes one JSON object per test outcome into
``reports/results-*.jsonl``; the ones a report is made from are kept, in the
repository, in ``results/``. This module merges those files (for a repeated
test the newest ``run_id`` wins) and renders deterministic reports from them,
with the mutation score of ``results/mutation.json`` when there is one.
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import html
import json
import os
import re
import string
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from . import cases

GRADES = ("pass", "fail", "non-strict", "xfail", "unsupported", "error")
FAILING_GRADES = ("error", "fail", "non-strict")
_BY_SEVERITY = ("pass", "xfail", "unsupported", "non-strict", "fail", "error")
_REQUIRED_KEYS = ("case", "nodeid", "implementation", "grade", "run_id")
_NULLABLE_KEYS = ("mode", "stack", "contract")
_ENV_HEADERS = ("Implementation", "Database", "Python", "Stack")
_ENV_DETAILS = {  # Environment-section column -> CaseResult attribute
    "Version": "impl_version",
    "Contract": "contract",
    "Platform": "platform",
    "Modes": "mode",
    "Run ids": "run_id",
    "Input files": "source",
}
REASON_LIMIT = 200
NOT_APPLICABLE = "n/a"
DEFAULT_GLOB = "results/*.jsonl"
DEFAULT_MUTATION = "results/mutation.json"
DEFAULT_SOAKS = "results/soak-*.json"
SOAK_COMMAND = "python -m conformance soak"
DEFAULT_OUTPUT = "TEST_RESULTS.md"
COMMAND = "python -m conformance report"
DESCRIPTION = "Render conformance results as TEST_RESULTS.md and an HTML matrix."

K = TypeVar("K", bound=tuple[str, ...])
Column = tuple[str, str, str, str, str]


@dataclasses.dataclass(frozen=True)
class CaseResult:
    """One test outcome for one implementation in one environment."""

    case: str
    level: str
    suite: str
    nodeid: str
    test: str
    implementation: str
    impl_version: str
    mode: str | None
    grade: str
    reason: str
    duration: float
    python: str
    #: The framework and its version, as the implementation names it ("Django 5.2.19").
    stack: str | None
    database: str
    platform: str
    run_id: str
    source: str
    #: The contract version it was graded against ("2.1", "1 (shims)"); None in old results.
    contract: str | None = None

    @property
    def environment(self) -> tuple[str, str, str, str]:
        """Return the (implementation, database, python, stack) environment."""
        stack = self.stack or NOT_APPLICABLE
        return (self.implementation, self.database, self.python, stack)

    @property
    def column(self) -> Column:
        """Return the environment plus execution mode (one HTML matrix column)."""
        return (*self.environment, self.mode or NOT_APPLICABLE)

    @property
    def identity(self) -> tuple[str | None, ...]:
        """Return the key under which repeated runs replace each other."""
        return (self.nodeid, *self.environment[:3], self.stack, self.mode)


# --- loading ---------------------------------------------------------------


def _warn(message: str) -> None:
    """Report a skipped input problem on stderr."""
    print(message, file=sys.stderr)


def _problem(raw: object) -> str | None:
    """Describe why a decoded line is not a usable record, or return None."""
    if not isinstance(raw, dict):
        return "not a JSON object"
    missing = [key for key in _REQUIRED_KEYS if raw.get(key) in (None, "")]
    if missing:
        return "missing " + ", ".join(missing)
    if raw["grade"] not in GRADES:
        return f"unknown grade {raw['grade']!r}"
    return None


def _record(raw: dict[str, Any], source: str) -> CaseResult:
    """Build a CaseResult from a validated JSON object, ignoring unknown keys."""
    values: dict[str, Any] = {}
    for field in dataclasses.fields(CaseResult):
        value = raw.get(field.name)
        if field.name == "source":
            values[field.name] = source
        elif field.name == "duration":
            values[field.name] = float(value) if isinstance(value, int | float) else 0.0
        elif field.name in _NULLABLE_KEYS:
            values[field.name] = None if value in (None, "") else str(value)
        else:
            values[field.name] = "" if value is None else str(value)
    return CaseResult(**values)


def _parse_line(line: str, where: str, source: str) -> CaseResult | None:
    """Parse one input line, warning about (and skipping) a bad one."""
    if not line.strip():
        _warn(f"{where}: blank line, skipped")
        return None
    try:
        raw = json.loads(line)
    except json.JSONDecodeError as exc:
        _warn(f"{where}: invalid JSON ({exc.msg}), skipped")
        return None
    problem = _problem(raw)
    if problem is not None:
        _warn(f"{where}: {problem}, skipped")
        return None
    return _record(raw, source)


def _read_file(path: str | os.PathLike[str]) -> list[CaseResult]:
    """Read every valid record of one JSON-lines file."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        _warn(f"{source}: cannot read ({exc.strerror or exc}), skipped")
        return []
    lines = text.removesuffix("\n").split("\n") if text else []
    parsed = (_parse_line(ln, f"{source}:{n}", source) for n, ln in enumerate(lines, 1))
    return [result for result in parsed if result is not None]


def latest_runs(results: Iterable[CaseResult]) -> list[CaseResult]:
    """Keep one result per test and environment: the one with the newest run_id."""
    latest: dict[tuple[str | None, ...], CaseResult] = {}
    for result in results:
        kept = latest.get(result.identity)
        if kept is None or result.run_id >= kept.run_id:
            latest[result.identity] = result
    return list(latest.values())


def load_results(paths: Iterable[str | os.PathLike[str]]) -> list[CaseResult]:
    """Load result files, keeping the latest run of each test, sorted."""
    return sort_results(latest_runs(r for path in paths for r in _read_file(path)))


# --- ordering and grouping -------------------------------------------------


def natural_key(text: str) -> tuple[tuple[str | int, ...], str]:
    """Return a sort key ordering embedded numbers numerically (FUNC-2 < FUNC-10)."""
    parts = re.split(r"(\d+)", text)
    return tuple(int(p) if i % 2 else p.casefold() for i, p in enumerate(parts)), text


def _tuple_key(values: Sequence[str]) -> tuple[tuple[tuple[str | int, ...], str], ...]:
    """Return a natural sort key for a tuple of strings."""
    return tuple(natural_key(value) for value in values)


def _result_key(result: CaseResult) -> tuple[object, ...]:
    """Return the sort key of a result: environment, mode, case ID, test node."""
    r = result
    return (_tuple_key(r.column), natural_key(r.case), r.nodeid, r.run_id, r.source)


def sort_results(results: Iterable[CaseResult]) -> list[CaseResult]:
    """Sort results by environment, mode, case ID and test node."""
    return sorted(results, key=_result_key)


def _grouped(
    results: Iterable[CaseResult], key: Callable[[CaseResult], K]
) -> list[tuple[K, list[CaseResult]]]:
    """Group results by a tuple key, groups in natural order of the key."""
    groups: dict[K, list[CaseResult]] = {}
    for result in results:
        groups.setdefault(key(result), []).append(result)
    return sorted(groups.items(), key=lambda item: _tuple_key(item[0]))


def _joined(values: Iterable[str]) -> str:
    """Join distinct non-empty values in natural order."""
    distinct = sorted({value for value in values if value}, key=natural_key)
    return ", ".join(distinct) or NOT_APPLICABLE


def _label(result: CaseResult) -> str:
    """Describe a result's environment and mode in one line."""
    implementation, database, python, stack, mode = result.column
    return f"{implementation} ({database}, Python {python}, {stack}, {mode})"


# --- Markdown --------------------------------------------------------------


def _md_cell(text: str) -> str:
    """Make text safe for one Markdown table cell: one line, `|` and `<` escaped."""
    return " ".join(text.split()).replace("|", "\\|").replace("<", "&lt;")


def _short_reason(reason: str) -> str:
    """Return the reason on one line, cut to REASON_LIMIT characters (unescaped)."""
    line = " ".join(reason.split())
    if len(line) > REASON_LIMIT:
        line = line[: REASON_LIMIT - 1].rstrip() + "…"
    return line


def _md_table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    """Render a Markdown table, escaping every data cell."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(_md_cell(cell) for cell in row) + " |" for row in rows]
    return lines


def _counts(results: Sequence[CaseResult]) -> list[str]:
    """Return the count of each grade (in GRADES order) and the total."""
    counter = Counter(result.grade for result in results)
    return [str(counter[grade]) for grade in GRADES] + [str(len(results))]


def verdict(results: Sequence[CaseResult]) -> str:
    """Return "conforms", "fails as declared" (only expected failures) or "does not conform"."""
    if any(result.grade in ("fail", "error") for result in results):
        return "does not conform"
    if any(result.grade == "xfail" for result in results):
        return "fails as declared"
    return "conforms"


#: Implementations named so are the harness's planted faults, not implementations.
PLANTED = "misbehaving-"
_SEVERITY = ("conforms", "fails as declared", "does not conform")


def _summary_section(results: Sequence[CaseResult]) -> list[str]:
    """One row per implementation and database; environments are detailed further down.

    Each grade's count is the same in every environment, or shown as the
    range it spans; the verdict is the worst one; "covered" says whether
    every requirement was graded or which suites were.
    """
    everything = {case.id for case in cases.collect()}
    real = [r for r in results if not r.implementation.startswith(PLANTED)]
    rows = []
    for (implementation, database), group in _grouped(
        real, lambda r: (r.implementation, r.database)
    ):
        environments = [g for _, g in _grouped(group, lambda r: r.environment)]
        counts = [_counts(g) for g in environments]
        cells = [_span([int(c[i]) for c in counts]) for i in range(len(GRADES) + 1)]
        worst = max((verdict(g) for g in environments), key=_SEVERITY.index)
        rows.append(
            [
                implementation,
                database,
                str(len(environments)),
                *cells,
                worst,
                _covered(group, everything),
            ]
        )
    headers = ["Implementation", "Database", "Environments", *GRADES, "total", "verdict", "covered"]
    lines = ["## Summary", "", *_md_table(headers, rows)]
    planted = [r for r in results if r.implementation.startswith(PLANTED)]
    if planted:
        lines += ["", "## Planted faults", "", _PLANTED_NOTE, ""]
        rows = []
        for (implementation,), group in _grouped(planted, lambda r: (r.implementation,)):
            graded_in = _grouped(group, lambda r: r.environment)
            grades = Counter(r.grade for r in group)
            rows.append(
                [
                    implementation,
                    str(len(graded_in)),
                    _joined(r.case for r in group),
                    ", ".join(f"{g} {grades[g]}" for g in GRADES if grades[g]),
                ]
            )
        lines += _md_table(["Planted fault", "Environments", "Cases", "Grades"], rows)
    return lines


_PLANTED_NOTE = (
    "The reference with one fault planted each (`implementations/misbehaving`): "
    "the harness must grade every one as `tests/test_misbehaving.py` promises, "
    "so their fails and errors are expected."
)


def _span(values: list[int]) -> str:
    low, high = min(values), max(values)
    return str(low) if low == high else f"{low}..{high}"


def _covered(results: Sequence[CaseResult], everything: set[str]) -> str:
    graded = {r.case for r in results}
    if graded >= everything:
        return "every requirement"
    suites = sorted({case.partition("-")[0] for case in graded})
    return f"partial: {', '.join(suites)} ({len(graded & everything)} of {len(everything)})"


def _suite_section(results: Sequence[CaseResult]) -> list[str]:
    """Render, per implementation, a table of grade counts per suite."""
    lines = ["## Results per implementation and suite"]
    for (implementation,), group in _grouped(results, lambda r: (r.implementation,)):
        suites = _grouped(group, lambda r: (r.suite or NOT_APPLICABLE,))
        rows = [[suite, *_counts(items)] for (suite,), items in suites]
        lines += ["", f"### {_md_cell(implementation)}", ""]
        lines += _md_table(["Suite", *GRADES, "total"], rows)
    return lines


def _failures_section(results: Sequence[CaseResult]) -> list[str]:
    """Render every error, fail and non-strict result with its reason.

    Results must already be sorted: the stable sort keeps their order within a case.
    """
    failing = sorted(
        (r for r in results if r.grade in FAILING_GRADES),
        key=lambda r: (FAILING_GRADES.index(r.grade), natural_key(r.case)),
    )
    if not failing:
        return ["## Failing cases", "", "_None._"]
    headers = ["Grade", "Case", "Level", "Test", "Environment", "Reason"]
    rows = [[r.grade, r.case, r.level, r.test, _label(r), _short_reason(r.reason)] for r in failing]
    return ["## Failing cases", "", *_md_table(headers, rows)]


def _unsupported_section(results: Sequence[CaseResult]) -> list[str]:
    """Render unsupported cases grouped by the missing capability."""
    unsupported = [r for r in results if r.grade == "unsupported"]
    if not unsupported:
        return ["## Unsupported cases", "", "_None._"]
    groups = _grouped(unsupported, lambda r: (_short_reason(r.reason) or "(no reason given)",))
    rows = [
        [reason, _joined(r.case for r in rs), _joined(r.implementation for r in rs)]
        for (reason,), rs in groups
    ]
    headers = ["Capability", "Cases", "Implementations"]
    return ["## Unsupported cases", "", *_md_table(headers, rows)]


def _environment_section(results: Sequence[CaseResult]) -> list[str]:
    """Render each environment with versions, platform, modes, runs and sources."""
    rows = []
    for env, group in _grouped(results, lambda r: r.environment):
        details = ([getattr(r, name) or "" for r in group] for name in _ENV_DETAILS.values())
        rows.append([*env, *map(_joined, details)])
    return ["## Environment", "", *_md_table([*_ENV_HEADERS, *_ENV_DETAILS], rows)]


_SECTIONS = (
    _summary_section,
    _suite_section,
    _failures_section,
    _unsupported_section,
    _environment_section,
)


def _read_summary(path: Path) -> dict[str, Any] | None:
    """A run's JSON summary (mutation, soak), or None if there is none (or it cannot be read)."""
    if not path.is_file():
        return None
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        _warn(f"{path}: skipped: {exc}")
        return None
    return summary if isinstance(summary, dict) else None


MUTATION_COMMAND = "python3 dev.py mutate"
#: The counts of a mutation summary, in the order the report names them.
MUTATION_COUNTS = ("killed", "timeout", "survived", "suspicious", "skipped", "no_tests")


def _mutation_scores(counts: dict[str, Any]) -> str:
    """The score of all the mutants, and of those not judged equivalent when it is known."""
    killed = counts.get("killed", 0) + counts.get("timeout", 0)
    mutants = counts.get("mutants", 0)
    equivalent = counts.get("equivalent", 0)
    score = counts.get("score", killed / mutants if mutants else 0.0)
    line = f"{killed} of {mutants} mutants of the reference killed (**{score:.1%}**)"
    if "score_without_equivalents" not in counts:
        return line + "."
    return (
        f"{line}; without the {equivalent} judged equivalent, {killed} of "
        f"{mutants - equivalent} (**{counts['score_without_equivalents']:.1%}**)."
    )


def _ordinal(number: int) -> str:
    """1st, 2nd, 3rd, 4th, ..., 11th, 12th, 13th, ..., 21st."""
    suffixes = {1: "st", 2: "nd", 3: "rd"}
    suffix = "th" if 10 <= number % 100 <= 20 else suffixes.get(number % 10, "th")
    return f"{number}{suffix}"


def _mutation_section(mutation: dict[str, Any] | None, source: str = DEFAULT_MUTATION) -> list[str]:
    """The mutation score: overall, per module, and the surviving mutants with their judgement.

    Without a summary the section says the run has not been made, and how to make it.
    """
    lines = ["## Mutation score", ""]
    if mutation is None:
        return [
            *lines,
            f"Not run: there is no `{source}`. `{MUTATION_COMMAND}`, then `python3 dev.py "
            "report`, puts one there.",
        ]
    total = mutation.get("total", {})
    lines += [
        f"{_mutation_scores(total)} By `{mutation.get('command', MUTATION_COMMAND)}` "
        f"({mutation.get('tool', 'mutmut')}) on {mutation.get('date', NOT_APPLICABLE)}, "
        f"from `{source}`.",
    ]
    counted = [name for name in MUTATION_COUNTS if name in total]
    if counted:
        lines += [
            "",
            "Killed counts mutmut's *killed* and *timeout* results, as mutmut's own score does. "
            "Mutants tested: "
            + ", ".join(f"{name.replace('_', ' ')} {total[name]}" for name in counted)
            + ".",
        ]
    sample, estimate = mutation.get("sample", 1), mutation.get("estimate")
    if sample > 1 and estimate:
        offset = mutation.get("offset", 0)
        start = f", starting from its {_ordinal(offset + 1)}" if offset else ""
        lines += [
            "",
            f"A sample: every {sample}th mutant of each module{start}, "
            f"{total.get('mutants', 0)} of the {estimate['mutants']} generated. Scored module "
            f"by module as their samples, all of them would be about {estimate['score']:.1%} "
            "killed.",
        ]
    again = mutation.get("again")
    if again:
        lines += [
            "",
            f"Only the {again['tested']} survivors of `{again['of']}` ({again['date']}) were "
            f"tested again; the {again['kept_killed']} mutants that run killed keep that result. "
            "Tests written against those survivors flatter this sample's score; a sample at "
            "another `--offset` estimates the whole without that bias.",
        ]
        if again.get("first_pass"):
            lines += [
                "",
                "Before those tests, as first run: " + _mutation_scores(again["first_pass"]),
            ]
    lines += [""]
    rows = [
        [
            module,
            str(m["mutants"]),
            str(m["killed"] + m.get("timeout", 0)),
            str(m["mutants"] - m["killed"] - m.get("timeout", 0)),
            str(m.get("equivalent", 0)),
            f"{m['score']:.1%}",
            f"{m.get('score_without_equivalents', m['score']):.1%}",
        ]
        for module, m in sorted(mutation.get("modules", {}).items())
    ]
    headers = ["Module", "mutants", "killed", "not killed", "equivalent", "score", "w/o equivalent"]
    lines += _md_table(headers, rows)
    survivors = mutation.get("survivors", [])
    equivalents = mutation.get("equivalents_file", "reference/mutation_equivalents.toml")
    gaps = [s for s in survivors if not s.get("equivalent", False)]
    lines += [
        "",
        f"Survivors: {len(survivors)}. Judged equivalent: {len(survivors) - len(gaps)}, each "
        f"with its reason in `{equivalents}`. Not killed: {len(gaps)}"
        + (", each with the test that would kill it:" if gaps else "."),
    ]
    if gaps:
        lines += [""]
        lines += _md_table(
            ["Mutant", "Where", "Change", "Judged"],
            [[s["id"], s["where"], s["change"], s.get("judged", "")] for s in gaps],
        )
    return lines


def read_soaks(pattern: str) -> list[dict[str, Any]]:
    """The soak summaries matching ``pattern`` (``soak --summary``), unreadable ones skipped."""
    soaks = []
    for path in sorted(glob.glob(pattern)):
        summary = _read_summary(Path(path))
        if summary is not None and "impl" in summary and "counts" in summary:
            soaks.append(summary)
        else:
            _warn(f"{path}: skipped: not a soak summary")
    return soaks


def _soak_verdict(soak: dict[str, Any]) -> str:
    if soak.get("ok"):
        return "clean"
    found = soak.get("violations", {})
    return f"**{sum(found.values())} violations**: " + ", ".join(
        f"{check} {n}" for check, n in found.items()
    )


def _soak_section(soaks: Sequence[dict[str, Any]]) -> list[str]:
    """The soaks: each run's workload, faults and the checker's verdict."""
    lines = ["## Soak under faults", ""]
    if not soaks:
        return [
            *lines,
            f"Not run: no soak summary in `{DEFAULT_SOAKS}`. `{SOAK_COMMAND}` writes one to "
            "`reports/`; `python3 dev.py report` keeps it.",
        ]
    lines += [
        f'Runs of `{SOAK_COMMAND}` (README, "The soak"): the checker judged each whole '
        "history against SPEC's MUSTs.",
        "",
    ]
    headers = ["Implementation", "Workers", "Storage", "Seed", "Ran", "Work", "Faults", "Verdict"]
    rows = []
    for soak in sorted(soaks, key=lambda s: (s["impl"], s.get("workers", 1), s.get("database"))):
        counts = soak["counts"]
        storage = str(soak.get("database", "?")) + (" + Redis" if soak.get("redis") else "")
        work = (
            f"{counts.get('tasks', 0)} tasks, {counts.get('events', 0)} events, "
            f"{counts.get('clients', 0)} clients"
        )
        faults = ", ".join(f"{kind} {n}" for kind, n in soak.get("faults", {}).items())
        rows.append(
            [
                soak["impl"],
                str(soak.get("workers", 1)),
                storage,
                str(soak.get("seed")),
                f"{soak.get('ran') or 0:.0f} s ({soak.get('date', NOT_APPLICABLE)}"
                + (", judged again from its history)" if soak.get("judged_again") else ")"),
                work,
                faults or "none",
                _soak_verdict(soak),
            ]
        )
    lines += _md_table(headers, rows)
    for soak in soaks:
        for message in soak.get("first", []):
            lines += ["", f"- {_md_cell(soak['impl'])}: {_md_cell(message)}"]
    return lines


def render_markdown(
    results: Sequence[CaseResult],
    sources: Sequence[str],
    mutation: dict[str, Any] | None = None,
    mutation_source: str = DEFAULT_MUTATION,
    soaks: Sequence[dict[str, Any]] = (),
) -> str:
    """Render the TEST_RESULTS.md report for results read from sources.

    ``mutation`` is the summary read from ``mutation_source``; None renders
    the mutation section as not run. ``soaks`` are the soak summaries.
    """
    ordered = sort_results(results)
    inputs = ", ".join(f"`{source}`" for source in sorted(map(str, sources)))
    newest = max((r.run_id for r in ordered), default=NOT_APPLICABLE)
    lines = [
        f"_Generated by `{COMMAND}` from {inputs or 'no files'}; do not edit by hand._",
        "",
        "# Conformance test results",
        "",
        f"{len(ordered)} results; newest run: `{newest}`.",
    ]
    for section in _SECTIONS:
        lines += ["", *section(ordered)]
    lines += ["", *_soak_section(soaks)]
    lines += ["", *_mutation_section(mutation, mutation_source)]
    return "\n".join(lines) + "\n"


# --- HTML ------------------------------------------------------------------

#: The matrix's grades, in the order its cells list them: a result's own grade,
#: except the failures an implementation expects, counted apart as "expected".
MATRIX_GRADES = ("pass", "fail", "error", "non-strict", "unsupported", "expected")
_EXPECTED_NOTE = (
    "expected failures: xfails an implementation declares, and the fails and errors a "
    "planted fault is there to cause"
)


def matrix_grade(result: CaseResult) -> str:
    """Its grade in the matrix: "expected" for a declared xfail or a planted fault's failure."""
    if result.grade == "xfail":
        return "expected"
    if result.implementation.startswith(PLANTED) and result.grade in FAILING_GRADES:
        return "expected"
    return result.grade


def _why_expected(result: CaseResult) -> str:
    if result.implementation.startswith(PLANTED):
        return "planted fault"
    return f"declared by {result.implementation}"


_PAGE = string.Template("""<!DOCTYPE html>
<html lang="en">
<head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>Conformance matrix</title>
<style>
[hidden] { display: none !important; }
body { font-family: sans-serif; margin: 1em; }
table { border-collapse: collapse; font-size: 0.85em; width: 100%; margin-bottom: 1.5em; }
th, td { border: 1px solid #bbb; padding: 0.25em 0.4em; text-align: left; vertical-align: top; }
#details td:not(:last-child) { white-space: nowrap; }
#details td:last-child { overflow-wrap: anywhere; }
thead th { position: sticky; top: 0; background: #f4f4f4; }
th small { display: block; font-weight: normal; color: #555; }
#filters { display: flex; flex-wrap: wrap; gap: 1em; margin: 1em 0; }
#matrix { table-layout: fixed; }
#matrix thead th:first-child { width: 9em; }
#matrix th, #matrix td { overflow-wrap: anywhere; padding: 0.2em 0.25em; }
.count { display: block; padding: 0 0.2em; margin: 1px 0; }
#matrix .count { font-size: 0.85em; }
.empty { color: #999; }
.grade-pass { background: #c8f7c5; } .grade-fail { background: #f5b7b1; }
.grade-non-strict { background: #fde3a7; } .grade-unsupported { background: #e5e7e9; }
.grade-error { background: #c0392b; color: #fff; }
.grade-expected { background: #d6eaf8; outline: 1px dashed #2874a6; }
.expected { color: #1b4f72; font-style: italic; }
</style></head>
<body>
<h1>Conformance matrix</h1>
<p>Generated by <code>python -m conformance report</code> from $results results.
Each cell counts one implementation's results in one suite, over every environment and mode
it was graded in (hover a cell for each environment's counts). <span class="count grade-expected"
style="display: inline">expected</span> counts $expected_note; they are not failures.</p>
<form id="filters">
$filters
</form>
<table id="matrix">
<thead><tr><th>Implementation</th>$suites<th>all suites</th></tr></thead>
<tbody>
$rows
</tbody>
</table>
<h2>Results other than pass</h2>
<table id="details">
<thead><tr><th>Implementation</th><th>Suite</th><th>Case</th><th>Grade</th><th>Graded in</th>
<th>Tests and reasons</th></tr></thead>
<tbody>
$details
</tbody>
</table>
<script>
(function () {
  "use strict";
  const chosen = {};
  const filters = ["implementation", "suite", "grade"].map(
    (name) => [name, document.getElementById("filter-" + name)]);
  const grades = (element) => element.dataset.grades.split(" ");
  function apply() {
    for (const [name, select] of filters) chosen[name] = select.value;
    const { implementation, suite, grade } = chosen;
    for (const element of document.querySelectorAll("#matrix [data-suite]")) {
      element.hidden = Boolean(suite) && element.dataset.suite !== suite;
    }
    for (const badge of document.querySelectorAll("#matrix .count")) {
      badge.hidden = Boolean(grade) && badge.dataset.grade !== grade;
    }
    for (const row of document.querySelectorAll("#matrix tbody tr")) {
      const cells = [...row.querySelectorAll("td[data-suite]")].filter((td) => !td.hidden);
      const hasGrade = !grade || cells.some((td) => grades(td).includes(grade));
      row.hidden = (Boolean(implementation) && row.dataset.implementation !== implementation)
        || !hasGrade;
    }
    for (const row of document.querySelectorAll("#details tbody tr")) {
      row.hidden = filters.some(([name]) => chosen[name] && row.dataset[name] !== chosen[name]);
    }
  }
  for (const [, select] of filters) select.addEventListener("change", apply);
  apply();
})();
</script>
</body>
</html>
""")


def _attribute(text: str) -> str:
    return html.escape(text, quote=True)


def _select(name: str, values: Iterable[str], label: Callable[[str], str] = str) -> str:
    """One filter: "all", then each value."""
    options = ['<option value="">all</option>'] + [
        f'<option value="{_attribute(v)}">{html.escape(label(v))}</option>' for v in values
    ]
    return (
        f'<label>{name.capitalize()} <select id="filter-{name}">'
        + "".join(options)
        + "</select></label>"
    )


def _suite_label(suite: str) -> str:
    return suite.replace("_", " ")


def _badges(results: Sequence[CaseResult]) -> tuple[str, str]:
    """The cell's count of each grade present, and the grades it holds (for the filters)."""
    counter = Counter(matrix_grade(r) for r in results)
    present = [grade for grade in MATRIX_GRADES if counter[grade]]
    badges = "".join(
        f'<span class="count grade-{grade}" data-grade="{grade}" data-count="{counter[grade]}">'
        f"{counter[grade]} {grade}</span>"
        for grade in present
    )
    return badges, " ".join(present)


def _environment_counts(title: str, results: Sequence[CaseResult]) -> str:
    lines = [title]
    for environment, group in _grouped(results, lambda r: r.environment):
        _, database, python, stack = environment
        counter = Counter(matrix_grade(r) for r in group)
        counts = ", ".join(f"{grade} {counter[grade]}" for grade in MATRIX_GRADES if counter[grade])
        lines.append(f"{database}, Python {python}, {stack}: {counts}")
    return "\n".join(lines)


def _matrix_cell(implementation: str, suite: str, results: Sequence[CaseResult]) -> str:
    if not results:
        return f'<td data-suite="{_attribute(suite)}" data-grades="" class="empty">&mdash;</td>'
    badges, present = _badges(results)
    title = _environment_counts(f"{implementation}, {suite}", results)
    return (
        f'<td data-suite="{_attribute(suite)}" data-grades="{present}" '
        f'title="{_attribute(title)}">{badges}</td>'
    )


def _matrix_row(implementation: str, results: Sequence[CaseResult], suites: Sequence[str]) -> str:
    by_suite: dict[str, list[CaseResult]] = {}
    for result in results:
        by_suite.setdefault(result.suite or NOT_APPLICABLE, []).append(result)
    cells = "".join(_matrix_cell(implementation, s, by_suite.get(s, [])) for s in suites)
    environments = len({r.environment for r in results})
    kind = "planted fault, " if implementation.startswith(PLANTED) else ""
    plural = "s" if environments != 1 else ""
    badges, present = _badges(results)
    return (
        f'<tr data-implementation="{_attribute(implementation)}">'
        f'<th scope="row">{html.escape(implementation)}<small>{kind}{len(results)} results, '
        f"{environments} environment{plural}</small></th>{cells}"
        f'<td class="total" data-grades="{present}">{badges}</td></tr>'
    )


def _detail_row(results: Sequence[CaseResult]) -> str:
    """One implementation's results of one case and grade (not pass) in every environment."""
    first = results[0]
    grade = matrix_grade(first)
    shown = html.escape(first.grade)
    if grade == "expected":
        shown += f', <span class="expected">expected: {html.escape(_why_expected(first))}</span>'
    environments = sorted({_label(r) for r in results}, key=natural_key)
    count = len({r.environment for r in results})
    reasons = sorted({(r.test, _short_reason(r.reason)) for r in results})
    listed = "<br>".join(
        f"<code>{html.escape(test)}</code>" + (f": {html.escape(reason)}" if reason else "")
        for test, reason in reasons
    )
    plural = "s" if count != 1 else ""
    return (
        f'<tr data-implementation="{_attribute(first.implementation)}" '
        f'data-suite="{_attribute(first.suite or NOT_APPLICABLE)}" data-grade="{grade}">'
        f"<td>{html.escape(first.implementation)}</td>"
        f"<td>{html.escape(_suite_label(first.suite or NOT_APPLICABLE))}</td>"
        f"<td>{html.escape(first.case)}</td><td>{shown}</td>"
        f'<td title="{_attribute(chr(10).join(environments))}">{count} environment{plural}</td>'
        f"<td>{listed}</td></tr>"
    )


def _implementation_order(implementation: str) -> tuple[bool, tuple[tuple[str | int, ...], str]]:
    """The implementations first, then the planted faults; each in natural order."""
    return implementation.startswith(PLANTED), natural_key(implementation)


def render_html(results: Sequence[CaseResult]) -> str:
    """Render a self-contained HTML matrix of implementations by suites, with filters.

    Each cell counts the results of one implementation in one suite by grade,
    over every environment and mode, expected failures apart; each row has its
    totals; below, the results other than pass, one row per implementation,
    case and grade. Plain HTML and a few lines of script: no build step.
    """
    ordered = sort_results(results)
    suites = sorted({r.suite or NOT_APPLICABLE for r in ordered}, key=natural_key)
    by_implementation: dict[str, list[CaseResult]] = {}
    for result in ordered:
        by_implementation.setdefault(result.implementation, []).append(result)
    implementations = sorted(by_implementation, key=_implementation_order)
    rows = "\n".join(_matrix_row(i, by_implementation[i], suites) for i in implementations)
    not_passing = [r for r in ordered if r.grade != "pass"]
    groups = _grouped(
        not_passing,
        lambda r: (r.implementation, r.suite or NOT_APPLICABLE, r.case, r.grade),
    )
    groups.sort(key=lambda item: _implementation_order(item[0][0]))
    details = "\n".join(_detail_row(group) for _, group in groups)
    filters = "\n".join(
        [
            _select("implementation", implementations),
            _select("suite", suites, _suite_label),
            _select("grade", MATRIX_GRADES),
        ]
    )
    headers = "".join(
        f'<th data-suite="{_attribute(s)}">{html.escape(_suite_label(s))}</th>' for s in suites
    )
    return _PAGE.substitute(
        results=len(ordered),
        expected_note=html.escape(_EXPECTED_NOTE),
        filters=filters,
        suites=headers,
        rows=rows,
        details=details,
    )


# --- command line ----------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of the report command to a parser."""
    parser.add_argument(
        "--input-glob", default=DEFAULT_GLOB, help="result files (default: %(default)s)"
    )
    parser.add_argument(
        "--output",
        default=DEFAULT_OUTPUT,
        help="Markdown report (default: %(default)s)",
    )
    parser.add_argument("--html", help="also write an HTML matrix to this path")
    parser.add_argument(
        "--soaks", default=DEFAULT_SOAKS, help="soak summaries to show (default: %(default)s)"
    )
    parser.add_argument(
        "--mutation",
        default=DEFAULT_MUTATION,
        help="mutation results to show, if the file exists (default: %(default)s)",
    )


def _write(path: Path, text: str) -> None:
    """Write text as UTF-8 with Unix newlines, creating parent directories."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8", newline="\n")


def run(args: argparse.Namespace) -> int:
    """Run the report command for parsed arguments; return the exit code."""
    matches = glob.glob(args.input_glob, recursive=True)
    paths = sorted(path for path in matches if Path(path).is_file())
    if not paths:
        _warn(f"conformance report: no input files match {args.input_glob!r}")
        return 2
    results = load_results(paths)
    mutation = _read_summary(Path(args.mutation)) if args.mutation else None
    _write(
        Path(args.output),
        render_markdown(
            results,
            paths,
            mutation,
            args.mutation or DEFAULT_MUTATION,
            read_soaks(args.soaks) if args.soaks else (),
        ),
    )
    written = [args.output]
    if args.html:
        _write(Path(args.html), render_html(results))
        written.append(args.html)
    print(f"{len(results)} results from {len(paths)} files -> {', '.join(written)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Parse report options from argv and run the report command."""
    parser = argparse.ArgumentParser(prog=COMMAND, description=DESCRIPTION)
    add_arguments(parser)
    return run(parser.parse_args(argv))
