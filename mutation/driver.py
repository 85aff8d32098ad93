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
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import datetime
import difflib
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

COMMAND = "python3 dev.py mutate"
#: Every SAMPLE-th mutant of each module by default: 89 minutes on two shared
#: cores (the run of 2026-12-01), where all of them would take most of a day.
SAMPLE = 8
#: The reference's packages, moved from reference/ to src/ in the staged copy.
PACKAGES = ("streaming", "streaming_project")
#: Left out of the staged copy.
NOT_STAGED = (
    ".git",
    ".venv",
    ".tox",
    ".demo",
    ".hypothesis",
    ".*_cache",
    "__pycache__",
    "*.egg-info",
    ".coverage",
    ".coverage.*",
    "*.sqlite3",
    "*.sqlite3-*",
    "build",
    "dist",
    "mutants",
    "reports",
    "results",
)
JUDGEMENTS = Path("reference/mutation_equivalents.toml")
#: Judged as killed; mutmut's own score (``mutmut export-cicd-stats``) counts both.
KILLED = ("killed", "timeout")
#: When a mutant ran in both phases, the status that stands (first listed wins).
PRECEDENCE = (
    "killed",
    "timeout",
    "caught by type check",
    "suspicious",
    "segfault",
    "check was interrupted by user",
    "survived",
    "skipped",
    "no tests",
    "not checked",
)


@dataclasses.dataclass(frozen=True)
class Phase:
    name: str
    #: What it runs, and what it leaves out (for the report).
    about: str
    #: ``pytest_add_cli_args``: added to every pytest run of the phase.
    pytest_args: tuple[str, ...]
    #: ``pytest_add_cli_args_test_selection``: the tests of the stats run.
    selection: tuple[str, ...]


#: Left out of the conformance phase, by ``-k``: slow, and repeating what
#: faster cases check. The performance suite measures CPU and memory for
#: minutes on an idle machine; the bulk cases send 10,000 events or fill the
#: finished-task budget (15-20 s each).
SLOW = "not test_performance and not ten_thousand_events and not memory_is_bounded"

WHITE_BOX = Phase(
    name="white-box",
    about=(
        "reference/tests under pytest-django (reference/pytest.ini), without the tests "
        "that need a Redis server (the redis_url fixture: they test redisbus.py) and "
        "the watch page's browser tests (they test ops/watch.py's script in Chromium)"
    ),
    pytest_args=(
        "-c",
        "reference/pytest.ini",
        "-p",
        "mutation.plugin",
        "--mutation-without-fixture",
        "redis_url",
        # A headless Chromium per test, for a page outside the mutated modules.
        "--ignore=reference/tests/test_ops_watch_page.py",
    ),
    selection=("reference/tests",),
)
#: What the conformance phases pass besides the cases they pick.
_SUITES = ("-p", "mutation.plugin", "--impl", "reference", "--conformance-results=/dev/null")
CONFORMANCE = Phase(
    name="conformance",
    about=(
        "conformance/suites --impl reference, the cases that run in process: "
        "--mode inprocess, without the cases that start server processes "
        "(the process capability: SHUT, most of EDGE, the cross-process RACE cases), "
        f'the performance suite and the bulk cases (-k "{SLOW}")'
    ),
    pytest_args=(
        *_SUITES,
        # Cases that take a client run once, in process: HTTP mode repeats them
        # over an in-process uvicorn. The writer (sse.py) is still served by the
        # HTTP suite and the other cases with a server_url.
        "--mode",
        "inprocess",
        # Server processes would run the active mutant too (it is in their
        # environment and they import the staged copy), but these cases take
        # five times as long as all the others together, and mutmut runs them
        # for every mutant of a function that every case calls.
        "--mutation-processes",
        "none",
        "-k",
        SLOW,
    ),
    selection=("conformance/suites",),
)
#: ``--with-processes``: the cases CONFORMANCE leaves out for starting server
#: processes, on the survivors not judged equivalent.
PROCESSES = Phase(
    name="processes",
    about=(
        "conformance/suites --impl reference, only the cases that start server processes, "
        f'--mode inprocess, -k "{SLOW}"; on the survivors not judged equivalent'
    ),
    pytest_args=(*_SUITES, "--mode", "inprocess", "--mutation-processes", "only", "-k", SLOW),
    selection=("conformance/suites",),
)
PHASES = (WHITE_BOX, CONFORMANCE)


