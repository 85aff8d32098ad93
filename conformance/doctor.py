"""``python -m conformance doctor --impl NAME``: what keeps an implementation from being graded.

It loads the implementation as the plugin would, starts a runtime, runs one
small task through it, and starts its server process if it declares one,
then says, one line each, what is wrong and where the contract, SPEC or the
guides say more:

- the contract version it declares, against the suite's;
- abstract methods it lacks, and old names it still uses;
- capability names the suite does not know, and capabilities it declares
  without the methods they need;
- deadlines and budgets left at their defaults, which make cases wait long;
- a ``server_command`` that does not start or does not answer;
- pytest settings that would get in the way.

It exits 1 if anything is wrong, 0 if nothing is.
"""

from __future__ import annotations

import argparse
import asyncio
import configparser
import contextlib
import importlib.util
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path

from . import compat
from .contract import (
    CONTRACT_VERSION,
    Budgets,
    Capability,
    Implementation,
    Runtime,
    TaskContext,
    Timings,
)

DESCRIPTION = "Check an implementation against the contract before grading it."
GUIDE = Path(__file__).with_name("GUIDE.md")
#: What a capability needs beyond the abstract methods: (class, method) pairs
#: whose contract default only raises NotImplementedError.
NEEDED: dict[Capability, list[tuple[type, str]]] = {
    Capability.RETRY: [(Runtime, "retry_task")],
    Capability.AUTHORIZATION: [(Runtime, "guarded_asgi_app"), (Implementation, "credentials_for")],
    Capability.RATE_LIMITS: [(Runtime, "guarded_asgi_app")],
    Capability.PROCESS: [(Implementation, "server_command")],
    Capability.FAULT_INJECTION: [
        (Implementation, "database_outage"),
        (Implementation, "drop_database_connections"),
    ],
}
#: Deadlines the cases wait for, and the capability that makes them wait.
DEADLINES = {
    "keepalive": Capability.HTTP,
    "write_deadline": Capability.HTTP,
    "cancel_grace": Capability.CANCEL,
    "orphan_timeout": Capability.RECOVERY,
    "header_timeout": Capability.PROCESS,
}
#: Seconds the probing task and the server get.
PROBE_DEADLINE = 10.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--impl", required=True, help="a registered implementation, or module:factory"
    )
    parser.add_argument("--no-server", action="store_true", help="do not start the server_command")


def run(args: argparse.Namespace) -> int:
    problems = asyncio.run(examine(args.impl, start_server=not args.no_server))
    for problem in problems:
        print(f"✗ {problem}")
    if problems:
        print(f"{len(problems)} problem(s) found; the guide: {GUIDE}")
        return 1
    print(f"✓ {args.impl}: nothing found wrong against contract {CONTRACT_VERSION}")
    return 0


async def examine(name: str, *, start_server: bool = True) -> list[str]:
    """Every problem found with the implementation ``name`` names, one line each."""
    from .plugin import load_implementation

    try:
        impl = load_implementation(name)
    except Exception as exc:  # a UsageError, or the factory's own failure
        return [f"cannot load {name!r}: {exc} (GUIDE.md: A minimal implementation)"]
    try:
        found, legacy = await _runtime(impl)
        problems = _version(impl, legacy) + _capabilities(impl) + _declarations(impl) + found
        if start_server and Capability.PROCESS in impl.capabilities:
            problems += await _server(impl)
        problems += _pytest_settings(Path.cwd())
    finally:
        impl.close()
    return problems


def _version(impl: Implementation, legacy: bool) -> list[str]:
    """What is wrong with the version ``impl`` declares; ``legacy``: its runtime is 1.x's."""
    try:
        terms = compat.terms(impl)
    except compat.ContractMismatch as exc:
        return [f"{exc} (MIGRATING.md)"]
    if terms.declared is None and not legacy:
        return [
            f"contract_version is not declared: say which contract {impl.name} is written "
            f'for, contract_version = "{CONTRACT_VERSION.rsplit(".", 1)[0]}" '
            "(contract: Implementation.contract_version)"
        ]
    if terms.shimmed or (terms.declared is None and legacy):
        graded = compat.Terms(terms.declared, True).contract
        return [f"{compat.note(impl.name, graded)} (MIGRATING.md: From 1.x to 2.0)"]
    return []


