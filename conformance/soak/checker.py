"""Judge a soak's whole history against SPEC's MUSTs, after the run.

Jepsen's way: the run only records (:mod:`.history`); this module decides.
Each check reads the records in the order they were written and states its
rule by what came before what, and by task states, never by tight clocks.
The three that need time, ``recovery``, ``cancel`` and ``memory``, use
bounds the history states up front in its ``meta`` line, derived from what
the implementation declares, with margins.

The checks, each named in a violation:

``outcome``
    Every task has one terminal outcome in storage: its final row is
    finished (not READY, not RUNNING). (FUNC-2, FUNC-15)
``terminal``
    A client that stayed to the end received exactly one terminal event, its
    last, and it is an outcome storage recorded for the task (or
    ``interrupted``, or it was sent the farewell, as SPEC allows); a stream
    the server ended in order ends with a terminal event, the farewell or
    ``overflow``. (FUNC-2, FUNC-8, EDGE-7, SHUT)
``duplicate``
    No client received the same event id twice, across its reconnections.
    (FUNC-5, HTTP-7, MULTI-4)
``order``
    Event ids rise strictly on every client's stream, and every jump is
    announced by a ``stream-reset`` first. (FUNC-3, HTTP-7, EDGE-13)
``recovery``
    No run stays RUNNING past ``recovery_bound`` seconds (the declared
    orphan timeout plus a margin, the bound starting afresh after any outage of
    the database or the bus within it) after its worker was killed. (EDGE-6)
``cancel``
    A cancel that answered true ends its task CANCELLED, and stops it: no
    read of its state sent ``cancel_bound`` seconds after the answer (the
    declared cancel grace plus a margin, starting afresh after an outage,
    and stretched to ``recovery_bound`` after a worker's kill or stop within
    it) finds it still RUNNING. (CANCEL-1, CANCEL-9, MULTI-3, RACE-21)
``memory``
    No worker process's resident memory grows past ``memory_bound`` bytes
    over its first sample. (EDGE-20, PERF-4)

``python -m conformance soak --check HISTORY`` runs them on a saved history.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..contract import FAREWELL_EVENT, OVERFLOW_EVENT, STREAM_RESET_EVENT, TERMINAL_EVENTS
from .history import Record, format_record

#: Events that take no id of their own: they name the last one sent.
CONTROL_EVENTS = frozenset({FAREWELL_EVENT, OVERFLOW_EVENT, STREAM_RESET_EVENT, "waiting"})
#: The status each terminal event stands for.
STATUS_OF = {
    "complete": "SUCCESSFUL",
    "error": "FAILED",
    "cancelled": "CANCELLED",
    "timeout": "TIMED_OUT",
    "interrupted": "INTERRUPTED",
}
FINISHED = frozenset(STATUS_OF.values())
#: Faults after which a worker's open streams may end without a terminal event.
STREAM_FAULTS = frozenset({"sigkill", "sigterm", "client-cut"})
#: Records quoted with a violation, at most.
EXCERPT = 14

__all__ = ["CHECKS", "Report", "Violation", "check", "render"]

CHECKS = ("outcome", "terminal", "duplicate", "order", "recovery", "cancel", "memory")


@dataclass(frozen=True)
class Violation:
    """One broken rule: which check, what, and the records that show it."""

    check: str
    message: str
    excerpt: Sequence[Record] = ()

    def render(self) -> str:
        lines = [f"[{self.check}] {self.message}"]
        records = list(self.excerpt)
        if len(records) > EXCERPT:
            records = records[: EXCERPT // 2] + records[-EXCERPT // 2 :]
        lines += ["    " + format_record(r) for r in records]
        return "\n".join(lines)


@dataclass
class Report:
    """What the checker counted, and every violation it found."""

    counts: dict[str, int] = field(default_factory=dict)
    violations: list[Violation] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations

    def by_check(self) -> dict[str, int]:
        found: dict[str, int] = defaultdict(int)
        for violation in self.violations:
            found[violation.check] += 1
        return dict(found)


def check(records: Sequence[Record]) -> Report:
    """Run every check over a history; the report holds the counts and violations."""
    h = _Indexed(records)
    report = Report(counts=h.counts())
    for name in CHECKS:
        report.violations += getattr(h, f"check_{name}")()
    return report


def render(report: Report, *, limit: int = 10) -> str:
    """The counts, then the first ``limit`` violations with their excerpts."""
    counts = ", ".join(f"{n} {what}" for what, n in report.counts.items())
    lines = [f"soak history: {counts}"]
    if report.ok:
        lines.append("checker: no violation (" + ", ".join(CHECKS) + ")")
        return "\n".join(lines)
    per_check = ", ".join(f"{name} {n}" for name, n in report.by_check().items())
    lines.append(f"checker: {len(report.violations)} violation(s): {per_check}")
    lines += [v.render() for v in report.violations[:limit]]
    if len(report.violations) > limit:
        lines.append(f"... and {len(report.violations) - limit} more")
    return "\n".join(lines)


def _finished(record: Record) -> bool:
    return record.get("status") in FINISHED


class _Indexed:
    """A history grouped by task and by client, for the checks."""

    def __init__(self, records: Sequence[Record]) -> None:
        self.records = list(records)
        meta = [r for r in self.records if r["kind"] == "meta"]
        self.meta: Record = meta[0] if meta else {}
        self.tasks: dict[str, Record] = {}
        self.by_task: dict[str, list[Record]] = defaultdict(list)
        self.by_client: dict[str, list[Record]] = defaultdict(list)
        self.faults: list[Record] = []
        for record in self.records:
            kind = record["kind"]
            if kind == "task":
                self.tasks[record["task"]] = record
            if kind in ("task", "request", "state"):
                self.by_task[record["task"]].append(record)
            elif kind in ("open", "event", "close", "client"):
                self.by_client[record["client"]].append(record)
            elif kind == "fault":
                self.faults.append(record)

    def counts(self) -> dict[str, int]:
        kinds: dict[str, int] = defaultdict(int)
        for record in self.records:
            kinds[record["kind"]] += 1
        return {
            "tasks": len(self.tasks),
            "events": kinds["event"],
            "clients": len(self.by_client),
            "connections": kinds["open"],
            "requests": kinds["request"],
            "faults": sum(1 for f in self.faults if f.get("phase") == "start"),
        }

    # -- storage ------------------------------------------------------------------------

    def check_outcome(self) -> list[Violation]:
        found = []
        for task, records in self.by_task.items():
            final = [r for r in records if r["kind"] == "state" and r.get("final")]
            if not final:
                found.append(Violation("outcome", f"task {task} has no final row", records))
            elif not _finished(final[-1]):
                found.append(
                    Violation(
                        "outcome",
                        f"task {task} ends {final[-1].get('status')}: no terminal outcome stored",
                        records,
                    )
                )
        return found

    def outcomes(self, task: str) -> set[str]:
        """Every finished status storage was seen to hold for ``task``."""
        return {
            r["status"] for r in self.by_task.get(task, []) if r["kind"] == "state" and _finished(r)
        }

    # -- streams ------------------------------------------------------------------------

    def _connections(self, records: list[Record]) -> list[list[Record]]:
        """A client's records split by connection, in order."""
        conns: dict[Any, list[Record]] = {}
        for record in records:
            if record["kind"] in ("open", "event", "close"):
                conns.setdefault(record["conn"], []).append(record)
        return list(conns.values())

    def _faulted(self, worker: Any, start: float, end: float) -> bool:
        """Whether a fault that may end streams hit ``worker`` between ``start`` and ``end``."""
        for fault in self.faults:
            if fault.get("fault") not in STREAM_FAULTS or fault.get("phase") != "start":
                continue
            if fault.get("target") in (worker, None, "all") and start <= fault["t"] <= end + 1:
                return True
        return False

    def check_terminal(self) -> list[Violation]:
        found = []
        for client, records in self.by_client.items():
            task = str(records[0].get("task"))
            done = [r for r in records if r["kind"] == "client"]
            events = [r for r in records if r["kind"] == "event"]
            for conn in self._connections(records):
                found += self._ended_in_order(client, conn)
            if not done or not done[-1].get("stayed"):
                continue
            data = [e for e in events if e["type"] not in CONTROL_EVENTS]
            terminals = [e for e in data if e["type"] in TERMINAL_EVENTS]
            if len(terminals) > 1:
                found.append(
                    Violation(
                        "terminal",
                        f"client {client} of {task} received {len(terminals)} terminal events",
                        records,
                    )
                )
                continue
            if not terminals:
                if events and events[-1]["type"] == FAREWELL_EVENT:
                    continue  # SPEC allows a farewell as the end
                found.append(
                    Violation(
                        "terminal",
                        f"client {client} of {task} stayed to the end and received "
                        "no terminal event",
                        records,
                    )
                )
                continue
            terminal = terminals[0]
            if data[-1] is not terminal:
                found.append(
                    Violation(
                        "terminal",
                        f"client {client} of {task} received events after its "
                        f"terminal event {terminal['type']}",
                        records,
                    )
                )
            status = STATUS_OF[terminal["type"]]
            stored = self.outcomes(task)
            if terminal["type"] != "interrupted" and status not in stored:
                found.append(
                    Violation(
                        "terminal",
                        f"client {client} of {task} received {terminal['type']!r}, but storage "
                        f"recorded {sorted(stored) or 'no outcome'}",
                        [*records, *self.by_task.get(task, [])],
                    )
                )
        return found

    def _ended_in_order(self, client: str, conn: list[Record]) -> list[Violation]:
        opened, closed = conn[0], conn[-1]
        if opened["kind"] != "open" or closed["kind"] != "close" or closed.get("how") != "end":
            return []
        if opened.get("status") != 200:
            return []
        events = [r for r in conn if r["kind"] == "event" and r["type"] != "waiting"]
        last = events[-1]["type"] if events else None
        if last in TERMINAL_EVENTS or last in (FAREWELL_EVENT, OVERFLOW_EVENT):
            return []
        if self._faulted(opened.get("worker"), opened["t"], closed["t"]):
            return []
        return [
            Violation(
                "terminal",
                f"client {client}'s stream of {opened.get('task')} ended in order after "
                f"{last or 'no event'}: no terminal event, farewell or overflow",
                conn,
            )
        ]

    def check_duplicate(self) -> list[Violation]:
        found = []
        for client, records in self.by_client.items():
            seen: dict[int, Record] = {}
            for event in (r for r in records if r["kind"] == "event"):
                if event["type"] in CONTROL_EVENTS:
                    continue
                if event["id"] in seen:
                    found.append(
                        Violation(
                            "duplicate",
                            f"client {client} received id {event['id']} twice "
                            f"({seen[event['id']]['type']}, then {event['type']})",
                            _around(records, seen[event["id"]], event),
                        )
                    )
                    break
                seen[event["id"]] = event
        return found

    def check_order(self) -> list[Violation]:
        found = []
        for client, records in self.by_client.items():
            violation = self._order(client, records)
            if violation is not None:
                found.append(violation)
        return found

    def _order(self, client: str, records: list[Record]) -> Violation | None:
        previous: Record | None = None  # the last event with an id of its own, any connection
        announced = False
        fresh = True  # the next event may be anything: a new connection with no Last-Event-ID
        for record in records:
            if record["kind"] == "open":
                announced = False
                fresh = record.get("last_event_id") is None and previous is None
                if record.get("last_event_id") is not None and previous is not None:
                    if record["last_event_id"] != previous["id"]:
                        fresh = False  # the harness resumes from the last id it received
                continue
            if record["kind"] != "event":
                continue
            if record["type"] == STREAM_RESET_EVENT:
                announced = True
                continue
            if record["type"] in CONTROL_EVENTS:
                continue
            if previous is not None:
                if record["id"] <= previous["id"]:
                    return Violation(
                        "order",
                        f"client {client}: id {record['id']} ({record['type']}) after "
                        f"id {previous['id']} ({previous['type']})",
                        _around(records, previous, record),
                    )
                jump = record["id"] != previous["id"] + 1
                if jump and not announced and record["type"] != "interrupted":
                    return Violation(
                        "order",
                        f"client {client}: id {previous['id']} then {record['id']} "
                        "with no stream-reset between",
                        _around(records, previous, record),
                    )
            elif not fresh and not announced:
                opened = [r for r in records if r["kind"] == "open" and r["t"] <= record["t"]]
                resumed = opened[-1].get("last_event_id") if opened else None
                if resumed is not None and record["id"] != resumed + 1:
                    return Violation(
                        "order",
                        f"client {client} resumed after id {resumed}, then received id "
                        f"{record['id']} with no stream-reset first",
                        _around(records, opened[-1], record),
                    )
            previous, announced, fresh = record, False, False
        return None

    # -- time-bounded ---------------------------------------------------------------------

    def _outages(self) -> list[tuple[float, float]]:
        """When the database or the bus was away: (start, end); end is inf if never back."""
        spans = []
        begun: dict[str, float] = {}
        for fault in self.faults:
            if fault.get("fault") not in ("db-away", "redis-stop"):
                continue
            if fault.get("phase") == "start":
                begun[fault["fault"]] = fault["t"]
            elif fault["fault"] in begun:
                spans.append((begun.pop(fault["fault"]), fault["t"]))
        spans += [(began, float("inf")) for began in begun.values()]
        return spans

    def _deadline(self, start: float, bound: float) -> float:
        """``start`` plus ``bound``, the bound starting afresh once an outage within it ends."""
        deadline = start + bound
        changed = True
        while changed:
            changed = False
            for began, ended in self._outages():
                if began <= deadline and ended >= start and ended + bound > deadline:
                    deadline, changed = ended + bound, True
        return deadline

    def check_recovery(self) -> list[Violation]:
        bound = float(self.meta.get("recovery_bound", 0) or 0)
        if not bound:
            return []
        found = []
        kills = [
            f for f in self.faults if f.get("fault") == "sigkill" and f.get("phase") == "start"
        ]
        for kill in kills:
            for task, records in self.by_task.items():
                violation = self._lost_run(task, records, kill, bound)
                if violation is not None:
                    found.append(violation)
        return found

    def _lost_run(
        self, task: str, records: list[Record], kill: Record, bound: float
    ) -> Violation | None:
        before = [r for r in records if r["t"] < kill["t"]]
        starts = [
            r
            for r in before
            if r["kind"] == "request"
            and r.get("op") in ("start", "retry")
            and r.get("status") == 202
        ]
        if not starts or starts[-1].get("worker") != kill.get("target"):
            return None
        started = starts[-1]
        states = [r for r in before if r["kind"] == "state" and r["t0"] >= started["t0"]]
        if not states or states[-1].get("status") != "RUNNING":
            return None  # not seen running there, or seen finished: not this kill's to judge
        attempt = states[-1].get("attempt")
        if states[0].get("attempt") != attempt:
            # Run again since that start (a keeper's rerun after a lost lease):
            # the history does not say where the new attempt runs.
            return None
        deadline = self._deadline(kill["t"], bound)
        for record in records:
            if record["kind"] != "state" or record["t0"] <= deadline:
                continue
            if record.get("status") == "RUNNING" and record.get("attempt") == attempt:
                return Violation(
                    "recovery",
                    f"task {task} was still RUNNING (attempt {attempt}) "
                    f"{record['t0'] - kill['t']:.1f}s after its worker {kill.get('target')} was "
                    f"killed; the bound is {bound:g}s plus outages",
                    [kill, started, states[-1], record],
                )
            if record.get("attempt") != attempt or record.get("status") != "RUNNING":
                return None
        return None

    def check_cancel(self) -> list[Violation]:
        found = []
        for task, records in self.by_task.items():
            for cancel in records:
                if not _cancelled_true(cancel):
                    continue
                # Any retry sent after it, answered or not: one cut on its way
                # back may still have started a new run.
                retried = [
                    r
                    for r in records
                    if r["kind"] == "request" and r.get("op") == "retry" and r["t0"] >= cancel["t"]
                ]
                until = retried[0]["t0"] if retried else float("inf")
                ended = self._ended_otherwise(task, records, cancel, until)
                if ended is None:
                    ended = self._ran_on(task, records, cancel, until)
                if ended is not None:
                    found.append(ended)
        return found

    def _ended_otherwise(
        self, task: str, records: list[Record], cancel: Record, until: float
    ) -> Violation | None:
        for state in records:
            if state["kind"] != "state" or not _finished(state):
                continue
            if cancel["t"] <= state["t0"] < until and state["status"] != "CANCELLED":
                return Violation(
                    "cancel",
                    f"a cancel of {task} answered true, but the task ended {state['status']}",
                    [cancel, state],
                )
        return None

    def _ran_on(
        self, task: str, records: list[Record], cancel: Record, until: float
    ) -> Violation | None:
        bound = float(self.meta.get("cancel_bound", 0) or 0)
        if not bound:
            return None
        deadline = self._deadline(cancel["t"], bound)
        recovery = float(self.meta.get("recovery_bound", 0) or 0)
        for fault in self.faults:
            stops = fault.get("fault") in ("sigkill", "sigterm") and fault.get("phase") == "start"
            if stops and cancel["t"] - recovery <= fault["t"] <= deadline:
                # The run's worker may be the one stopped: then a keeper ends it.
                deadline = max(deadline, self._deadline(fault["t"], recovery))
        for state in records:
            if state["kind"] != "state" or not deadline < state["t0"] < until:
                continue
            if state["status"] != "RUNNING":
                return None
            return Violation(
                "cancel",
                f"a cancel of {task} answered true, but the task was still RUNNING "
                f"{state['t0'] - cancel['t']:.1f}s later; the bound is {bound:g}s plus "
                "outages and stopped workers",
                [cancel, state],
            )
        return None

    def check_memory(self) -> list[Violation]:
        bound = int(self.meta.get("memory_bound", 0) or 0)
        if not bound:
            return []
        first: dict[Any, Record] = {}
        reported: set[Any] = set()
        found = []
        for record in self.records:
            if record["kind"] != "memory" or record["pid"] in reported:
                continue
            start = first.setdefault(record["pid"], record)
            if record["rss"] - start["rss"] > bound:
                reported.add(record["pid"])
                found.append(
                    Violation(
                        "memory",
                        f"worker {record.get('worker')} (pid {record['pid']}) grew by "
                        f"{(record['rss'] - start['rss']) / 2**20:.1f} MiB, past the bound of "
                        f"{bound / 2**20:.1f} MiB",
                        [start, record],
                    )
                )
        return found


def _cancelled_true(record: Record) -> bool:
    if record["kind"] != "request" or record.get("op") != "cancel" or record.get("status") != 200:
        return False
    answer = record.get("answer")
    return isinstance(answer, dict) and answer.get("cancelled") is True


def _around(records: list[Record], first: Record, last: Record) -> list[Record]:
    """The records from ``first`` to ``last`` (two either side at most of a long run)."""
    lo, hi = records.index(first), records.index(last)
    span = records[max(0, lo - 1) : hi + 2]
    if len(span) > EXCERPT:
        span = span[:3] + span[-(EXCERPT - 3) :]
    return span


def lines_of(records: Iterable[Record]) -> list[int]:
    """The history line numbers of ``records``."""
    return [int(r.get("line", 0)) for r in records]