@dataclasses.dataclass
class Mutant:
    id: str
    source: str  # its module's path in the staged copy, e.g. src/streaming/bus.py
    status: str = "not checked"
    #: The phase that killed it.
    killed_by: str | None = None
    where: str = ""
    change: str = ""
    judged: str = ""

    @property
    def module(self) -> str:
        return Path(self.source).name

    @property
    def function(self) -> str:
        """The mutated function: ``Hub.publish`` for ``streaming.hub.xǁHubǁpublish__mutmut_3``."""
        mangled = self.id.rpartition(".")[2].partition("__mutmut_")[0]
        if mangled.startswith("xǁ"):
            return ".".join(mangled[2:].split("ǁ"))
        return mangled.removeprefix("x_")

    @property
    def killed(self) -> bool:
        return self.status in KILLED

    @property
    def equivalent(self) -> bool:
        return self.judged.startswith("equivalent")


# -- the command ------------------------------------------------------------------


def main(argv: Sequence[str], *, root: Path, bin_dir: Path) -> int:
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
        help=f"test nothing: apply {JUDGEMENTS} to the last run's reports/mutation.json "
        "and write the reports again",
    )
    args = parser.parse_args(argv)
    if args.rejudge:
        path = root / "reports" / "mutation.json"
        if not path.exists():
            parser.error(f"Cannot rejudge: {path} does not exist; run {COMMAND} first.")
        summary = rejudge(json.loads(path.read_text(encoding="utf-8")), root / JUDGEMENTS)
        write_reports(root / "reports", summary)
        print(_score_line(summary["total"]))
        return 0
    if args.sample < 1 or args.max_children < 1:
        parser.error("--sample and --max-children take a positive number")
    if not 0 <= args.offset < args.sample:
        parser.error("--offset takes a number from 0 to the sample's step less one")
    config = _mutmut_config(root)
    previous = _previous_run(root, config["only_mutate"]) if args.again else None
    if previous is not None:
        if args.resume is not None:
            parser.error("--again starts a run of its own; it cannot --resume one")
        args.sample, args.offset = previous["sample"], previous.get("offset", 0)
    tool, statuses = _mutmut_version_and_statuses(bin_dir)
    if args.resume is not None:
        work = args.resume.resolve()
        ledger = _read_ledger(work, args.sample, args.offset)
        print(f"Resuming the run staged in {work}", flush=True)
    else:
        work = Path(tempfile.mkdtemp(prefix="mutation-"))
        ledger = {"sample": args.sample, "offset": args.offset, "seconds": {}}
        print(f"Staging a copy of the repository in {work}", flush=True)
    try:
        template = work / "tree"
        if args.resume is None:
            stage(root, template)
        mutants: dict[str, Mutant] = {}
        phases: list[dict[str, Any]] = []
        chosen: list[str] = []
        for phase in (*PHASES, *([PROCESSES] if args.with_processes else [])):
            phase_dir = work / phase.name
            if not phase_dir.exists():
                prepare(template, phase_dir, config, phase)
            if not phases:
                chosen = names = _sample(
                    bin_dir, phase_dir, config["only_mutate"], args.sample, args.offset
                )
                if previous is not None:
                    names = _alive_before(previous, chosen, phase_dir, config["only_mutate"])
            else:
                names = _survivors(mutants, phase, work / phases[-1]["name"], root)
                if not names:
                    break
            print(f"\n== {phase.name}: {phase.about}", flush=True)
            todo = _untested(phase_dir, config["only_mutate"], names)
            if todo is not None:
                began = time.monotonic()
                status = _run_mutmut(bin_dir, phase_dir, todo, args.max_children)
                _stop_leftovers(work)
                seconds = ledger["seconds"]
                seconds[phase.name] = seconds.get(phase.name, 0) + round(time.monotonic() - began)
                _write_ledger(work, ledger)
                if status != 0:
                    print(f"mutmut run failed in phase {phase.name} (status {status}).")
                    print(f"The staged copies are kept: {work}. To go on where it stopped:")
                    print(f"  {COMMAND} --resume {work} {_sampling(args.sample, args.offset)}")
                    args.keep = True
                    return status
            results = _exit_codes(phase_dir, config["only_mutate"])
            ran = _merge(mutants, results, statuses, phase.name)
            if previous is not None and len(phases) == 0:
                _keep_killed(mutants, previous, chosen)
            killed = sum(1 for m in mutants.values() if m.killed_by == phase.name)
            phases.append(
                {
                    "name": phase.name,
                    "about": phase.about,
                    "mutants": ran,
                    "killed": killed,
                    "seconds": ledger["seconds"].get(phase.name, 0),
                }
            )
            print(f"== {phase.name}: {ran} mutants tested, {killed} killed", flush=True)
        last = work / phases[-1]["name"]
        tested = [m for m in mutants.values() if _ran(m)]
        if args.sample > 1:
            _check_sample(mutants, chosen)
        _judge(tested, last, root / JUDGEMENTS)
        seconds = sum(ledger["seconds"].values())
        summary = summarize(
            tool=tool,
            command=f"{COMMAND} {_sampling(args.sample, args.offset)} "
            f"--max-children {args.max_children}"
            + (" --with-processes" if args.with_processes else "")
            + (" --again" if previous is not None else ""),
            tested=tested,
            population=Counter(m.module for m in mutants.values()),
            phases=phases,
            seconds=seconds,
            workers=args.max_children,
            sample=args.sample,
            offset=args.offset,
            only_mutate=config["only_mutate"],
            digest=_digest(root, config["only_mutate"]),
            previous=previous,
        )
        write_reports(root / "reports", summary)
        print(f"\n{_score_line(summary['total'])}")
        print(f"In {seconds // 60} min {seconds % 60} s; see reports/mutation.md")
        return 0
    except BaseException:
        args.keep = True  # mutmut's results are in the staged copies: keep them for a look
        raise
    finally:
        _stop_leftovers(work)
        if args.keep:
            print(f"Staged copies kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


# -- staging ----------------------------------------------------------------------


def stage(root: Path, tree: Path) -> None:
    """Copy the repository to ``tree``, the reference's packages under src/."""
    shutil.copytree(root, tree, symlinks=True, ignore=shutil.ignore_patterns(*NOT_STAGED))
    src = tree / "src"
    if src.exists():
        raise SystemExit(f"Cannot stage the reference: {root / 'src'} exists already.")
    src.mkdir()
    for package in PACKAGES:
        (tree / "reference" / package).rename(src / package)
    with (src / "streaming" / "__init__.py").open("a", encoding="utf-8") as init:
        init.write(_RECORD_HITS)


#: Appended to the staged ``streaming/__init__.py``: see ``mutation/hits.py``.
_RECORD_HITS = """
# Staged by mutation/driver.py: processes the stats run starts record what they execute.
try:
    from mutation.hits import install as _install_hits
except ImportError:  # a process that cannot import the driver's package records nothing
    pass
else:
    _install_hits()
"""


def prepare(tree: Path, phase_dir: Path, config: Mapping[str, Any], phase: Phase) -> None:
    """A copy of the staged tree for one phase, with its mutmut configuration."""
    shutil.copytree(tree, phase_dir, symlinks=True)
    settings = {
        **config,
        # The phases load mutation.plugin: it is copied to where the tests run.
        "also_copy": list(dict.fromkeys([*config.get("also_copy", []), "mutation"])),
        "pytest_add_cli_args": list(phase.pytest_args),
        "pytest_add_cli_args_test_selection": list(phase.selection),
    }
    lines = ["[tool.mutmut]", *(f"{key} = {_toml(value)}" for key, value in settings.items())]
    (phase_dir / "pyproject.toml").write_text("\n".join(lines) + "\n", encoding="utf-8")
    reference = phase_dir / "mutants" / "reference"
    reference.mkdir(parents=True)
    for package in PACKAGES:
        # manage.py imports the reference from reference/: there, the mutated copy.
        (reference / package).symlink_to(Path("..") / "src" / package)


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # a valid TOML basic string
    if isinstance(value, list):
        return "[" + ", ".join(_toml(item) for item in value) + "]"
    raise TypeError(f"Cannot write {value!r} to TOML.")


def _mutmut_config(root: Path) -> dict[str, Any]:
    data = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))
    try:
        config = dict(data["tool"]["mutmut"])
    except KeyError:
        raise SystemExit("Cannot run mutmut: pyproject.toml has no [tool.mutmut].") from None
    if not config.get("only_mutate"):
        raise SystemExit("Cannot run mutmut: [tool.mutmut] names no module in only_mutate.")
    return config


