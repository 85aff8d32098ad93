"""The soak's checker on hand-written histories: each check passes a sound one, fails its breach."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from conformance.__main__ import main
from conformance.soak import checker, summarize
from conformance.soak.history import History, Record, read_history

pytestmark = pytest.mark.timeout(30)

TASK = "soak/1"


def _sound() -> list[Record]:
    """Two clients of one task across a worker's kill: one resumed, both told ``complete``."""
    records: list[dict[str, Any]] = [
        {"kind": "meta", "t": 0, "recovery_bound": 8, "memory_bound": 1000},
        {"kind": "task", "t": 1, "task": TASK, "behaviour": "steady"},
        {
            "kind": "open",
            "t": 1.1,
            "client": "c1",
            "conn": 1,
            "task": TASK,
            "worker": 0,
            "last_event_id": None,
            "status": 200,
        },
        {
            "kind": "open",
            "t": 1.1,
            "client": "c2",
            "conn": 1,
            "task": TASK,
            "worker": 1,
            "last_event_id": None,
            "status": 200,
        },
        {
            "kind": "request",
            "t0": 1.2,
            "t": 1.3,
            "task": TASK,
            "op": "start",
            "worker": 0,
            "status": 202,
        },
        {"kind": "state", "t0": 1.4, "t": 1.5, "task": TASK, "status": "RUNNING", "attempt": 1},
    ]
    for number in (1, 2, 3):
        records += [
            {
                "kind": "event",
                "t": 1.5 + number,
                "client": c,
                "conn": 1,
                "task": TASK,
                "id": number,
                "type": "progress",
            }
            for c in ("c1", "c2")
        ]
    records += [
        {"kind": "close", "t": 5, "client": "c2", "conn": 1, "how": "cut"},
        {
            "kind": "open",
            "t": 6,
            "client": "c2",
            "conn": 2,
            "task": TASK,
            "worker": 0,
            "last_event_id": 3,
            "status": 200,
        },
        {
            "kind": "event",
            "t": 6.1,
            "client": "c2",
            "conn": 2,
            "task": TASK,
            "id": 4,
            "type": "progress",
        },
        {
            "kind": "event",
            "t": 6.1,
            "client": "c1",
            "conn": 1,
            "task": TASK,
            "id": 4,
            "type": "progress",
        },
    ]
    for client, conn in (("c1", 1), ("c2", 2)):
        records += [
            {
                "kind": "event",
                "t": 7,
                "client": client,
                "conn": conn,
                "task": TASK,
                "id": 5,
                "type": "complete",
            },
            {"kind": "close", "t": 7.1, "client": client, "conn": conn, "how": "end"},
            {
                "kind": "client",
                "t": 7.1,
                "client": client,
                "task": TASK,
                "role": "reader",
                "stayed": True,
            },
        ]
    records += [
        {"kind": "state", "t0": 8, "t": 8.1, "task": TASK, "status": "SUCCESSFUL", "attempt": 1},
        {"kind": "memory", "t": 2, "worker": 0, "pid": 10, "rss": 5000},
        {"kind": "memory", "t": 9, "worker": 0, "pid": 10, "rss": 5900},
        {
            "kind": "state",
            "t0": 10,
            "t": 10.1,
            "task": TASK,
            "status": "SUCCESSFUL",
            "attempt": 1,
            "final": True,
        },
    ]
    return [{**r, "line": n} for n, r in enumerate(records, 1)]


def _find(records: list[Record], **match: Any) -> Record:
    return next(r for r in records if all(r.get(k) == v for k, v in match.items()))


def _checks_failed(records: list[Record]) -> set[str]:
    return {v.check for v in checker.check(records).violations}


def test_sound_history_when_checked_then_no_violation() -> None:
    report = checker.check(_sound())
    assert report.ok, checker.render(report)
    assert report.counts["tasks"] == 1 and report.counts["clients"] == 2


def test_task_left_running_when_checked_then_outcome_fails() -> None:
    records = _sound()
    _find(records, final=True)["status"] = "RUNNING"
    assert "outcome" in _checks_failed(records)


def test_task_without_final_row_when_checked_then_outcome_fails() -> None:
    records = [r for r in _sound() if not r.get("final")]
    assert "outcome" in _checks_failed(records)


def test_client_told_twice_when_checked_then_terminal_fails() -> None:
    records = _sound()
    at = records.index(_find(records, client="c1", type="complete"))
    records.insert(at + 1, {**records[at], "id": 6, "type": "cancelled"})
    assert "terminal" in _checks_failed(records)


def test_client_told_an_outcome_storage_never_held_when_checked_then_terminal_fails() -> None:
    records = _sound()
    _find(records, client="c1", type="complete")["type"] = "cancelled"
    assert _checks_failed(records) == {"terminal"}