def _capabilities(impl: Implementation) -> list[str]:
    known = {str(c) for c in Capability}
    problems = [
        f"capability {str(c)!r} is not one the suite knows; known: {', '.join(sorted(known))} "
        "(contract: Capability)"
        for c in impl.capabilities
        if str(c) not in known
    ]
    for capability, needed in NEEDED.items():
        if capability not in impl.capabilities:
            continue
        for owner, method in needed:
            if owner is Implementation and getattr(type(impl), method) is getattr(owner, method):
                problems.append(
                    f"declares {str(capability)!r} but does not implement "
                    f"Implementation.{method} (contract: Implementation.{method})"
                )
    return problems


def _declarations(impl: Implementation) -> list[str]:
    """Deadlines and budgets left at the contract's defaults, for what it declares."""
    problems = []
    defaults = Timings()
    for field, capability in DEADLINES.items():
        if capability in impl.capabilities and getattr(impl.timings, field) == getattr(
            defaults, field
        ):
            problems.append(
                f"Timings.{field} is left at the default {getattr(defaults, field):g} s: cases "
                f"that wait for it wait that long; declare what it keeps under the suite "
                "(contract: Timings; GUIDE.md: The ideas to grasp first, 5)"
            )
    if Capability.PROCESS in impl.capabilities:
        if impl.budgets == Budgets():
            problems.append(
                "Budgets.finished_events is left at the default 64 MiB: EDGE-20 sends four "
                "times it; declare what the server keeps (contract: Budgets; SPEC: EDGE-20)"
            )
    return problems


async def probe(ctx: TaskContext) -> None:
    """A task that says which of the context's names it found."""
    names = ("task_id", "fields", "send_event", "read_fields", "write_fields")
    found = [name for name in (*names, "refresh", "update_fields") if hasattr(ctx, name)]
    await ctx.send_event("probe", {"names": found})


async def _runtime(impl: Implementation) -> tuple[list[str], bool]:
    """Start a runtime and run one task: what went wrong, method by method, and
    whether the runtime names its fields as contract 1.x did."""
    try:
        async with asyncio.timeout(PROBE_DEADLINE):
            runtime = await impl.start()
    except TypeError as exc:
        missing = re.search(r"abstract methods? (.*)", str(exc))
        names = missing[1].replace("'", "").split(", ") if missing else [str(exc)]
        return [
            f"Runtime lacks {method} (contract: Runtime.{method}"
            + (", renamed in 2.0: MIGRATING.md)" if method == "write_fields" else ")")
            for method in names
        ], False
    except Exception as exc:
        found = f"start() raised {type(exc).__name__}: {exc} (contract: Implementation.start)"
        return [found], False
    problems = []
    if "update_fields" in vars(type(runtime)):
        problems.append(
            "Runtime.update_fields is the 1.x name of Runtime.write_fields "
            "(MIGRATING.md: From 1.x to 2.0)"
        )
    for capability, needed in NEEDED.items():
        for owner, method in needed:
            if capability in impl.capabilities and owner is Runtime:
                if getattr(type(runtime), method) is getattr(Runtime, method):
                    problems.append(
                        f"declares {str(capability)!r} but does not implement "
                        f"Runtime.{method} (contract: Runtime.{method})"
                    )
    try:
        problems += await _run_probe(runtime)
    finally:
        with contextlib.suppress(Exception):
            await runtime.shutdown(1.0)
    return problems, compat.is_legacy(runtime)


