"""Reports: reports/mutation.json, reports/mutation.md and the survivors left to judge.

:func:`summarize` makes the summary ``python -m conformance report`` reads
(``dev.py report`` keeps it as results/mutation.json): the counts of the
mutants tested, in all and by module, each phase, and every survivor with its
judgement; with a sample, an estimate of the score of all of them.
:func:`render_markdown` is the same for people.
"""

from __future__ import annotations

import datetime
import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from mutation.judging import JUDGEMENTS
from mutation.running import Mutant
from mutation.staging import toml_value

#: The counts of reports/mutation.json: each mutmut status tested falls in one.
#: The score counts ``killed`` and ``timeout``, as mutmut's own score does.
COUNTED = {
    "killed": ("killed",),
    "timeout": ("timeout",),
    "survived": ("survived",),
    "suspicious": ("suspicious", "segfault"),
    "skipped": ("skipped", "check was interrupted by user"),
    "no_tests": ("no tests",),
}


def _counts(mutants: Sequence[Mutant], generated: int) -> dict[str, Any]:
    """What became of ``mutants``, of the ``generated`` ones of their module(s)."""
    statuses = Counter(m.status for m in mutants)
    counts: dict[str, Any] = {"generated": generated, "mutants": len(mutants)}
    for name, members in COUNTED.items():
        counts[name] = sum(statuses[status] for status in members)
    counts["other"] = len(mutants) - sum(counts[name] for name in COUNTED)
    counts["equivalent"] = sum(1 for m in mutants if m.equivalent)
    detected = counts["killed"] + counts["timeout"]
    killable = len(mutants) - counts["equivalent"]
    counts["score"] = round(detected / len(mutants), 4) if mutants else 0.0
    counts["score_without_equivalents"] = round(detected / killable, 4) if killable else 0.0
    return counts


