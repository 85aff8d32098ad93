"""What an operator sees of the reference: its log lines and its asyncio tasks.

Someone running the server reads its log, and when something hangs, a dump of
its asyncio tasks (``asyncio.all_tasks()``, a debugger, aiomonitor). Both
must say which task they are about and what happened to it: every line and
every task name carries the run's ``Model:pk``, a start says its attempt, an
ending says its status, and a cancelled asyncio task says who cancelled it
and why. These tests pin that wording where the suites, which see only the
contract, cannot.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from asgiref.sync import sync_to_async

from conformance.behaviours import park_forever
from conformance.waiting import eventually

pytestmark = [
    pytest.mark.timeout(30),
    pytest.mark.asyncio,
    pytest.mark.django_db(transaction=True),
]


@pytest_asyncio.fixture
async def coordinator() -> AsyncIterator[Any]:
    from streaming.coordinator import Coordinator

    made = Coordinator(cancel_grace=0.3, lease=3.0)
    made.open()
    try:
        yield made
    finally:
        await made.shutdown(1.0)


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="streaming")
    return caplog


def said(caplog: pytest.LogCaptureFixture, logger: str) -> list[tuple[str, str]]:
    """``(level, message)`` of each record ``logger`` wrote, in order."""
    return [(r.levelname, r.getMessage()) for r in caplog.records if r.name == logger]


async def told_cancel(ctx: Any) -> None:
    """Send ``start`` and park; when cancelled, store what the cancellation said, then stop."""
    await ctx.send_event("start", {})
    try:
        await park_forever()
    except asyncio.CancelledError as exc:
        await ctx.write_fields(cancelled_with=list(exc.args))
        raise


async def _started(coordinator: Any, behaviour: str, **fields: Any) -> Any:
    """A BehaviourTask started on ``coordinator``; its subscriber, which has seen ``start``."""
    from streaming.models import BehaviourTask

    task = await BehaviourTask.objects.acreate(behaviour=behaviour, fields=fields)
    subscriber = await coordinator.subscribe(BehaviourTask, task.pk)
    assert await coordinator.start_task(BehaviourTask, task.pk)
    async with asyncio.timeout(5):
        assert (await subscriber.get()).event.type == "start"
    return task, subscriber


async def _stored(pk: int, field: str) -> Any:
    from streaming.models import BehaviourTask

    return (await BehaviourTask.objects.aget(pk=pk)).fields.get(field)


def _named(name: str) -> bool:
    return any(task.get_name() == name and not task.done() for task in asyncio.all_tasks())


# -- a run's lines ------------------------------------------------------------------------


async def test_run_when_it_fails_then_retried_then_log_names_each_attempt_and_how_it_ended(
    coordinator, logs
) -> None:
    from streaming.models import BehaviourTask

    task, subscriber = await _started(coordinator, "conformance.behaviours:fail", message="boom")
    key = f"BehaviourTask:{task.pk}"
    async with asyncio.timeout(5):
        assert [m.event.type async for m in subscriber] == ["error"]
    await BehaviourTask.objects.filter(pk=task.pk).aupdate(
        behaviour="conformance.behaviours:steps", fields={"steps": 1}
    )
    assert await coordinator.retry_task(BehaviourTask, task.pk)
    finished = ("INFO", f"finished {key}: SUCCESSFUL")
    await eventually(
        lambda: finished in said(logs, "streaming.coordinator"), what="the retry to finish"
    )
    assert said(logs, "streaming.coordinator") == [
        ("INFO", f"started {key} (attempt 1)"),
        ("ERROR", f"{key} failed (attempt 1)"),
        ("INFO", f"finished {key}: FAILED"),
        ("INFO", f"started {key} (attempt 2)"),
        finished,
    ]
    failure = next(r for r in logs.records if r.levelname == "ERROR")
    assert failure.exc_info is not None and str(failure.exc_info[1]) == "boom"


async def test_run_when_its_row_was_taken_then_log_says_lease_lost_and_outcome_not_recorded(
    coordinator, logs
) -> None:
    from streaming.models import BehaviourTask
    from streaming.states import TaskStatus

    task, _ = await _started(coordinator, f"{__name__}:told_cancel")
    key = f"BehaviourTask:{task.pk}"
    await BehaviourTask.objects.filter(pk=task.pk).aupdate(status=TaskStatus.INTERRUPTED, owner="")
    await coordinator.keeper.renew()
    why = "its row names another owner or another status"
    assert await eventually(lambda: _stored(task.pk, "cancelled_with")) == [f"lease lost: {why}"]
    refused = ("WARNING", f"{key}: outcome INTERRUPTED not recorded; the task is INTERRUPTED")
    await eventually(
        lambda: refused in said(logs, "streaming.coordinator"), what="the refused record"
    )
    assert ("WARNING", f"{key} lost its lease ({why}); stopping it") in said(
        logs, "streaming.coordinator"
    )


async def test_cancel_when_task_ignores_it_then_log_says_for_how_long_and_cancel_says_why(
    coordinator, logs
) -> None:
    from streaming.models import BehaviourTask

    task, subscriber = await _started(coordinator, "conformance.behaviours:swallow_once")
    key = f"BehaviourTask:{task.pk}"
    assert await coordinator.cancel_task(BehaviourTask, task.pk, "enough")
    async with asyncio.timeout(5):
        ending = [m.event async for m in subscriber][-1]
    assert (ending.type, dict(ending.data)) == (
        "cancelled",
        {"message": "Task was cancelled", "reason": "enough", "forced": True},
    )
    stored = await BehaviourTask.objects.aget(pk=task.pk)
    assert stored.error == "cancelled: enough (did not stop within 0.3s)"
    given_up = ("ERROR", f"{key} ignored cancellation for 0.3s; recording it as cancelled")
    await eventually(
        lambda: given_up in said(logs, "streaming.coordinator"), what="the give-up's line"
    )
    await eventually(
        lambda: ("INFO", f"finished {key}: CANCELLED") in said(logs, "streaming.coordinator"),
        what="the cancel recorded",
    )

    other, _ = await _started(coordinator, f"{__name__}:told_cancel")
    assert await coordinator.cancel_task(BehaviourTask, other.pk, "by the operator")
    cancelled_with = await eventually(lambda: _stored(other.pk, "cancelled_with"))
    assert cancelled_with == ["cancel_task: by the operator"]


# -- the keeper's lines -------------------------------------------------------------------


async def test_keeper_when_it_records_lost_runs_and_reruns_one_then_log_names_each(logs) -> None:
    from datetime import UTC, datetime, timedelta

    from streaming.coordinator import Coordinator
    from streaming.models import BehaviourTask
    from streaming.states import TaskStatus

    lost = {
        "status": TaskStatus.RUNNING,
        "attempt": 1,
        "owner": "elsewhere:1:dead",
        "lease_expires_at": datetime.now(UTC) - timedelta(seconds=1),
        "event_id_ceiling": 1000,
    }
    interrupted = await BehaviourTask.objects.acreate(
        behaviour="conformance.behaviours:steps", fields={"steps": 1}, **lost
    )
    cancelled = await BehaviourTask.objects.acreate(
        behaviour="conformance.behaviours:steps", cancel_requested="stop", **lost
    )
    coordinator = Coordinator(lease=3.0, max_attempts=2)  # not opened: the test drives it
    try:
        await coordinator.keeper.recover_lost()
        assert sorted(said(logs, "streaming.leases")) == sorted(
            [
                (
                    "WARNING",
                    f"BehaviourTask:{interrupted.pk}: run 1 interrupted: lost with its process "
                    "(elsewhere:1:dead): its lease expired",
                ),
                (
                    "WARNING",
                    f"BehaviourTask:{cancelled.pk}: run 1 cancelled: stop (its process, "
                    "elsewhere:1:dead, was lost before it stopped)",
                ),
            ]
        )
        await coordinator.keeper.rerun()
        assert said(logs, "streaming.leases")[-1] == (
            "INFO",
            f"BehaviourTask:{interrupted.pk}: interrupted, run again",
        )
        assert ("INFO", f"started BehaviourTask:{interrupted.pk} (attempt 2)") in said(
            logs, "streaming.coordinator"
        )
    finally:
        await coordinator.shutdown(1.0)


# -- shutting down ------------------------------------------------------------------------


async def test_shutdown_when_a_task_ignores_it_then_log_counts_it_and_the_clients_told(
    logs,
) -> None:
    from streaming.coordinator import Coordinator

    coordinator = Coordinator(cancel_grace=0.2)
    task, subscriber = await _started(coordinator, "conformance.behaviours:swallow_once")
    run = coordinator.run_of(f"BehaviourTask:{task.pk}")
    await coordinator.shutdown(0)
    try:
        assert said(logs, "streaming.coordinator")[-2:] == [
            ("ERROR", "shutdown: 1 task(s) ignored cancellation"),
            ("INFO", "shutdown: 1 client(s) told"),
        ]
        assert [m.event.type async for m in subscriber] == ["shutdown"]
    finally:
        run.supervisor.cancel()  # the second cancel, which swallow_once lets through
        await asyncio.gather(run.supervisor, return_exceptions=True)


async def test_shutdown_and_abandon_when_tasks_run_then_each_cancellation_says_which(
    logs,
) -> None:
    from streaming.coordinator import Coordinator

    coordinator = Coordinator(cancel_grace=1.0)
    first, _ = await _started(coordinator, f"{__name__}:told_cancel")
    await coordinator.shutdown(0)
    assert await eventually(lambda: _stored(first.pk, "cancelled_with")) == ["coordinator shutdown"]
    # Its clients were told to reconnect; the log still says how the run ended.
    assert ("INFO", f"finished BehaviourTask:{first.pk}: INTERRUPTED") in said(
        logs, "streaming.coordinator"
    )

    coordinator = Coordinator(cancel_grace=1.0)
    try:
        task, _ = await _started(coordinator, f"{__name__}:told_cancel")
        # A second signal during a drain: the server abandons what still runs.
        draining = asyncio.create_task(coordinator.shutdown(10.0))
        await eventually(lambda: not coordinator.accepting, what="the drain to begin")
        coordinator.abandon()
        assert await eventually(lambda: _stored(task.pk, "cancelled_with")) == [
            "coordinator abandoned"
        ]
        await asyncio.wait_for(draining, 5)
    finally:
        await coordinator.shutdown(1.0)


# -- asyncio tasks ------------------------------------------------------------------------


async def test_coordinator_when_open_and_running_then_its_tasks_are_named_for_what_they_do(
    coordinator,
) -> None:
    task, _ = await _started(coordinator, "conformance.behaviours:park")
    for name in (f"streaming:BehaviourTask:{task.pk}", "streaming:keeper", "streaming:event-log"):
        assert _named(name), f"no running task named {name}"


async def test_run_when_ended_then_the_tasks_recording_it_are_named_for_it(coordinator) -> None:
    from streaming.models import BehaviourTask

    # The terminal event is published by the task that records the outcome,
    # while the task that asked for the record waits on it: both are seen.
    seen: list[tuple[str, str, set[str]]] = []

    def on_publish(event: Any) -> None:
        current = asyncio.current_task()
        assert current is not None
        others = {t.get_name() for t in asyncio.all_tasks() if not t.done()}
        seen.append((event.type, current.get_name(), others))

    coordinator.on_publish = on_publish
    swallows, _ = await _started(coordinator, "conformance.behaviours:swallow_once")
    assert await coordinator.cancel_task(BehaviourTask, swallows.pk, "enough")
    await eventually(lambda: seen and seen[-1][0] == "cancelled", what="the give-up recorded")
    key = f"BehaviourTask:{swallows.pk}"
    assert seen[-1][1] == f"streaming:record:{key}"
    assert f"streaming:give-up:{key}" in seen[-1][2]

    task = await BehaviourTask.objects.acreate(behaviour="conformance.behaviours:park")
    assert await coordinator.start_task(BehaviourTask, task.pk)
    run = coordinator.run_of(f"BehaviourTask:{task.pk}")
    run.supervisor.cancel()  # its body never runs: the done-callback records the run
    await eventually(lambda: seen[-1][0] == "interrupted", what="the stopped run recorded")
    assert seen[-1][1] == f"streaming:record:{run.key}"
    assert f"streaming:stopped:{run.key}" in seen[-1][2]


async def test_run_when_it_reserves_more_event_ids_then_the_reserving_task_is_named_for_it(
    coordinator,
) -> None:
    from streaming.coordinator import ID_BLOCK
    from streaming.models import BehaviourTask

    names_at: dict[int, set[str]] = {}

    def on_publish(event: Any) -> None:
        names_at[event.id] = {t.get_name() for t in asyncio.all_tasks() if not t.done()}

    coordinator.on_publish = on_publish
    task = await BehaviourTask.objects.acreate(
        behaviour="conformance.behaviours:burst", fields={"count": ID_BLOCK // 2 + 1}
    )
    subscriber = await coordinator.subscribe(BehaviourTask, task.pk)
    assert await coordinator.start_task(BehaviourTask, task.pk)
    async with asyncio.timeout(10):
        assert [m.event.type async for m in subscriber][-1] == "complete"
    # The send of the first id past half the block asks for the next block.
    first = ID_BLOCK // 2 + 1
    assert f"streaming:reserve:BehaviourTask:{task.pk}" in names_at[first]
    assert not any(name.startswith("streaming:reserve:") for name in names_at[first - 1])


async def reserve_then_park(ctx: Any) -> None:
    """Send half a block of events, wait for ``go``, send one more (a reservation), park."""
    from conformance.behaviours import wait_for_field
    from streaming.coordinator import ID_BLOCK

    for index in range(ID_BLOCK // 2):
        await ctx.send_event("tick", {"index": index})
    await wait_for_field(ctx, lambda fields: bool(fields.get("go")))
    await ctx.send_event("tick", {"index": ID_BLOCK // 2})
    await told_cancel(ctx)


async def test_run_when_its_task_is_taken_while_it_reserves_ids_then_stopped_as_lost(
    coordinator, logs
) -> None:
    from streaming.models import BehaviourTask

    task = await BehaviourTask.objects.acreate(behaviour=f"{__name__}:reserve_then_park")
    assert await coordinator.start_task(BehaviourTask, task.pk)
    key = f"BehaviourTask:{task.pk}"
    run = coordinator.run_of(key)
    await eventually(lambda: run.next_id > 500, what="half a block sent")
    # Another coordinator took the task (its keeper found the lease expired).
    await BehaviourTask.objects.filter(pk=task.pk).aupdate(attempt=2, owner="elsewhere")
    await sync_to_async(BehaviourTask.merge_fields, thread_sensitive=True)(task.pk, {"go": True})
    why = "its task was taken over while it reserved event ids"
    assert await eventually(lambda: _stored(task.pk, "cancelled_with")) == [f"lease lost: {why}"]
    assert ("WARNING", f"{key} lost its lease ({why}); stopping it") in said(
        logs, "streaming.coordinator"
    )