async def _run_probe(runtime: Runtime) -> list[str]:
    try:
        async with asyncio.timeout(PROBE_DEADLINE):
            ref = await runtime.create_task(probe)
            subscription = await runtime.subscribe(ref)
            if not await runtime.start_task(ref):
                return ["start_task of a new task returned False (SPEC: FUNC-10)"]
            names: list[str] | None = None
            async for event in subscription:
                if event.type == "probe":
                    names = list(event.data.get("names", []))
                if event.is_terminal:
                    break
            await subscription.aclose()
    except TimeoutError:
        return [f"a one-event task did not end within {PROBE_DEADLINE:g}s (SPEC: FUNC-1)"]
    except Exception as exc:
        return [f"running a task raised {type(exc).__name__}: {exc} (SPEC: FUNC-1)"]
    if names is None:
        return ["the probing task's 'probe' event never reached its subscriber (SPEC: FUNC-1)"]
    problems = []
    for new, old in (("read_fields", "refresh"), ("write_fields", "update_fields")):
        if new not in names:
            was = f"; it has {old}, the 1.x name (MIGRATING.md)" if old in names else ""
            problems.append(
                f"the context a task gets lacks {new} (contract: TaskContext.{new}){was}"
            )
    return problems


async def _server(impl: Implementation) -> list[str]:
    from .processes import running_server

    try:
        async with asyncio.timeout(60), running_server(impl) as server:
            health = await server.request("GET", "/health")
            if health.status_code != 200:
                return [f"the server answers /health with {health.status_code} (SPEC: HTTP-1)"]
    except NotImplementedError as exc:
        return [f"server_command: {exc} (contract: Implementation.server_command)"]
    except Exception as exc:  # whatever went wrong, the doctor names it and goes on
        first = (str(exc).strip() or type(exc).__name__).splitlines()[:3]
        return [
            "the server_command did not start and answer: "
            + " / ".join(first)
            + " (contract: Implementation.server_command)"
        ]
    return []


def _pytest_settings(directory: Path) -> list[str]:
    """Settings of the pytest project in ``directory`` (or above) that get in the way."""
    ini = _pytest_ini(directory)
    problems = []
    scope = ini.get("asyncio_default_fixture_loop_scope", "function")
    if scope != "function":
        problems.append(
            f"asyncio_default_fixture_loop_scope is {scope!r}; the suite's fixtures need "
            "'function' (leave it unset: the plugin sets it)"
        )
    addopts = ini.get("addopts", "")
    if re.search(r"-p\s*no:conformance", addopts):
        problems.append("addopts turns the conformance plugin off (-p no:conformance)")
    if importlib.util.find_spec("pytest_django") is not None and not re.search(
        r"-p\s*no:django", addopts
    ):
        problems.append(
            "pytest-django is installed and not turned off: it refuses database access "
            "outside its own fixtures, which the suite's cases do not use; add -p no:django "
            "to the session that grades"
        )
    return problems


def _pytest_ini(directory: Path) -> Mapping[str, str]:
    """The ``[pytest]`` settings pytest would read from ``directory``, as text.

    pytest looks in each folder up from ``directory`` in this order and takes
    the first match: ``pytest.ini`` (even empty), ``.pytest.ini``,
    ``pyproject.toml`` with ``[tool.pytest.ini_options]``, ``tox.ini`` with
    ``[pytest]``, ``setup.cfg`` with ``[tool:pytest]``.
    """
    for folder in (directory, *directory.parents):
        for name in ("pytest.ini", ".pytest.ini"):
            if (folder / name).is_file():
                return _ini_section(folder / name, "pytest") or {}
        pyproject = folder / "pyproject.toml"
        if pyproject.is_file():
            tool = tomllib.loads(pyproject.read_text(encoding="utf-8")).get("tool", {})
            options = tool.get("pytest", {}).get("ini_options")
            if options is not None:
                return {
                    k: " ".join(v) if isinstance(v, list) else str(v) for k, v in options.items()
                }
        for name, section in (("tox.ini", "pytest"), ("setup.cfg", "tool:pytest")):
            if (folder / name).is_file():
                found = _ini_section(folder / name, section)
                if found is not None:
                    return found
    return {}


def _ini_section(path: Path, section: str) -> dict[str, str] | None:
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(path, encoding="utf-8")
    if not parser.has_section(section):
        return {} if path.name.endswith("pytest.ini") else None
    return dict(parser[section])


__all__ = ["add_arguments", "examine", "probe", "run"]