# -- running mutmut ------------------------------------------------------------------


def _mutmut_version_and_statuses(bin_dir: Path) -> tuple[str, dict[int | None, str]]:
    """The installed mutmut's version, and how it names each exit status of a test run."""
    code = (
        "import importlib.metadata, json\n"
        "from mutmut.stats import status_by_exit_code as s\n"
        "print(json.dumps([importlib.metadata.version('mutmut'), list(s.items())]))"
    )
    python = bin_dir / ("python.exe" if os.name == "nt" else "python")
    out = subprocess.run([python, "-c", code], capture_output=True, text=True, check=True).stdout
    version, statuses = json.loads(out)
    return f"mutmut {version}", {code: name for code, name in statuses}


#: Run in a phase's directory by the Python of .venv: makes mutmut's mutated
#: copy (mutants/, with a ``.meta`` file naming the mutants of each module),
#: the first step of ``mutmut run``, without running a test.
_GENERATE = """
from mutmut.__main__ import copy_src_dir, create_mutants, set_mutant_under_test
set_mutant_under_test("mutant_generation")
copy_src_dir()
create_mutants(1)
"""


def _sampling(every: int, offset: int) -> str:
    """The command-line options of a sample."""
    return f"--sample {every}" + (f" --offset {offset}" if offset else "")


