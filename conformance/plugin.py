"""The pytest plugin: ``--impl``, the implementation fixtures, selection and grading.

Loaded through the ``pytest11`` entry point. ``--impl NAME`` (repeatable)
names implementations registered in the ``conformance.implementations``
entry-point group, or ``module:factory`` paths; every case runs once per
implementation, and the name is in its node ID (``test_x[reference-http]``).
The ``conformance_impls`` ini key gives the default.

Each case's outcome is graded (pass, fail, non-strict, unsupported, xfail,
error) and written as a JSON line to ``reports/``; ``python -m conformance
report`` turns those lines into ``TEST_RESULTS.md``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import os
import pkgutil
import platform
import signal
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import IO, Any

import pytest
import pytest_asyncio

from . import cases, compat, contract, hygiene, requirements, spec
from .clients import Client, open_client, serve_asgi
from .contract import CONTRACT_VERSION, Capability, Implementation, Runtime
from .processes import ServerProcess, running_server

ENTRY_POINT_GROUP = "conformance.implementations"
MODES = ("inprocess", "http")
#: Seconds a case may take unless it says otherwise.
DEFAULT_TIMEOUT = 60.0
#: Grace period of the shutdown that ends every case.
TEARDOWN_GRACE = 2.0


@dataclass
class _State:
    impl_names: list[str]
    modes: list[str]
    cases: list[str]
    results_path: str | None
    run_id: str
    impls: dict[str, Implementation] = field(default_factory=dict)
    #: How each implementation is graded, as to contract versions.
    terms: dict[str, compat.Terms] = field(default_factory=dict)
    grades: dict[str, dict[str, int]] = field(default_factory=dict)
    results: IO[str] | None = None
    #: Requirements that were graded in this session.
    graded: set[str] = field(default_factory=set)
    #: From the records: the contracts each implementation was graded against,
    #: and the old names the shims forwarded (in whichever process ran them).
    contracts: dict[str, set[str]] = field(default_factory=dict)
    deprecated: set[str] = field(default_factory=set)
    #: Per implementation: its racy cases that passed this time.
    racy_passes: dict[str, int] = field(default_factory=dict)


_STATE = pytest.StashKey[_State]()
_PHASES = pytest.StashKey[dict[str, pytest.TestReport]]()


# -- options ------------------------------------------------------------------


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("conformance", "streaming task coordinator conformance")
    group.addoption(
        "--impl",
        action="append",
        dest="conformance_impls",
        metavar="NAME",
        help="Implementation to test: a registered name or module:factory (repeatable).",
    )
    group.addoption(
        "--mode",
        action="append",
        dest="conformance_modes",
        choices=MODES,
        help="Client mode(s) for cases that take a client (default: all).",
    )
    group.addoption(
        "--case",
        action="append",
        dest="conformance_cases",
        metavar="PREFIX",
        help="Run only cases whose requirement ID starts with PREFIX, e.g. FUNC or FUNC-3.",
    )
    group.addoption(
        "--case-timeout",
        dest="conformance_case_timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help="Deadline of a case that names none itself (default: %(default)s).",
    )
    group.addoption(
        "--conformance-results",
        dest="conformance_results",
        metavar="PATH",
        help=(
            "JSON-lines file for graded results "
            "(default: reports/results-<impls>-<db>-py<X.Y>.jsonl)."
        ),
    )
    parser.addini("conformance_impls", type="args", default=[], help="Default for --impl.")


#: pytest-asyncio's loop scope for async fixtures; the suite's are per case.
_LOOP_SCOPE = "asyncio_default_fixture_loop_scope"


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "case(id): the SPEC.md requirement this case checks")
    config.addinivalue_line("markers", "requires(*capabilities): capabilities the case needs")
    names = config.getoption("conformance_impls") or config.getini("conformance_impls")
    if names and not config.getini(_LOOP_SCOPE):
        # What every third party's pytest.ini would otherwise have to say: set
        # before pytest-asyncio reads it (tryfirst), and only for a session
        # that grades, so another project's fixtures keep their own scope.
        # pytest has no public way to give another plugin's option a default.
        config._inicache[_LOOP_SCOPE] = "function"
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    config.stash[_STATE] = _State(
        impl_names=list(dict.fromkeys(names)),
        modes=config.getoption("conformance_modes") or list(MODES),
        cases=config.getoption("conformance_cases") or [],
        results_path=config.getoption("conformance_results"),
        run_id=getattr(config, "workerinput", {}).get("conformance_run_id", f"{now}-{os.getpid()}"),
    )
    config.pluginmanager.register(_Recorder(config), "conformance-recorder")
    known = registered()
    for name in config.stash[_STATE].impl_names:
        if ":" not in name and name not in known:
            raise pytest.UsageError(_unknown_message(name, known))


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """pytest-xdist: every worker's records carry the controller's run id."""
    node.workerinput["conformance_run_id"] = node.config.stash[_STATE].run_id


def pytest_report_header(config: pytest.Config) -> str:
    state = config.stash[_STATE]
    source = "--impl" if config.getoption("conformance_impls") else "conformance_impls in the ini"
    named = ", ".join(state.impl_names) or "(none)"
    return f"conformance: contract {CONTRACT_VERSION}; implementations {named} (from {source})"


def pytest_unconfigure(config: pytest.Config) -> None:
    state = config.stash.get(_STATE, None)
    if state is None:
        return
    if state.results is not None:
        state.results.close()
    for impl in state.impls.values():
        impl.close()


# -- implementations ----------------------------------------------------------


def registered() -> list[str]:
    """Names in the ``conformance.implementations`` entry-point group."""
    return sorted(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))


def _unknown_message(name: str, known: list[str]) -> str:
    return (
        f"Unknown implementation {name!r}. Registered: {', '.join(known) or 'none'}. "
        "Pass a registered name or a 'module:factory' path."
    )


def load_implementation(name: str) -> Implementation:
    """Create the implementation ``name`` names: an entry point or ``module:factory``."""
    if ":" in name:
        try:
            factory = pkgutil.resolve_name(name)
        except (ImportError, AttributeError, ValueError) as exc:
            raise pytest.UsageError(f"Cannot load implementation {name!r}: {exc!r}") from exc
    else:
        found = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == name]
        if not found:
            raise pytest.UsageError(_unknown_message(name, registered()))
        factory = found[0].load()
    try:
        impl = factory()
    except Exception as exc:
        raise pytest.UsageError(f"The factory of implementation {name!r} raised {exc!r}.") from exc
    if not isinstance(impl, Implementation):
        raise pytest.UsageError(
            f"{name!r} made {impl!r}, not a conformance.contract.Implementation."
        )
    return impl


def _impl(config: pytest.Config, name: str) -> Implementation:
    state = config.stash[_STATE]
    if name not in state.impls:
        impl = load_implementation(name)
        try:
            terms = compat.terms(impl)
        except compat.ContractMismatch as exc:
            raise pytest.UsageError(str(exc)) from None
        if terms.shimmed is not False:
            _grade_through_shims(state, name, impl)
        state.impls[name], state.terms[name] = impl, terms
    return state.impls[name]


def _grade_through_shims(state: _State, name: str, impl: Implementation) -> None:
    """Give the cases ``impl``'s runtimes as a previous major version's would be (compat.py).

    An implementation that declares no version is looked at when its runtime
    starts: only then is its runtime's class sure to be imported.
    """
    started = impl.start

    async def start() -> Runtime:
        runtime = await started()
        terms = state.terms[name]
        if terms.shimmed is None and compat.is_legacy(runtime):
            terms = state.terms[name] = compat.Terms(None, True)
        return compat.legacy_runtime(runtime) if terms.shimmed else runtime

    impl.start = start  # type: ignore[method-assign]


@pytest.hookimpl(tryfirst=True)
def pytest_collection(session: pytest.Session) -> None:
    # Loaded before any module is collected, so that node IDs carry each
    # implementation's declared name, and so that a problem with one is one
    # usage error, not an error per case.
    for name in session.config.stash[_STATE].impl_names:
        _impl(session.config, name)


def _display_names(state: _State) -> list[str]:
    """The declared name of each implementation, for node IDs; made unique if need be."""
    shown: list[str] = []
    for name in state.impl_names:
        declared = state.impls[name].name if name in state.impls else name
        shown.append(declared if declared not in shown else f"{declared}-{len(shown)}")
    return shown


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    state = metafunc.config.stash[_STATE]
    if "impl" in metafunc.fixturenames and state.impl_names:
        # With none named, pytest_collection_modifyitems says so: an error
        # raised here would be one collection error per module.
        metafunc.parametrize(
            "impl", state.impl_names, ids=_display_names(state), indirect=True, scope="session"
        )
    if "client" in metafunc.fixturenames:
        metafunc.parametrize("client", state.modes, indirect=True)


# -- fixtures -----------------------------------------------------------------


@pytest.fixture(scope="session")
def impl(request: pytest.FixtureRequest) -> Implementation:
    """The implementation under test (parametrized by ``--impl``)."""
    return _impl(request.config, request.param)


@pytest_asyncio.fixture
async def runtime(impl: Implementation) -> AsyncIterator[Runtime]:
    """A fresh runtime on this case's loop, checked for leaks when the case ends."""
    before = set(asyncio.all_tasks())
    with hygiene.loop_errors() as reported:
        started = await impl.start()
        baseline = hygiene.Baseline.now()
        try:
            yield started
            await hygiene.no_subscribers(started)
            await hygiene.idle_holds_nothing(started, baseline)
        finally:
            await started.shutdown(TEARDOWN_GRACE)
        await hygiene.nothing_held(started)
        await hygiene.no_leaked_tasks(before)
        hygiene.collect_garbage()
        await asyncio.sleep(0)  # let callbacks scheduled by collected objects report
    if reported:
        raise hygiene.HygieneError("The event loop reported: " + "; ".join(reported))


