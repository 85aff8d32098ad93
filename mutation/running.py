"""Running mutmut in a phase's copy, and reading what it found.

A phase's mutants and their results are in mutmut's mutated copy
(``mutants/``): a ``.meta`` file per module holds each mutant's exit status,
which :func:`merge` folds into one :class:`Mutant` per mutant across the
phases. mutmut itself runs in ``.venv``; this module, like the rest of the
package, needs only the standard library.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

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


@dataclasses.dataclass
class Mutant:
    """One mutant, and what became of it."""

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


def ran(mutant: Mutant) -> bool:
    """Whether ``mutant`` has a result: a phase tested it, or ``--again`` kept an earlier run's."""
    return mutant.status != "not checked"


def mutmut_version_and_statuses(bin_dir: Path) -> tuple[str, dict[int | None, str]]:
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


def generate_mutants(bin_dir: Path, phase_dir: Path) -> None:
    """Make mutmut's mutated copy in ``phase_dir`` (mutants/), without running a test."""
    python = bin_dir / ("python.exe" if os.name == "nt" else "python")
    subprocess.run([python, "-c", _GENERATE], cwd=phase_dir, check=True, capture_output=True)


def run_mutmut(bin_dir: Path, phase_dir: Path, names: Sequence[str], workers: int) -> int:
    """``mutmut run`` on ``names`` (none: every mutant) in ``phase_dir``; its exit status."""
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


def exit_codes(phase_dir: Path, sources: Iterable[str]) -> dict[str, tuple[str, int | None]]:
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


def merge(
    mutants: dict[str, Mutant],
    results: Mapping[str, tuple[str, int | None]],
    statuses: Mapping[int | None, str],
    phase: str,
) -> int:
    """Fold a phase's results in; return how many mutants it tested."""
    tested = 0
    for name, (source, code) in results.items():
        mutant = mutants.setdefault(name, Mutant(name, source))
        if code is None:
            continue
        tested += 1
        status = statuses.get(code, "suspicious")  # mutmut's default for an unknown status
        status = status if status in PRECEDENCE else "suspicious"
        if PRECEDENCE.index(status) < PRECEDENCE.index(mutant.status):
            mutant.status = status
            if status in KILLED:
                mutant.killed_by = phase
    return tested


def stop_leftovers(work: Path) -> None:
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
