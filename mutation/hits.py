"""What server processes execute, for mutmut's stats run.

mutmut picks each mutant's tests from its stats run, which records the
mutated functions each test calls, but only in its own process: a function
that only a server process calls (the stream endpoint, shutdown, recovery
after a crash) would have no tests, and its mutants none to kill them.

In the staged copy, ``streaming/__init__.py`` calls :func:`install`. In a
process the tests started, during the stats run, it makes mutmut's
trampolines append each mutated function's name, once, to a file of that
process in ``MUTATION_HITS``. The pytest plugin (``mutation.plugin``) reads
those files after each test's teardown, shutdown included, and adds the test
to those functions' tests in mutmut's stats.
"""

from __future__ import annotations

import os
from pathlib import Path

#: The directory the processes write to; set by the plugin in the stats run.
DIRECTORY = "MUTATION_HITS"
#: The process of the pytest session: mutmut records its calls itself.
SESSION = "MUTATION_HITS_SESSION"


def install() -> None:
    """In a process the stats run started, record the mutated functions it calls."""
    directory, session = os.environ.get(DIRECTORY), os.environ.get(SESSION)
    if os.environ.get("MUTANT_UNDER_TEST") != "stats" or not directory:
        return
    if session == str(os.getpid()):
        return
    from mutmut.mutation import trampoline

    path = Path(directory) / f"{os.getpid()}.hits"
    seen: set[str] = set()

    def record(name: str, caller: str | None = None) -> None:
        if name in seen:
            return
        seen.add(name)
        with path.open("a", encoding="utf-8") as out:
            out.write(name + "\n")  # a line at a time: the process may be killed at any point

    trampoline.record_trampoline_hit = record  # type: ignore[assignment]


def collect(directory: Path) -> set[str]:
    """The functions recorded in ``directory`` since the last call; the files are removed."""
    names: set[str] = set()
    for path in directory.glob("*.hits"):
        # A process still running writes to a new file after the rename: it
        # keeps its ``seen`` set, so it does not write these names again.
        taken = path.with_suffix(".taken")
        try:
            path.rename(taken)
            text = taken.read_text(encoding="utf-8")
            taken.unlink()
        except OSError:
            continue
        names.update(line for line in text.splitlines() if line)
    return names