def test_stream_ended_without_terminal_when_checked_then_terminal_fails() -> None:
    records = _sound()
    records = [r for r in records if not (r.get("client") == "c2" and r.get("type") == "complete")]
    assert "terminal" in _checks_failed(records)


def test_stream_cut_by_a_kill_when_checked_then_its_end_is_excused() -> None:
    records = _sound()
    cut = _find(records, client="c2", how="cut")
    cut["how"] = "end"  # a killed worker's socket may close like an ordered end
    records.insert(
        records.index(cut),
        {"kind": "fault", "t": 4.9, "fault": "sigkill", "target": 1, "phase": "start", "line": 0},
    )
    assert "terminal" not in _checks_failed(records)


def test_same_id_twice_when_checked_then_duplicate_fails() -> None:
    records = _sound()
    _find(records, client="c2", conn=2, kind="open")["last_event_id"] = 2
    event = _find(records, client="c2", conn=2, id=4)
    records.insert(records.index(event), {**event, "id": 3})
    assert "duplicate" in _checks_failed(records)


def test_silent_gap_when_checked_then_order_fails() -> None:
    records = _sound()
    records.remove(_find(records, client="c1", id=3))
    assert _checks_failed(records) == {"order"}


def test_gap_announced_by_stream_reset_when_checked_then_order_passes() -> None:
    records = _sound()
    gone = _find(records, client="c2", conn=2, id=4)
    records[records.index(gone)] = {**gone, "id": 4, "type": "stream-reset"}
    assert "order" not in _checks_failed(records)


def test_resume_answered_off_by_one_when_checked_then_order_or_duplicate_fails() -> None:
    records = _sound()
    _find(records, client="c2", conn=2, kind="open")["last_event_id"] = 3
    event = _find(records, client="c2", conn=2, id=4)
    records.insert(records.index(event), {**event, "id": 3})
    assert {"duplicate", "order"} <= _checks_failed(records)


def test_ids_going_back_when_checked_then_order_fails() -> None:
    records = _sound()
    _find(records, client="c1", id=4)["id"] = 2
    assert "order" in _checks_failed(records)


def _killed(records: list[Record], *, later: str) -> list[Record]:
    kill = {"kind": "fault", "t": 2, "fault": "sigkill", "target": 0, "phase": "start"}
    at = records.index(_find(records, kind="state", status="RUNNING"))
    records.insert(at + 1, kill)
    records.insert(
        at + 2, {"kind": "state", "t0": 30, "t": 30.1, "task": TASK, "status": later, "attempt": 1}
    )
    return records


def test_run_running_long_after_its_worker_died_when_checked_then_recovery_fails() -> None:
    assert "recovery" in _checks_failed(_killed(_sound(), later="RUNNING"))


def test_run_recorded_interrupted_after_its_worker_died_when_checked_then_recovery_passes() -> None:
    assert "recovery" not in _checks_failed(_killed(_sound(), later="INTERRUPTED"))


def test_database_away_when_worker_died_then_recovery_bound_stretches() -> None:
    records = _killed(_sound(), later="RUNNING")
    at = records.index(_find(records, kind="fault"))
    records[at + 1 : at + 1] = [
        {"kind": "fault", "t": 2.5, "fault": "db-away", "phase": "start"},
        {"kind": "fault", "t": 27, "fault": "db-away", "phase": "end"},
    ]
    assert "recovery" not in _checks_failed(records)


def _cancel(*, answered: bool) -> Record:
    """A cancel of the task sent at 1.6 to worker 1, answered at 1.7."""
    return {
        "kind": "request",
        "t0": 1.6,
        "t": 1.7,
        "task": TASK,
        "op": "cancel",
        "worker": 1,
        "status": 200,
        "answer": {"cancelled": answered},
    }


def test_cancel_answered_true_when_task_completes_then_cancel_fails() -> None:
    records = _sound()
    at = records.index(_find(records, kind="state", status="RUNNING"))
    records.insert(at + 1, _cancel(answered=True))
    assert "cancel" in _checks_failed(records)


def test_cancel_answered_false_when_task_completes_then_cancel_passes() -> None:
    records = _sound()
    at = records.index(_find(records, kind="state", status="RUNNING"))
    records.insert(at + 1, _cancel(answered=False))
    assert "cancel" not in _checks_failed(records)


def test_worker_growing_past_the_bound_when_checked_then_memory_fails() -> None:
    records = _sound()
    _find(records, kind="memory", t=9)["rss"] = 7000
    assert _checks_failed(records) == {"memory"}