def _sample(
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
        python = bin_dir / ("python.exe" if os.name == "nt" else "python")
        subprocess.run([python, "-c", _GENERATE], cwd=phase_dir, check=True, capture_output=True)
    names = []
    for source in sources:
        names += list(_exit_codes(phase_dir, [source]))[offset::every]
    return names


#: In the work directory: the run's sample, and the seconds each phase has taken so far.
LEDGER = "run.json"


def _read_ledger(work: Path, sample: int, offset: int) -> dict[str, Any]:
    try:
        ledger: dict[str, Any] = json.loads((work / LEDGER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise SystemExit(f"Cannot resume: {work} holds no run of {COMMAND}.") from None
    if (ledger["sample"], ledger.get("offset", 0)) != (sample, offset):
        raise SystemExit(
            f"Cannot resume: the run in {work} tests another sample; pass "
            f"{_sampling(ledger['sample'], ledger.get('offset', 0))}."
        )
    return ledger


def _write_ledger(work: Path, ledger: Mapping[str, Any]) -> None:
    (work / LEDGER).write_text(json.dumps(ledger, indent=2) + "\n", encoding="utf-8")


def _untested(phase_dir: Path, sources: Sequence[str], names: Sequence[str]) -> list[str] | None:
    """What ``mutmut run`` is to test of ``names`` (none: all): those without a result yet.

    None when every one has a result (a phase done before a resume). A phase
    mutmut has not run in yet tests ``names`` as given.
    """
    if not all((phase_dir / "mutants" / f"{source}.meta").exists() for source in sources):
        return list(names)
    codes = {name: code for name, (_, code) in _exit_codes(phase_dir, sources).items()}
    todo = [name for name in (names or codes) if codes.get(name) is None]
    if not todo:
        return None
    if not names and len(todo) == len(codes):
        return []  # all of them: mutmut's default
    return todo


def _run_mutmut(bin_dir: Path, phase_dir: Path, names: Sequence[str], workers: int) -> int:
    env = {
        key: value
        for key, value in os.environ.items()
        # SQLite, the default: forked workers must not share a PostgreSQL
        # connection; the in-memory bus, not Redis. Settings and paths come
        # from the staged copy alone.
        if key not in {"DATABASE_URL", "REDIS_URL", "PYTHONPATH", "MUTANT_UNDER_TEST"}
        and not key.startswith(("STREAMING_", "DJANGO_", "COVERAGE_", "CONFORMANCE_"))
    }
    argv = [str(bin_dir / "mutmut"), "run", "--max-children", str(workers), *names]
    return subprocess.run(argv, cwd=phase_dir, env=env).returncode


def _exit_codes(phase_dir: Path, sources: Iterable[str]) -> dict[str, tuple[str, int | None]]:
    """Every mutant of the phase: its module's path and its test run's exit status."""
    codes = {}
    for source in sources:
        meta = phase_dir / "mutants" / f"{source}.meta"
        if not meta.exists():
            raise SystemExit(f"Cannot read mutmut's results: {meta} is missing.")
        data = json.loads(meta.read_text(encoding="utf-8"))
        for name, code in data["exit_code_by_key"].items():
            codes[name] = (source, code)
    return codes


def _merge(
    mutants: dict[str, Mutant],
    results: Mapping[str, tuple[str, int | None]],
    statuses: Mapping[int | None, str],
    phase: str,
) -> int:
    """Fold a phase's results in; return how many mutants it tested."""
    ran = 0
    for name, (source, code) in results.items():
        mutant = mutants.setdefault(name, Mutant(name, source))
        if code is None:
            continue
        ran += 1
        status = statuses.get(code, "suspicious")  # mutmut's default for an unknown status
        status = status if status in PRECEDENCE else "suspicious"
        if PRECEDENCE.index(status) < PRECEDENCE.index(mutant.status):
            mutant.status = status
            if status in KILLED:
                mutant.killed_by = phase
    return ran


def _survivors(mutants: Mapping[str, Mutant], phase: Phase, last: Path, root: Path) -> list[str]:
    """What a later phase tests: what the earlier ones left alive (PROCESSES: not equivalent)."""
    alive = [m for m in mutants.values() if _ran(m) and not m.killed]
    if phase is PROCESSES:
        _judge(alive, last, root / JUDGEMENTS)
        alive = [m for m in alive if not m.judged.startswith("equivalent")]
    return sorted(m.id for m in alive)


def _digest(root: Path, sources: Sequence[str]) -> str:
    """A digest of the mutated modules' text: a run's mutants are those of this code."""
    digest = hashlib.sha256()
    for source in sources:
        path = root / source.replace("src/", "reference/", 1)
        digest.update(source.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def _previous_run(root: Path, sources: Sequence[str]) -> dict[str, Any]:
    """The summary ``--again`` goes on from, if it was made on the code as it is now."""
    for path in (root / "reports" / "mutation.json", root / "results" / "mutation.json"):
        if path.exists():
            break
    else:
        raise SystemExit(f"Cannot test again: no earlier run's summary; run {COMMAND} first.")
    summary: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    if summary.get("digest") not in (None, _digest(root, sources)):
        raise SystemExit(
            f"Cannot test again: the mutated modules changed since the run in {path}; "
            f"its mutants are not this code's. Run {COMMAND} for a new score."
        )
    summary["path"] = str(path.relative_to(root))
    return summary


def _alive_before(
    previous: Mapping[str, Any], chosen: Sequence[str], phase_dir: Path, sources: Sequence[str]
) -> list[str]:
    """The previous run's survivors, checked to be the same mutants of the same sample."""
    every = chosen or list(_exit_codes(phase_dir, sources))
    alive = previous["survivors"]
    codes = _exit_codes(phase_dir, sources)
    for survivor in alive:
        name = survivor["id"]
        if name not in every:
            raise SystemExit(f"Cannot test again: {name} is not in this run's sample.")
        if previous.get("digest") is None:  # a summary from before digests: compare the change
            _, change = describe(phase_dir, codes[name][0], name)
            if not _same(change, survivor["change"]):
                raise SystemExit(
                    f"Cannot test again: {name} is another change now ({change}); "
                    f"the mutated modules changed since the run in {previous['path']}."
                )
    return sorted(s["id"] for s in alive)


def _keep_killed(
    mutants: Mapping[str, Mutant], previous: Mapping[str, Any], chosen: Sequence[str]
) -> None:
    """Give the sample's mutants the previous run killed that result again."""
    alive = {s["id"] for s in previous["survivors"]}
    for name in chosen or mutants:
        mutant = mutants[name]
        if name not in alive and not _ran(mutant):
            mutant.status = "killed"
            mutant.killed_by = f"an earlier run ({previous['date']})"


def _ran(mutant: Mutant) -> bool:
    return mutant.status != "not checked"


def _check_sample(mutants: Mapping[str, Mutant], chosen: Sequence[str]) -> None:
    """Refuse to extrapolate from a sample mutmut did not test exactly."""
    tested = {name for name, mutant in mutants.items() if _ran(mutant)}
    if tested != set(chosen):
        wrong = sorted(tested.symmetric_difference(chosen))
        raise SystemExit(
            f"Cannot extrapolate: {len(wrong)} mutants are wrongly in or out of the sample "
            f"({', '.join(wrong[:3])}, ...)."
        )


def _stop_leftovers(work: Path) -> None:
    """Kill what a killed test run left behind (a server process it started) under ``work``."""
    proc = Path("/proc")
    if not proc.is_dir():
        return
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cwd = Path(os.readlink(entry / "cwd"))
        except OSError:
            continue  # gone, or not ours to look at
        if cwd == work or work in cwd.parents:
            try:
                os.kill(int(entry.name), signal.SIGKILL)
            except OSError:
                pass


# -- survivors: where, what changed, and the judgement on file -------------------------------


def _judge(tested: Sequence[Mutant], phase_dir: Path, judgements_path: Path) -> None:
    """Describe each survivor from mutmut's copy in ``phase_dir``, then judge it."""
    for mutant in tested:
        if mutant.killed:
            continue
        try:
            mutant.where, mutant.change = describe(phase_dir, mutant.source, mutant.id)
        except (OSError, ValueError, KeyError, StopIteration, SyntaxError) as exc:
            mutant.where = mutant.module
            mutant.change = f"(not read from mutmut's copy: {type(exc).__name__}: {exc})"
    _judge_on_file(tested, judgements_path)


def _judge_on_file(tested: Iterable[Mutant], judgements_path: Path) -> None:
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
    if not _same(judgement["change"], change):
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


def _same(a: str, b: str) -> bool:
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


# -- reports --------------------------------------------------------------------------

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
            f"[[survivor]]\nid = {_toml(s['id'])}\nwhere = {_toml(s['where'])}\n"
            f"change = {_toml(s['change'])}\njudged = {_toml('')}  # {s['judged']}\n"
            for s in unjudged
        ]
        header = f"# Survivors without a judgement; judged ones belong in {JUDGEMENTS}.\n\n"
        path.write_text(header + "\n".join(entries), encoding="utf-8")
    elif path.exists():
        path.unlink()


def _sort_key(where: str) -> tuple[str, int]:
    module, _, line = where.partition(":")
    return module, int(line or 0)


def _score_line(counts: Mapping[str, Any]) -> str:
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
        _score_line(total),
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


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], root=Path.cwd(), bin_dir=Path(sys.executable).parent))