def summarize(
    *,
    tool: str,
    command: str,
    tested: Sequence[Mutant],
    population: Mapping[str, int],
    phases: Sequence[Mapping[str, Any]],
    seconds: int,
    workers: int,
    sample: int,
    only_mutate: Sequence[str],
    offset: int = 0,
    digest: str | None = None,
    previous: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The summary written to reports/mutation.json, which ``dev.py report`` keeps.

    ``total`` and each of ``modules`` count the mutants tested (all of them,
    or the sample); ``generated`` is how many mutmut made. With a sample,
    ``estimate`` scores all of them, each module as its sample.
    """
    modules = {
        module: _counts([m for m in tested if m.module == module], population[module])
        for module in sorted(population)
    }
    survivors = sorted((m for m in tested if not m.killed), key=lambda m: _sort_key(m.where))
    summary: dict[str, Any] = {
        "command": command,
        "date": datetime.date.today().isoformat(),
        "tool": tool,
        "only_mutate": list(only_mutate),
        "digest": digest,
        "again": None,
        "sample": sample,
        "offset": offset,
        "workers": workers,
        "seconds": seconds,
        "total": _counts(tested, sum(population.values())),
        "modules": modules,
        "estimate": None,
        "phases": [dict(phase) for phase in phases],
        "equivalents_file": str(JUDGEMENTS),
        "survivors": [
            {
                "id": m.id,
                "module": m.module,
                "function": m.function,
                "where": m.where,
                "status": m.status,
                "change": m.change,
                "equivalent": m.equivalent,
                "judged": m.judged,
            }
            for m in survivors
        ],
    }
    if sample > 1:
        generated = summary["total"]["generated"]
        expected = sum(m["generated"] * m["score"] for m in modules.values() if m["mutants"])
        summary["estimate"] = {
            "mutants": generated,
            "killed": round(expected),
            "score": round(expected / generated, 4) if generated else 0.0,
            "minutes": round(seconds / 60 * generated / max(1, len(tested))),
        }
    if previous is not None:
        # Only the survivors were tested: the time of a whole run is the earlier one's.
        kept = sum(1 for m in tested if m.killed_by and m.killed_by.startswith("an earlier"))
        summary["again"] = {
            "of": previous["command"],
            "date": previous["date"],
            "seconds": previous["seconds"],
            "kept_killed": kept,
            "tested": len(previous["survivors"]),
            # The sample's score before any test was written against it.
            "first_pass": (previous.get("again") or {}).get("first_pass") or previous["total"],
        }
        if summary["estimate"] is not None and previous.get("estimate"):
            summary["estimate"]["minutes"] = previous["estimate"]["minutes"]
    return summary


def write_reports(reports: Path, summary: Mapping[str, Any]) -> None:
    """reports/mutation.json, reports/mutation.md and reports/mutation-unjudged.toml."""
    reports.mkdir(exist_ok=True)
    (reports / "mutation.json").write_text(
        json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    (reports / "mutation.md").write_text(render_markdown(summary), encoding="utf-8")
    unjudged = [s for s in summary["survivors"] if s["judged"].startswith("not judged yet")]
    path = reports / "mutation-unjudged.toml"
    if unjudged:
        entries = [
            f"[[survivor]]\nid = {toml_value(s['id'])}\nwhere = {toml_value(s['where'])}\n"
            f"change = {toml_value(s['change'])}\njudged = {toml_value('')}  # {s['judged']}\n"
            for s in unjudged
        ]
        header = f"# Survivors without a judgement; judged ones belong in {JUDGEMENTS}.\n\n"
        path.write_text(header + "\n".join(entries), encoding="utf-8")
    elif path.exists():
        path.unlink()


def _sort_key(where: str) -> tuple[str, int]:
    module, _, line = where.partition(":")
    return module, int(line or 0)


def score_line(counts: Mapping[str, Any]) -> str:
    """The score of ``counts`` in one sentence, with and without the judged equivalents."""
    detected = counts["killed"] + counts["timeout"]
    killable = counts["mutants"] - counts["equivalent"]
    return (
        f"{detected} of {counts['mutants']} mutants killed (**{counts['score']:.1%}**); "
        f"without the {counts['equivalent']} judged equivalent, {detected} of {killable} "
        f"(**{counts['score_without_equivalents']:.1%}**)."
    )


def render_markdown(summary: Mapping[str, Any]) -> str:
    """reports/mutation.md: the summary, how it ran, and every survivor."""
    total = summary["total"]
    minutes = summary["seconds"] / 60
    lines = [
        f"_Generated by `{summary['command']}` on {summary['date']}; do not edit by hand. "
        f"Judgements come from `{JUDGEMENTS}`._",
        "",
        "# Mutation testing of the reference",
        "",
        score_line(total),
        "",
        f"By {summary['tool']} with {summary['workers']} workers in {minutes:.0f} min. "
        "Killed counts mutmut's *killed* and *timeout* results, as mutmut's own score does; "
        "*suspicious* results and mutants no test ran count as not killed. "
        + ", ".join(f"{name.replace('_', ' ')} {total[name]}" for name in COUNTED)
        + (f", other {total['other']}" if total["other"] else "")
        + ".",
        "",
        "## How it ran",
        "",
        "In a staged copy of the repository (the working tree is never touched), with the "
        "reference's packages under `src/` so that mutmut's copy is the one every process "
        "imports; server processes get it through `PYTHONPATH` and the active mutant through "
        "`MUTANT_UNDER_TEST`. Each mutant runs the tests that executed its function, fastest "
        "first, until one fails. On SQLite. Mutated: "
        + ", ".join(f"`{path}`" for path in summary["only_mutate"])
        + ".",
        "",
    ]
    rows = [
        [p["name"], p["about"], str(p["mutants"]), str(p["killed"]), f"{p['seconds'] / 60:.0f}"]
        for p in summary["phases"]
    ]
    lines += _table(["Phase", "Tests", "mutants tested", "killed", "minutes"], rows)
    again = summary.get("again")
    if again:
        lines += [
            "",
            f"This run tested again only the {again['tested']} survivors of `{again['of']}` "
            f"({again['date']}, {again['seconds'] / 60:.0f} min), with the tests as they are "
            f"now; the {again['kept_killed']} mutants that run killed keep that result (adding "
            "tests cannot revive them, and the mutated modules are unchanged). Tests written "
            "against those survivors flatter this sample's score: a sample at another "
            "`--offset` estimates the whole without that bias.",
        ]
    lines += ["", "## Score by module", ""]
    rows = [
        [
            module,
            str(m["mutants"]),
            str(m["killed"] + m["timeout"]),
            str(m["mutants"] - m["killed"] - m["timeout"]),
            str(m["equivalent"]),
            f"{m['score']:.1%}",
            f"{m['score_without_equivalents']:.1%}",
        ]
        for module, m in summary["modules"].items()
    ]
    headers = ["Module", "mutants", "killed", "not killed", "equivalent", "score", "without eq."]
    lines += _table(headers, rows)
    if summary["estimate"] is not None:
        lines += ["", *_extrapolation(summary)]
    survivors = summary["survivors"]
    equivalent = sum(1 for s in survivors if s["equivalent"])
    not_killed = sum(1 for s in survivors if s["judged"].startswith("not killed"))
    lines += [
        "",
        "## Survivors",
        "",
        f"{len(survivors)} survivors: {equivalent} judged equivalent, {not_killed} judged "
        f"not killed (a test should catch them), {len(survivors) - equivalent - not_killed} "
        "not judged yet.",
    ]
    if survivors:
        rows = [[s["id"], s["status"], s["where"], s["change"], s["judged"]] for s in survivors]
        lines += ["", *_table(["Mutant", "status", "Where", "Change", "Judged"], rows)]
    return "\n".join(lines) + "\n"


def _extrapolation(summary: Mapping[str, Any]) -> list[str]:
    estimate = summary["estimate"]
    every, first = summary["sample"], summary.get("offset", 0) + 1
    rows = [
        [module, str(m["generated"]), str(m["mutants"]), f"{m['score']:.1%}"]
        for module, m in summary["modules"].items()
    ]
    return [
        "## A sample, extrapolated",
        "",
        f"Every {every}th mutant of each module was tested (mutants {first}, "
        f"{first + every}, {first + 2 * every}, ... in mutmut's order). "
        f"Of all {estimate['mutants']} mutants, about "
        f"{estimate['killed']} would be killed (**{estimate['score']:.1%}**), each module "
        f"scored as its sample; a full run would take about {estimate['minutes']} min.",
        "",
        *_table(["Module", "all mutants", "tested", "sample score"], rows),
    ]


def _table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    def cells(values: Sequence[str]) -> str:
        return "| " + " | ".join(v.replace("|", "\\|").replace("\n", " ") for v in values) + " |"

    return [cells(headers), cells(["---"] * len(headers)), *(cells(row) for row in rows)]