@pytest_asyncio.fixture
async def client(
    request: pytest.FixtureRequest, impl: Implementation, runtime: Runtime
) -> AsyncIterator[Client]:
    """A client in one mode (parametrized: ``inprocess``, ``http``)."""
    if request.param == "http":
        requirements.skip_unsupported(impl, [Capability.HTTP])
    async with contextlib.AsyncExitStack() as stack:
        yield await open_client(request.param, runtime, stack)


@pytest_asyncio.fixture
async def server_url(impl: Implementation, runtime: Runtime) -> AsyncIterator[str]:
    """Base URL of a real uvicorn server on 127.0.0.1 serving the runtime's ASGI app."""
    requirements.skip_unsupported(impl, [Capability.HTTP])
    async with serve_asgi(runtime.asgi_app()) as url:
        yield url


@pytest_asyncio.fixture
async def spawn_server(
    impl: Implementation, runtime: Runtime
) -> AsyncIterator[Callable[..., Awaitable[ServerProcess]]]:
    """Start real server processes (``await spawn_server(grace=...)``); all are gone after the case.

    They share storage with ``runtime``: create a task in process, start it
    over HTTP, watch the server run it.
    """
    requirements.skip_unsupported(impl, [Capability.PROCESS])
    async with contextlib.AsyncExitStack() as stack:

        async def spawn(*, grace: float = 5.0, env: dict[str, str] | None = None) -> ServerProcess:
            return await stack.enter_async_context(running_server(impl, grace=grace, env=env))

        yield spawn


