"""A run: the phases in turn, each a ``mutmut run`` on what the earlier ones left alive.

The first phase tests the sample (with ``--again``, the last run's survivors
in it); each later one, the mutants no phase has killed yet. The staged
copies live in a temporary work directory, removed at the end unless
``--keep`` is given or the run failed: then mutmut's results are in it, and
``--resume`` goes on from them.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mutation import COMMAND, judging, reports, running, sampling, staging


def run(
    root: Path,
    bin_dir: Path,
    *,
    config: Mapping[str, Any],
    sample: int,
    offset: int,
    max_children: int,
    with_processes: bool = False,
    resume: Path | None = None,
    previous: Mapping[str, Any] | None = None,
    keep: bool = False,
) -> int:
    """Test the sample phase by phase and write the reports; return the exit status.

    ``config`` is pyproject.toml's ``[tool.mutmut]``; ``resume``, the work
    directory of a run that stopped; ``previous``, the summary ``--again``
    goes on from.
    """
    sources = config["only_mutate"]
    tool, statuses = running.mutmut_version_and_statuses(bin_dir)
    if resume is not None:
        work = resume.resolve()
        ledger = sampling.read_ledger(work, sample, offset)
        print(f"Resuming the run staged in {work}", flush=True)
    else:
        work = Path(tempfile.mkdtemp(prefix="mutation-"))
        ledger = {"sample": sample, "offset": offset, "seconds": {}}
        print(f"Staging a copy of the repository in {work}", flush=True)
    try:
        template = work / "tree"
        if resume is None:
            staging.stage(root, template)
        mutants: dict[str, running.Mutant] = {}
        phases: list[dict[str, Any]] = []
        chosen: list[str] = []
        for phase in (*staging.PHASES, *([staging.PROCESSES] if with_processes else [])):
            phase_dir = work / phase.name
            if not phase_dir.exists():
                staging.prepare(template, phase_dir, config, phase)
            if not phases:
                chosen = names = sampling.sample(bin_dir, phase_dir, sources, sample, offset)
                if previous is not None:
                    names = sampling.alive_before(previous, chosen, phase_dir, sources)
            else:
                names = sampling.survivors(mutants, phase, work / phases[-1]["name"], root)
                if not names:
                    break
            print(f"\n== {phase.name}: {phase.about}", flush=True)
            todo = sampling.untested(phase_dir, sources, names)
            if todo is not None:
                began = time.monotonic()
                status = running.run_mutmut(bin_dir, phase_dir, todo, max_children)
                running.stop_leftovers(work)
                seconds = ledger["seconds"]
                seconds[phase.name] = seconds.get(phase.name, 0) + round(time.monotonic() - began)
                sampling.write_ledger(work, ledger)
                if status != 0:
                    print(f"mutmut run failed in phase {phase.name} (status {status}).")
                    print(f"The staged copies are kept: {work}. To go on where it stopped:")
                    options = sampling.sampling_options(sample, offset)
                    print(f"  {COMMAND} --resume {work} {options}")
                    keep = True
                    return status
            results = running.exit_codes(phase_dir, sources)
            tested_now = running.merge(mutants, results, statuses, phase.name)
            if previous is not None and len(phases) == 0:
                sampling.keep_killed(mutants, previous, chosen)
            killed = sum(1 for m in mutants.values() if m.killed_by == phase.name)
            phases.append(
                {
                    "name": phase.name,
                    "about": phase.about,
                    "mutants": tested_now,
                    "killed": killed,
                    "seconds": ledger["seconds"].get(phase.name, 0),
                }
            )
            print(f"== {phase.name}: {tested_now} mutants tested, {killed} killed", flush=True)
        last = work / phases[-1]["name"]
        tested = [m for m in mutants.values() if running.ran(m)]
        if sample > 1:
            sampling.check_sample(mutants, chosen)
        judging.judge(tested, last, root / judging.JUDGEMENTS)
        seconds = sum(ledger["seconds"].values())
        summary = reports.summarize(
            tool=tool,
            command=f"{COMMAND} {sampling.sampling_options(sample, offset)} "
            f"--max-children {max_children}"
            + (" --with-processes" if with_processes else "")
            + (" --again" if previous is not None else ""),
            tested=tested,
            population=Counter(m.module for m in mutants.values()),
            phases=phases,
            seconds=seconds,
            workers=max_children,
            sample=sample,
            offset=offset,
            only_mutate=sources,
            digest=sampling.digest(root, sources),
            previous=previous,
        )
        reports.write_reports(root / "reports", summary)
        print(f"\n{reports.score_line(summary['total'])}")
        print(f"In {seconds // 60} min {seconds % 60} s; see reports/mutation.md")
        return 0
    except BaseException:
        keep = True  # mutmut's results are in the staged copies: keep them for a look
        raise
    finally:
        running.stop_leftovers(work)
        if keep:
            print(f"Staged copies kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