def test_saved_history_when_read_back_then_judged_the_same(tmp_path: Path) -> None:
    path = tmp_path / "history.jsonl"
    with History(path) as history:
        for record in _sound():
            history.write(
                record["kind"], **{k: v for k, v in record.items() if k not in ("kind", "line")}
            )
    assert checker.check(read_history(path)).ok
    first = json.loads(path.read_text().splitlines()[0])
    assert first["kind"] == "meta"


def test_violation_when_rendered_then_quotes_the_history_lines() -> None:
    records = _sound()
    records.remove(_find(records, client="c1", id=3))
    text = checker.render(checker.check(records))
    assert "[order] client c1: id 2 then 4 with no stream-reset between" in text
    assert '"id":4' in text and "1 violation(s): order 1" in text


def test_history_when_summarized_then_counts_faults_and_verdict_for_the_report() -> None:
    records = _killed(_sound(), later="RUNNING")
    records[0].update(impl="reference", seed=3, duration=60.0, workers=2, database="postgresql")
    summary = summarize(records, checker.check(records))
    assert json.loads(json.dumps(summary)) == summary
    assert (summary["impl"], summary["seed"], summary["workers"]) == ("reference", 3, 2)
    assert summary["faults"] == {"sigkill": 1}
    assert summary["counts"]["tasks"] == 1 and summary["counts"]["clients"] == 2
    assert (summary["ok"], summary["violations"]) == (False, {"recovery": 1})
    assert "still RUNNING" in summary["first"][0]
    assert summary["ran"] == 30.1


def _cancelled_but_running_at(t0: float) -> list[Record]:
    """The task is cancelled (answered true) at 1.7, ends CANCELLED, yet reads RUNNING at ``t0``."""
    records = _sound()
    records[0]["cancel_bound"] = 3
    at = records.index(_find(records, kind="state", status="RUNNING"))
    running = {"kind": "state", "t0": t0, "t": t0 + 0.1, "task": TASK, "status": "RUNNING"}
    records[at + 1 : at + 1] = [_cancel(answered=True), {**running, "attempt": 1}]
    for record in records:
        if record.get("type") == "complete":
            record["type"] = "cancelled"
        if record.get("status") == "SUCCESSFUL":
            record["status"] = "CANCELLED"
    return records


def test_cancel_answered_true_when_task_stopped_within_bound_then_cancel_passes() -> None:
    assert "cancel" not in _checks_failed(_cancelled_but_running_at(4.0))


def test_cancel_answered_true_when_task_runs_on_past_bound_then_cancel_fails() -> None:
    report = checker.check(_cancelled_but_running_at(6.0))
    assert [v.check for v in report.violations] == ["cancel"], checker.render(report)
    assert "still RUNNING 4.3s later" in report.violations[0].message


def test_cancel_answered_true_when_a_worker_was_killed_then_recovery_bound_applies() -> None:
    records = _cancelled_but_running_at(6.0)
    kill = {"kind": "fault", "t": 2, "fault": "sigkill", "target": 1, "phase": "start"}
    records.insert(records.index(_find(records, kind="state", t0=6.0)), kill)
    assert "cancel" not in _checks_failed(records)


def test_run_taken_over_before_the_kill_when_checked_then_not_the_kills_to_judge() -> None:
    # A keeper found the run's lease lapsed (a database outage) and ran it
    # again, anywhere: the history does not say the killed worker had it.
    records = _killed(_sound(), later="RUNNING")
    kill = _find(records, kind="fault")
    moved = {"kind": "state", "t0": 1.8, "t": 1.9, "task": TASK, "status": "RUNNING"}
    records.insert(records.index(kill), {**moved, "attempt": 2})
    _find(records, t0=30)["attempt"] = 2
    assert "recovery" not in _checks_failed(records)


def test_saved_history_when_judged_again_with_summary_then_verdict_written(
    tmp_path: Path,
) -> None:
    history, out = tmp_path / "history.jsonl", tmp_path / "summary.json"
    records = _killed(_sound(), later="RUNNING")
    history.write_text("".join(json.dumps(r) + "\n" for r in records))
    assert main(["soak", "--check", str(history), "--summary", str(out)]) == 1
    summary = json.loads(out.read_text())
    assert summary["judged_again"] is True
    assert (summary["ok"], summary["violations"]) == (False, {"recovery": 1})


def test_cancel_answered_true_when_a_retry_after_it_was_cut_then_later_runs_not_judged() -> None:
    # A retry whose answer was lost on the way back (a cut, a kill) may still
    # have started a new run: what follows is that run's, not the cancel's.
    records = _sound()
    at = records.index(_find(records, kind="state", status="RUNNING"))
    retry = {"kind": "request", "t0": 2.0, "t": 2.1, "task": TASK, "op": "retry", "worker": 0}
    records[at + 1 : at + 1] = [_cancel(answered=True), {**retry, "error": "ReadError"}]
    assert "cancel" not in _checks_failed(records)
