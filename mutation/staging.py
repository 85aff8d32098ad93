"""Staging: the copy of the repository a run works in, and each phase's copy of it.

The working tree is never mutated, nor run in. :func:`stage` copies the
repository (without .git, .venv, reports and caches) with the reference's
packages moved from ``reference/`` to ``src/``, so that mutmut names each
mutant after the module it is imported as (``streaming.bus``). Each
:class:`Phase` runs in a copy of that tree of its own (:func:`prepare`), with
the ``[tool.mutmut]`` section of pyproject.toml plus the phase's pytest
arguments: mutmut resets its results when its pytest arguments change.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

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


@dataclasses.dataclass(frozen=True)
class Phase:
    """A stage of a run: one ``mutmut run`` with its own tests, in a copy of the tree."""

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
# Staged by mutation/staging.py: processes the stats run starts record what they execute.
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
    lines = ["[tool.mutmut]", *(f"{key} = {toml_value(value)}" for key, value in settings.items())]
    (phase_dir / "pyproject.toml").write_text("\n".join(lines) + "\n", encoding="utf-8")
    reference = phase_dir / "mutants" / "reference"
    reference.mkdir(parents=True)
    for package in PACKAGES:
        # manage.py imports the reference from reference/: there, the mutated copy.
        (reference / package).symlink_to(Path("..") / "src" / package)


def toml_value(value: Any) -> str:
    """``value`` as TOML: a bool, a number, a string or a list of them."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # a valid TOML basic string
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    raise TypeError(f"Cannot write {value!r} to TOML.")


def mutmut_config(root: Path) -> dict[str, Any]:
    """The ``[tool.mutmut]`` section of the repository's pyproject.toml."""
    data = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))
    try:
        config = dict(data["tool"]["mutmut"])
    except KeyError:
        raise SystemExit("Cannot run mutmut: pyproject.toml has no [tool.mutmut].") from None
    if not config.get("only_mutate"):
        raise SystemExit("Cannot run mutmut: [tool.mutmut] names no module in only_mutate.")
    return config