# -- collection: IDs, selection, capabilities, expected failures ---------------


def _case_id(item: pytest.Item) -> str | None:
    marker = item.get_closest_marker("case")
    return str(marker.args[0]) if marker else None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    state = config.stash[_STATE]
    if not state.impl_names and any("impl" in getattr(i, "fixturenames", ()) for i in items):
        known = ", ".join(registered()) or "none installed"
        raise pytest.UsageError(
            f"No implementation named: pass --impl NAME (registered: {known}), a "
            "module:factory path, or set conformance_impls in the ini."
        )
    selected: list[pytest.Item] = []
    deselected: list[pytest.Item] = []
    for item in items:
        case_id = _case_id(item)
        if case_id is None:
            if "impl" in getattr(item, "fixturenames", ()):
                raise pytest.UsageError(
                    f"{item.nodeid}: a conformance case must name its ID with @pytest.mark.case."
                )
            # --case selects by requirement ID; a test without one matches no prefix.
            (deselected if state.cases else selected).append(item)
            continue
        try:
            spec.requirement(case_id)
        except spec.SpecError as exc:
            raise pytest.UsageError(f"{item.nodeid}: {exc}") from None
        if state.cases and not any(spec.matches_prefix(case_id, p) for p in state.cases):
            deselected.append(item)
            continue
        try:  # a misspelt capability is the case's bug, not every implementation's error
            requirements.check_known(_needs(item))
        except ValueError as exc:
            raise pytest.UsageError(f"{item.nodeid}: {exc}") from None
        item.keywords[case_id] = True
        item.extra_keyword_matches.add(case_id)  # what -k matches; keywords alone are not
        if item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(config.getoption("conformance_case_timeout")))
        # Hygiene: "coroutine ... was never awaited" and unclosed resources fail
        # the case that caused them, whatever the project's own warning filters.
        item.add_marker(pytest.mark.filterwarnings("error"))
        name = _impl_name(item)
        if name is not None:
            xfail = requirements.expected_failure(_impl(config, name), case_id, item.nodeid)
            if xfail is not None:
                item.add_marker(xfail)
        selected.append(item)
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = selected


