"""Which mutants a run tests: the sample, the ledger of a run, ``--resume`` and ``--again``.

``--sample N`` tests every N-th mutant of each module, in mutmut's order, from
the first or the ``--offset``-th: systematic within each module, so a
module's sample score estimates its whole score. The work directory holds a
ledger (``run.json``: the sample, the seconds each phase took) that
``--resume`` checks and goes on from. ``--again`` takes the last run's
summary, refused when the mutated modules changed since (its digest), tests
its survivors only, and gives the others the result that run gave them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mutation import COMMAND
from mutation.judging import JUDGEMENTS, describe, judge, same
from mutation.running import Mutant, exit_codes, generate_mutants, ran
from mutation.staging import PROCESSES, Phase


def sampling_options(every: int, offset: int) -> str:
    """The command-line options of a sample."""
    return f"--sample {every}" + (f" --offset {offset}" if offset else "")


def sample(
    bin_dir: Path, phase_dir: Path, sources: Sequence[str], every: int, offset: int = 0
) -> list[str]:
    """Every ``every``-th mutant of each module from its ``offset``-th, in mutmut's order
    (none: all of them).

    Systematic within each module: its functions are represented in
    proportion to their mutants, so a module's sample score estimates its
    whole score.
    """
    if every == 1:
        return []
    # Made already by the run being resumed? (mutants/ itself exists from prepare())
    if not all((phase_dir / "mutants" / f"{source}.meta").exists() for source in sources):
        generate_mutants(bin_dir, phase_dir)
    names = []
    for source in sources:
        names += list(exit_codes(phase_dir, [source]))[offset::every]
    return names


#: In the work directory: the run's sample, and the seconds each phase has taken so far.
LEDGER = "run.json"


def read_ledger(work: Path, sample: int, offset: int) -> dict[str, Any]:
    """The ledger of the run ``--resume`` goes on with, if it tests the same sample."""
    try:
        ledger: dict[str, Any] = json.loads((work / LEDGER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise SystemExit(f"Cannot resume: {work} holds no run of {COMMAND}.") from None
    if (ledger["sample"], ledger.get("offset", 0)) != (sample, offset):
        raise SystemExit(
            f"Cannot resume: the run in {work} tests another sample; pass "
            f"{sampling_options(ledger['sample'], ledger.get('offset', 0))}."
        )
    return ledger


def write_ledger(work: Path, ledger: Mapping[str, Any]) -> None:
    """Keep the ledger in ``work``, for a ``--resume``."""
    (work / LEDGER).write_text(json.dumps(ledger, indent=2) + "\n", encoding="utf-8")


def untested(phase_dir: Path, sources: Sequence[str], names: Sequence[str]) -> list[str] | None:
    """What ``mutmut run`` is to test of ``names`` (none: all): those without a result yet.

    None when every one has a result (a phase done before a resume). A phase
    mutmut has not run in yet tests ``names`` as given.
    """
    if not all((phase_dir / "mutants" / f"{source}.meta").exists() for source in sources):
        return list(names)
    codes = {name: code for name, (_, code) in exit_codes(phase_dir, sources).items()}
    todo = [name for name in (names or codes) if codes.get(name) is None]
    if not todo:
        return None
    if not names and len(todo) == len(codes):
        return []  # all of them: mutmut's default
    return todo


def survivors(mutants: Mapping[str, Mutant], phase: Phase, last: Path, root: Path) -> list[str]:
    """What a later phase tests: what the earlier ones left alive (PROCESSES: not equivalent)."""
    alive = [m for m in mutants.values() if ran(m) and not m.killed]
    if phase is PROCESSES:
        judge(alive, last, root / JUDGEMENTS)
        alive = [m for m in alive if not m.judged.startswith("equivalent")]
    return sorted(m.id for m in alive)


def digest(root: Path, sources: Sequence[str]) -> str:
    """A digest of the mutated modules' text: a run's mutants are those of this code."""
    hashed = hashlib.sha256()
    for source in sources:
        path = root / source.replace("src/", "reference/", 1)
        hashed.update(source.encode() + b"\0" + path.read_bytes() + b"\0")
    return hashed.hexdigest()[:16]


def previous_run(root: Path, sources: Sequence[str]) -> dict[str, Any]:
    """The summary ``--again`` goes on from, if it was made on the code as it is now."""
    for path in (root / "reports" / "mutation.json", root / "results" / "mutation.json"):
        if path.exists():
            break
    else:
        raise SystemExit(f"Cannot test again: no earlier run's summary; run {COMMAND} first.")
    summary: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    if summary.get("digest") not in (None, digest(root, sources)):
        raise SystemExit(
            f"Cannot test again: the mutated modules changed since the run in {path}; "
            f"its mutants are not this code's. Run {COMMAND} for a new score."
        )
    summary["path"] = str(path.relative_to(root))
    return summary


def alive_before(
    previous: Mapping[str, Any], chosen: Sequence[str], phase_dir: Path, sources: Sequence[str]
) -> list[str]:
    """The previous run's survivors, checked to be the same mutants of the same sample."""
    every = chosen or list(exit_codes(phase_dir, sources))
    alive = previous["survivors"]
    codes = exit_codes(phase_dir, sources)
    for survivor in alive:
        name = survivor["id"]
        if name not in every:
            raise SystemExit(f"Cannot test again: {name} is not in this run's sample.")
        if previous.get("digest") is None:  # a summary from before digests: compare the change
            _, change = describe(phase_dir, codes[name][0], name)
            if not same(change, survivor["change"]):
                raise SystemExit(
                    f"Cannot test again: {name} is another change now ({change}); "
                    f"the mutated modules changed since the run in {previous['path']}."
                )
    return sorted(s["id"] for s in alive)


def keep_killed(
    mutants: Mapping[str, Mutant], previous: Mapping[str, Any], chosen: Sequence[str]
) -> None:
    """Give the sample's mutants the previous run killed that result again."""
    alive = {s["id"] for s in previous["survivors"]}
    for name in chosen or mutants:
        mutant = mutants[name]
        if name not in alive and not ran(mutant):
            mutant.status = "killed"
            mutant.killed_by = f"an earlier run ({previous['date']})"


def check_sample(mutants: Mapping[str, Mutant], chosen: Sequence[str]) -> None:
    """Refuse to extrapolate from a sample mutmut did not test exactly."""
    tested = {name for name, mutant in mutants.items() if ran(mutant)}
    if tested != set(chosen):
        wrong = sorted(tested.symmetric_difference(chosen))
        raise SystemExit(
            f"Cannot extrapolate: {len(wrong)} mutants are wrongly in or out of the sample "
            f"({', '.join(wrong[:3])}, ...)."
        )
