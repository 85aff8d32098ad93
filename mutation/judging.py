"""Survivors: where each is, what it changed, and the judgement on file for it.

:func:`describe` reads a survivor's place and change from mutmut's mutated
copy. Survivors are judged in ``reference/mutation_equivalents.toml``: each
judgement names the change it was made on, and one whose change no longer
matches is reported stale (not judged yet). :func:`rejudge` applies the
judgements on file now to a run's summary, without testing anything.
"""

from __future__ import annotations

import ast
import difflib
import json
import re
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from mutation.running import Mutant

#: The judgements on file, relative to the repository: one ``[[survivor]]`` each.
JUDGEMENTS = Path("reference/mutation_equivalents.toml")


def judge(tested: Sequence[Mutant], phase_dir: Path, judgements_path: Path) -> None:
    """Describe each survivor from mutmut's copy in ``phase_dir``, then judge it."""
    for mutant in tested:
        if mutant.killed:
            continue
        try:
            mutant.where, mutant.change = describe(phase_dir, mutant.source, mutant.id)
        except (OSError, ValueError, KeyError, StopIteration, SyntaxError) as exc:
            mutant.where = mutant.module
            mutant.change = f"(not read from mutmut's copy: {type(exc).__name__}: {exc})"
    judge_on_file(tested, judgements_path)


def judge_on_file(tested: Iterable[Mutant], judgements_path: Path) -> None:
    """Give each described survivor the judgement on file for it, if any."""
    judgements = _read_judgements(judgements_path)
    for mutant in tested:
        if not mutant.killed:
            mutant.judged = _judgement(judgements, mutant.id, mutant.change, mutant.status)


def _judgement(
    judgements: Mapping[str, Mapping[str, str]], name: str, change: str, status: str
) -> str:
    """The judgement on file for a survivor, if it was made on the same change."""
    judgement = judgements.get(name)
    if judgement is None:
        return f"not judged yet ({_UNJUDGED.get(status, status)})"
    if not same(judgement["change"], change):
        return (
            "not judged yet (the judgement on file was made on another change: "
            f"{judgement['change']})"
        )
    return judgement["judged"]


def rejudge(summary: dict[str, Any], judgements_path: Path) -> dict[str, Any]:
    """The summary of a run with the judgements on file now: no mutant is tested again."""
    judgements = _read_judgements(judgements_path)
    survivors = summary["survivors"]
    for survivor in survivors:
        judged = _judgement(judgements, survivor["id"], survivor["change"], survivor["status"])
        survivor["judged"] = judged
        survivor["equivalent"] = judged.startswith("equivalent")
    for module, counts in [("", summary["total"]), *summary["modules"].items()]:
        counts["equivalent"] = sum(
            1 for s in survivors if s["equivalent"] and module in ("", s["module"])
        )
        detected = counts["killed"] + counts["timeout"]
        killable = counts["mutants"] - counts["equivalent"]
        counts["score_without_equivalents"] = round(detected / killable, 4) if killable else 0.0
    return summary


_UNJUDGED = {
    "survived": "survived every test that ran it",
    "no tests": "no test executed it, in its process or in one it started",
    "suspicious": "a test run ended oddly; mutmut does not count it killed",
    "segfault": "a test run was killed by a signal; mutmut does not count it killed",
    "check was interrupted by user": "a test run was interrupted",
    "skipped": "skipped by mutmut",
    "caught by type check": "caught by the type checker",
}


def _read_judgements(path: Path) -> dict[str, dict[str, str]]:
    """The judgements in ``path`` by mutant; none if there is no such file."""
    if not path.exists():
        return {}
    entries = tomllib.loads(path.read_text(encoding="utf-8")).get("survivor", [])
    judgements = {}
    for entry in entries:
        missing = {"id", "change", "judged"} - set(entry)
        if missing:
            raise SystemExit(f"{path}: a [[survivor]] lacks {', '.join(sorted(missing))}.")
        judgements[entry["id"]] = entry
    return judgements


def same(a: str, b: str) -> bool:
    """Whether two changes are the same but for whitespace."""
    return " ".join(a.split()) == " ".join(b.split())


def describe(phase_dir: Path, source: str, name: str) -> tuple[str, str]:
    """``("bus.py:123", "`a > b` → `a >= b`")``: where a mutant is, and what it changed.

    Read from mutmut's mutated copy, which keeps each function's original
    (``…__mutmut_orig``) beside its mutants, and its index of their lines;
    the line number is the original file's.
    """
    function = name.rpartition(".")[2]
    mangled = function.partition("__mutmut_")[0]
    mutated = phase_dir / "mutants" / source
    spans = json.loads(Path(f"{mutated}.spans").read_text(encoding="utf-8"))["spans"]
    lines = mutated.read_text(encoding="utf-8").splitlines()
    original, mutant = (
        _from_def(lines[spans[key][0] - 1 : spans[key][1]])
        for key in (f"{mangled}__mutmut_orig", function)
    )
    # The def lines differ in the generated names only: compare them without.
    original[0] = original[0].replace(f"{mangled}__mutmut_orig", "_")
    mutant[0] = mutant[0].replace(function, "_")
    first = _def_line(phase_dir / source, mangled)
    old, new, offset = _difference(original, mutant)
    return f"{Path(source).name}:{first + offset}", _change(old, new)


def _from_def(lines: list[str]) -> list[str]:
    """The lines of a generated function from its ``def`` on (not blank lines or decorators)."""
    for index, line in enumerate(lines):
        if re.match(r"\s*(async\s+)?def\s", line):
            return lines[index:]
    raise ValueError("no def line")


def _def_line(path: Path, mangled: str) -> int:
    """The line of the ``def`` of ``xǁClassǁmethod`` or ``x_function`` in the original source."""
    if mangled.startswith("xǁ"):
        owner, _, function = mangled[2:].partition("ǁ")
    else:
        owner, function = "", mangled.removeprefix("x_")
    tree = ast.parse(path.read_text(encoding="utf-8"))
    scope: list[ast.stmt] = tree.body
    if owner:
        scope = next(n.body for n in tree.body if isinstance(n, ast.ClassDef) and n.name == owner)
    return next(
        n.lineno
        for n in scope
        if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) and n.name == function
    )


def _difference(old: list[str], new: list[str]) -> tuple[str, str, int]:
    """The changed lines (each joined into one), and the offset of the first."""
    opcodes = [op for op in difflib.SequenceMatcher(a=old, b=new).get_opcodes() if op[0] != "equal"]
    if not opcodes:
        return "", "", 0
    first, last = opcodes[0], opcodes[-1]
    removed = " ".join(line.strip() for line in old[first[1] : last[2]])
    added = " ".join(line.strip() for line in new[first[3] : last[4]])
    return removed, added, first[1]


def _change(old: str, new: str, width: int = 150) -> str:
    """One line: the old code and the new, around where they differ when that is long."""
    if not new:
        return f"`{_clip(old, width)}` removed"
    if len(old) + len(new) > width:
        start = 0
        while start < min(len(old), len(new)) and old[start] == new[start]:
            start += 1
        end = 0
        while end < min(len(old), len(new)) - start and old[-1 - end] == new[-1 - end]:
            end += 1
        keep = max(10, (width - (len(old) - start - end) - (len(new) - start - end)) // 4)
        lead = max(0, start - keep)
        old = ("…" if lead else "") + old[lead : len(old) - max(0, end - keep)]
        new = ("…" if lead else "") + new[lead : len(new) - max(0, end - keep)]
        old += "…" if end > keep else ""
        new += "…" if end > keep else ""
    return f"`{_clip(old, width)}` → `{_clip(new, width)}`"


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"