def _impl_name(item: pytest.Item) -> str | None:
    callspec = getattr(item, "callspec", None)
    return callspec.params.get("impl") if callspec else None


def _needs(item: pytest.Item) -> list[str]:
    """Capabilities from every ``requires`` marker: module-level and the case's own add up."""
    return [str(a) for marker in item.iter_markers("requires") for a in marker.args]


def pytest_runtest_setup(item: pytest.Item) -> None:
    name = _impl_name(item)
    needs = _needs(item)
    if name is not None and needs:
        requirements.skip_unsupported(_impl(item.config, name), needs)


class EscapedInterrupt(AssertionError):
    """A ``KeyboardInterrupt`` raised in the implementation's code reached the case."""


@contextlib.contextmanager
def _interrupts_contained(item: pytest.Item) -> Iterator[None]:
    """Grade a KeyboardInterrupt the implementation lets escape; let a real Ctrl+C stop the run.

    A task that raises KeyboardInterrupt inside an asyncio task is re-raised
    out of the event loop: an implementation that does not catch it would
    otherwise end the whole session, and every later case with it. A SIGINT
    (the user's Ctrl+C) during the case is told apart by a handler of our own.
    """
    if _case_id(item) is None or threading.current_thread() is not threading.main_thread():
        yield
        return
    signalled = False
    previous = signal.getsignal(signal.SIGINT)

    def on_sigint(signum: int, frame: Any) -> None:
        nonlocal signalled
        signalled = True
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, on_sigint)
    try:
        yield
    except KeyboardInterrupt as exc:
        if signalled:
            raise
        raise EscapedInterrupt(
            "A KeyboardInterrupt raised by a task escaped the implementation into the "
            "event loop; a task's BaseException must end its run, not its process."
        ) from exc
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Any:
    with _interrupts_contained(item):
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Any:
    with _interrupts_contained(item):
        return (yield)


# -- grading ------------------------------------------------------------------


def _drop_lineless_entries(raised: BaseException) -> None:
    """Unlink traceback entries without a line number, in ``raised`` and what it chains.

    On Python 3.11+ an exception raised by a signal handler (pytest-timeout's
    alarm, a Ctrl+C) can land on an instruction with no line, and pytest's
    report of it then raises TypeError: an internal error that ends the whole
    session. The report loses only that one frame.
    """
    pending: list[BaseException | None] = [raised]
    seen: set[int] = set()
    while pending:
        exc = pending.pop()
        if exc is None or id(exc) in seen:
            continue
        seen.add(id(exc))
        while exc.__traceback__ is not None and exc.__traceback__.tb_lineno is None:
            exc.__traceback__ = exc.__traceback__.tb_next
        entry = exc.__traceback__
        while entry is not None and entry.tb_next is not None:
            if entry.tb_next.tb_lineno is None:
                entry.tb_next = entry.tb_next.tb_next
            else:
                entry = entry.tb_next
        pending += [exc.__cause__, exc.__context__]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    if call.excinfo is not None:
        _drop_lineless_entries(call.excinfo.value)
    report = yield
    case_id = _case_id(item)
    if case_id is not None:
        missing = _not_implemented(call.excinfo)
        if missing is not None:
            report.not_implemented = missing
        item.stash.setdefault(_PHASES, {})[report.when] = report
        if report.when == "teardown":
            # The record travels on the report: under pytest-xdist, the
            # controller, which writes the results, has no items.
            report.conformance = _record(item, case_id, item.stash[_PHASES])
    return report


