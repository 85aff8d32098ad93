"""pytest plugin for the mutation runs of ``python3 dev.py mutate``.

Loaded with ``-p mutation.plugin`` by the phases in ``mutation/staging.py``;
no other session loads it. It does four things:

- **Fastest tests first.** mutmut runs the tests that executed a mutant's
  function with ``-x``, so the first failure ends the run and a killed mutant
  costs the tests before it. Its stats run records how long each test took
  (``mutmut-stats.json``, in the directory the tests run in), but its fork
  server hands the tests over in no particular order. Sorted fastest first, a
  killed mutant costs little more than its quickest killing test.
- **``--mutation-processes none|only``** deselects the conformance cases that need the
  ``process`` capability (a ``requires`` marker naming it, or the
  ``spawn_server`` fixture), or all the others. Those cases start real server
  processes, and take five times as long as every other case together.
- **``--mutation-without-fixture NAME``** deselects the tests that use fixture
  ``NAME`` (the reference's ``redis_url``: tests that need a Redis server).
- **Server processes in the stats run.** mutmut records the mutated functions
  each test calls in its own process only; with ``mutation.hits`` the
  processes a test starts record theirs too, and after the test's teardown
  (where servers shut down) they are added to mutmut's stats for that test.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from mutation import hits

STATS = Path("mutmut-stats.json")
PROCESS = "process"  # conformance.contract.Capability.PROCESS
#: Where processes started in the stats run write what they executed.
HITS = Path(".mutation-hits")
_HITS_KEY = pytest.StashKey[Path]()


def pytest_configure(config: pytest.Config) -> None:
    if os.environ.get("MUTANT_UNDER_TEST") != "stats":
        return  # a mutant's own run: nothing is recorded
    directory = HITS.resolve()
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir()
    config.stash[_HITS_KEY] = directory
    # Inherited by every process the tests start (their environments copy this one's).
    os.environ[hits.DIRECTORY] = str(directory)
    os.environ[hits.SESSION] = str(os.getpid())


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item: pytest.Item) -> Iterator[None]:
    yield  # the fixtures' teardown: servers stop, and record their shutdown
    directory = item.config.stash.get(_HITS_KEY, None)
    if directory is None:
        return
    names = hits.collect(directory)
    if names:
        from mutmut.state import state

        tests = state().tests_by_mangled_function_name
        nodeid = item.nodeid.removeprefix("mutants/")  # as mutmut's own collector names it
        for name in names:
            tests[name].add(nodeid)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("mutation", "mutation runs (python3 dev.py mutate)")
    group.addoption(
        "--mutation-processes",
        choices=("all", "none", "only"),
        default="all",
        dest="mutation_processes",
        help="Run the cases that start server processes too (all), none of them, or only them.",
    )
    group.addoption(
        "--mutation-without-fixture",
        action="append",
        default=[],
        dest="mutation_without_fixtures",
        metavar="NAME",
        help="Deselect the tests that use fixture NAME (repeatable).",
    )


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    processes = config.getoption("mutation_processes")
    unwanted = set(config.getoption("mutation_without_fixtures"))

    def wanted(item: pytest.Item) -> bool:
        if unwanted & set(getattr(item, "fixturenames", ())):
            return False
        return processes == "all" or _starts_processes(item) == (processes == "only")

    dropped = [item for item in items if not wanted(item)]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = [item for item in items if wanted(item)]
    try:
        durations = json.loads(STATS.read_text(encoding="utf-8"))["duration_by_test"]
    except (OSError, ValueError, KeyError):
        return  # the stats run itself: nothing is measured yet
    items.sort(key=lambda item: durations.get(item.nodeid, 0.0))  # stable: ties keep their order


def _starts_processes(item: pytest.Item) -> bool:
    needs = {str(arg) for marker in item.iter_markers("requires") for arg in marker.args}
    return PROCESS in needs or "spawn_server" in getattr(item, "fixturenames", ())
