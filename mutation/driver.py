"""Mutation testing of the reference: ``python3 dev.py mutate``.

mutmut 3 mutates the reference's core modules (``only_mutate`` in the
``[tool.mutmut]`` section of pyproject.toml) and, for each mutant, runs only
the tests that executed the mutated function when it collected its stats. It
writes ``reports/mutation.json``, the summary ``python -m conformance report``
reads, and ``reports/mutation.md``, the same for people.

The working tree is never mutated, nor run in. A run stages a copy of the
repository (without .git, .venv, reports and caches) in a temporary
directory, with the reference's packages moved from ``reference/`` to
``src/``, so that mutmut names each mutant after the module it is imported
as (``streaming.bus``) and puts its mutated copy first on ``sys.path``;
``mutants/reference/<package>`` are symlinks to that copy, for ``manage.py``.
Processes the tests start import the same copy: the conformance adapter
passes the directory ``streaming`` was imported from as ``PYTHONPATH``,
``manage.py`` finds it through the symlink, and the mutant to activate
reaches them in ``MUTANT_UNDER_TEST``, which mutmut sets in the environment.
In the stats run those processes also record the mutated functions they
execute (``mutation/hits.py``, installed by the staged ``streaming/__init__.py``),
so a function only a server calls gets the tests that start that server.

Two pytest sessions cannot be one (the suites' session keeps pytest-django
out; the reference's own tests need it), so a run has two phases (three with
``--with-processes``), each a ``mutmut run`` in a copy of its own (mutmut
resets its results when its pytest arguments change):

1. ``white-box``: every mutant, against the reference's own tests. Quick, and
   they see internals the suites cannot.
2. ``conformance``: the mutants phase 1 left alive, against the conformance
   cases that run in process (see ``CONFORMANCE`` for what is left out).
3. ``processes``, with ``--with-processes`` only: the survivors not judged
   equivalent, against the cases that start server processes.

A mutant is killed if either phase killed it. Timeouts count as killed, as
mutmut counts them in its own score; "suspicious" results (a crash, an
unexpected exit status) and mutants no test ran do not. Survivors are judged
in ``reference/mutation_equivalents.toml``: each judgement names the change it
was made on, and one whose change no longer matches is reported stale.

``--sample N`` tests every N-th mutant of each module, in mutmut's order
(from the first, or the ``--offset``-th counting from 0), and extrapolates
the full score module by module; ``--sample 1`` tests them
all. Most of the time goes to survivors, which run every test of their
function in both phases: on two shared cores the default sample (278 of 2190
mutants) took 89 minutes, all of them would take most of a day.

``--resume DIR`` goes on with a run that stopped (its staged copies are kept
in DIR): only the mutants without a result are tested. ``--again`` tests the
last run's survivors again, with the tests as they are now, and keeps the
others' results: adding tests cannot revive a killed mutant, so this scores
the same sample in a fraction of the time. It refuses when the mutated
modules changed since that run (their digest is in its summary). ``--rejudge`` tests
nothing: it applies the judgements on file now to the last run's
reports/mutation.json and writes the reports again.

Standard library only: this runs under the Python that runs dev.py; mutmut
runs in ``.venv``.

The stages of a run, a module each:

- ``staging.py``: the staged copy, and each phase's copy with its mutmut
  configuration (the phases are defined there);
- ``run.py``: the phases in turn, and the work directory;
- ``running.py``: ``mutmut run`` in a phase's copy, and its results;
- ``sampling.py``: the sample, the ledger ``--resume`` reads, ``--again``;
- ``judging.py``: each survivor's place and change, and its judgement;
- ``reports.py``: reports/mutation.json, reports/mutation.md.

This module reads the command line: ``main()`` is what ``dev.py mutate`` calls.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from mutation import COMMAND, judging, reports, sampling
from mutation.run import run
from mutation.staging import mutmut_config

#: Every SAMPLE-th mutant of each module by default: 89 minutes on two shared
#: cores (the run of 2026-12-01), where all of them would take most of a day.
SAMPLE = 8


def main(argv: Sequence[str], *, root: Path, bin_dir: Path) -> int:
    """Run ``python3 dev.py mutate`` with ``argv`` in the repository ``root``; the exit status.

    ``bin_dir`` holds the Python and the ``mutmut`` of .venv.
    """
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sample",
        type=int,
        default=SAMPLE,
        metavar="N",
        help="test every N-th mutant of each module and extrapolate; 1 tests all "
        "(default: %(default)s, about 90 minutes on two cores)",
    )
    parser.add_argument(
        "--offset",
        type=int,
        default=0,
        metavar="K",
        help="start each module's sample at its K-th mutant (counting from 0; default: "
        "%(default)s): a fresh sample for a score the tests were not written against",
    )
    parser.add_argument(
        "--max-children",
        type=int,
        default=min(2, os.cpu_count() or 1),
        metavar="N",
        help="mutants tested at once (default: %(default)s)",
    )
    parser.add_argument(
        "--with-processes",
        action="store_true",
        help="then run the cases that start server processes on the survivors not judged "
        "equivalent (long: every such mutant of a busy function runs all of them)",
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the staged copies (their path is printed)"
    )
    parser.add_argument(
        "--resume",
        type=Path,
        metavar="DIR",
        help="go on with a run that stopped, in the staged copies it kept in DIR (its "
        "--sample, and the code it staged): only the mutants without a result are tested",
    )
    parser.add_argument(
        "--again",
        action="store_true",
        help="test only the mutants the last run (reports/mutation.json, else "
        "results/mutation.json) left alive, in its sample; the others keep their result",
    )
    parser.add_argument(
        "--rejudge",
        action="store_true",
        help=f"test nothing: apply {judging.JUDGEMENTS} to the last run's reports/mutation.json "
        "and write the reports again",
    )

    args = parser.parse_args(argv)
    if args.rejudge:
        path = root / "reports" / "mutation.json"
        if not path.exists():
            parser.error(f"Cannot rejudge: {path} does not exist; run {COMMAND} first.")
        summary = judging.rejudge(
            json.loads(path.read_text(encoding="utf-8")), root / judging.JUDGEMENTS
        )
        reports.write_reports(root / "reports", summary)
        print(reports.score_line(summary["total"]))
        return 0
    if args.sample < 1 or args.max_children < 1:
        parser.error("--sample and --max-children take a positive number")
    if not 0 <= args.offset < args.sample:
        parser.error("--offset takes a number from 0 to the sample's step less one")
    config = mutmut_config(root)
    previous = sampling.previous_run(root, config["only_mutate"]) if args.again else None
    if previous is not None:
        if args.resume is not None:
            parser.error("--again starts a run of its own; it cannot --resume one")
        args.sample, args.offset = previous["sample"], previous.get("offset", 0)
    return run(
        root,
        bin_dir,
        config=config,
        sample=args.sample,
        offset=args.offset,
        max_children=args.max_children,
        with_processes=args.with_processes,
        resume=args.resume,
        previous=previous,
        keep=args.keep,
    )


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], root=Path.cwd(), bin_dir=Path(sys.executable).parent))