def _not_implemented(excinfo: pytest.ExceptionInfo[BaseException] | None) -> str | None:
    """The contract method an implementation left out, and what it said; None otherwise.

    Only a NotImplementedError raised by a contract method itself counts: the
    contract's own default, or an implementation's Runtime or Implementation
    method. One raised deeper, inside the implementation's machinery, is a
    failure like any other.
    """
    if excinfo is None or not excinfo.errisinstance(NotImplementedError):
        return None
    tb = excinfo.tb
    while tb.tb_next is not None:
        tb = tb.tb_next
    frame = tb.tb_frame
    owner = frame.f_locals.get("self")
    if frame.f_globals.get("__name__") != contract.__name__ and not isinstance(
        owner, (contract.Runtime, contract.Implementation)
    ):
        return None
    method = frame.f_code.co_qualname
    return f"{method}: {excinfo.value}" if str(excinfo.value) else method


class _Recorder:
    """Writes each case's record where its report arrives: the controller, under pytest-xdist."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        record = getattr(report, "conformance", None)
        # An xdist worker's reports reach the controller too; it writes them.
        if record is not None and not hasattr(self.config, "workerinput"):
            _write(self.config, record)


#: How the reason of a racy case that passed starts (graded xfail).
RACY_PASS = "passed this time; "


def _racy_pass(report: pytest.TestReport) -> bool:
    """Whether ``report`` is the pass of a case declared racy (``racy_failures``)."""
    return report.passed and str(getattr(report, "wasxfail", "")).startswith(requirements.RACY)


@pytest.hookimpl(tryfirst=True)
def pytest_report_teststatus(
    report: pytest.TestReport, config: pytest.Config
) -> tuple[str, str, tuple[str, dict[str, bool]]] | None:
    """A racy case that passed shows ``RACY-PASS``, not the XPASS that reads as a fault.

    Its implementation declared that it fails in some interleavings only, so a
    pass is as expected as a failure (issue 25); the summary counts it apart,
    and the grades say how many there were and why.
    """
    if report.when == "call" and _racy_pass(report):
        return "racy passed", "r", ("RACY-PASS", {"green": True})
    return None


def grade(phases: dict[str, pytest.TestReport], level: spec.Level) -> tuple[str, str]:
    """The grade of one case from its setup/call/teardown reports, and why."""
    for report in phases.values():
        if report.skipped and not hasattr(report, "wasxfail"):
            reason = (
                report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
            )
            reason = reason.removeprefix("Skipped: ")
            if reason.startswith(requirements.UNSUPPORTED):
                return "unsupported", reason
            # Any other skip hides a case that did not run: never a quiet pass.
            return "error", f"skipped without a missing capability: {reason}"
    for report in phases.values():
        # An expected failure may fail in setup (the runtime would not start) as well as in call.
        if report.skipped and hasattr(report, "wasxfail"):
            return "xfail", str(report.wasxfail)
    call = phases.get("call")
    if call is not None and hasattr(call, "wasxfail"):
        if _racy_pass(call):
            return "xfail", f"{RACY_PASS}{call.wasxfail}"
        return "error", f"unexpected pass of an expected failure: {call.wasxfail}"
    for when in ("setup", "call", "teardown"):
        failed = phases.get(when)
        if failed is None or not failed.failed:
            continue
        missing = getattr(failed, "not_implemented", None)
        if missing is not None:
            # The implementation left out what the case needs: its error, not a broken MUST.
            return "error", f"not implemented: {missing}"
        text = str(failed.longrepr)
        summary = _summary(text)
        if "[XPASS(strict)]" in text:
            return "error", f"unexpected pass of an expected failure: {summary}"
        if "Timeout (>" in text and "pytest-timeout" in text:
            return "error", f"timed out: {summary}"
        if when == "setup":
            return "error", f"setup failed: {summary}"
        if when == "teardown":
            # A leak is a leak whatever the requirement's level.
            return "fail", f"hygiene: {summary}"
        return ("fail" if level is spec.Level.MUST else "non-strict"), summary
    return "pass", ""


def _summary(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip().startswith("E ")]
    return " ".join(line[1:].strip() for line in lines[:3])[:500] or text.splitlines()[-1][:500]


def _record(
    item: pytest.Item, case_id: str, phases: dict[str, pytest.TestReport]
) -> dict[str, Any]:
    """The graded result of one case, as a JSON-ready record."""
    state = item.config.stash[_STATE]
    requirement = spec.requirement(case_id)
    outcome, reason = grade(phases, requirement.level)
    name = _impl_name(item) or "?"
    impl = state.impls.get(name)
    terms = state.terms.get(name)
    env = dict(impl.environment()) if impl is not None else {}
    callspec = getattr(item, "callspec", None)
    return {
        "case": case_id,
        "level": str(requirement.level),
        "suite": Path(str(item.path)).stem.removeprefix("test_"),
        "nodeid": item.nodeid,
        "test": getattr(item, "originalname", item.name),
        "implementation": impl.name if impl is not None else name,
        "impl_version": impl.version if impl else "",
        "contract": terms.contract if terms is not None else "",
        "deprecated": sorted(compat.USED),
        "mode": callspec.params.get("client") if callspec else None,
        "grade": outcome,
        "reason": reason,
        "duration": round(sum(r.duration for r in phases.values()), 4),
        "python": platform.python_version(),
        "stack": env.get("stack"),
        "database": env.get("database"),
        "platform": env.get("platform", f"{platform.system()}-{platform.machine()}"),
        "run_id": state.run_id,
    }


def _write(config: pytest.Config, record: dict[str, Any]) -> None:
    """Grade and keep one record: in the results file, and in the session's totals."""
    state = config.stash[_STATE]
    name = record["implementation"]
    state.grades.setdefault(name, {}).setdefault(record["grade"], 0)
    state.grades[name][record["grade"]] += 1
    if record["grade"] == "xfail" and record["reason"].startswith(RACY_PASS + requirements.RACY):
        state.racy_passes[name] = state.racy_passes.get(name, 0) + 1
    state.graded.add(record["case"])
    state.contracts.setdefault(name, set()).add(record.get("contract", ""))
    state.deprecated.update(record.get("deprecated", ()))
    if state.results is None:
        path = Path(state.results_path or _default_results_path(config, record))
        path.parent.mkdir(parents=True, exist_ok=True)
        state.results = path.open("w", encoding="utf-8")
    state.results.write(json.dumps(record, sort_keys=True) + "\n")
    state.results.flush()


def _default_results_path(config: pytest.Config, record: dict[str, Any]) -> Path:
    """``reports/`` under the project's root directory (pytest's rootdir), not the cwd."""
    state = config.stash[_STATE]
    impls = "+".join(n.replace(":", "_").replace(".", "_") for n in state.impl_names)
    py = f"py{sys.version_info.major}.{sys.version_info.minor}"
    database = record.get("database") or "nodb"
    return config.rootpath / "reports" / f"results-{impls}-{database}-{py}.jsonl"


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    state = config.stash.get(_STATE, None)
    if not state or not state.grades:
        return
    terminalreporter.section("conformance grades")
    for name, counts in sorted(state.grades.items()):
        line = ", ".join(f"{g} {n}" for g, n in sorted(counts.items()))
        terminalreporter.write_line(f"{name}: {line}")
        if passed := state.racy_passes.get(name):
            terminalreporter.write_line(
                f"{name}: {passed} racy case{'s' * (passed > 1)} passed this time. {name} "
                "declares them in racy_failures: they fail in some interleavings only, so a "
                "pass is expected too; both are graded xfail."
            )
    for name, contracts in sorted(state.contracts.items()):
        for version in sorted(contracts):
            if said := compat.note(name, version):
                terminalreporter.write_line(f"contract: {said}")
    if state.deprecated:
        renamed = ", ".join(
            f"{old} (now {compat.RENAMED[old]})" for old in sorted(state.deprecated)
        )
        terminalreporter.write_line(f"deprecated names used: {renamed}")
    everything = {case.id for case in cases.collect()}
    if not everything <= state.graded:
        ran = sorted({case_id.partition("-")[0] for case_id in state.graded})
        terminalreporter.write_line(
            f"partial run: {len(state.graded)} of the suite's {len(everything)} requirements "
            f"were graded ({', '.join(ran)}); a grade says nothing of the rest"
        )
    if state.results is not None:
        terminalreporter.write_line(f"results: {state.results.name}")
