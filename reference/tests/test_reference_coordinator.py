"""The coordinator's interface at its edges: what a caller is told, and what it is built from.

The suites drive the coordinator through the conformance adapter and judge
outcomes; these tests pin what the adapter, the server and the commands rely
on and repeat to people: the wording of each refusal, who a coordinator says
it is, how it counts, and that its settings reach the parts they configure.
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
from typing import Any

import pytest

from conformance.waiting import eventually

pytestmark = [
    pytest.mark.timeout(30),
    pytest.mark.asyncio,
    pytest.mark.django_db(transaction=True),
]


async def test_coordinator_when_made_then_it_names_its_host_process_and_itself(
    coordinator,
) -> None:
    from streaming.coordinator import Coordinator

    host, pid, mine = coordinator.owner.split(":")
    assert (host, pid) == (socket.gethostname(), str(os.getpid()))
    assert re.fullmatch(r"[0-9a-f]{8}", mine)
    assert Coordinator().owner != coordinator.owner  # two in one process are two owners
    assert repr(coordinator) == f"<Coordinator new runs=0 owner={coordinator.owner}>"


async def test_coordinator_when_configured_then_its_hub_and_event_log_take_the_settings() -> None:
    from streaming.bus import InMemoryBus
    from streaming.coordinator import Coordinator

    coordinator = Coordinator(
        client_queue_size=3,
        history_size=4,
        history_bytes=5000,
        closed_history_bytes=6000,
        event_log_max_event_bytes=700,
        event_log=False,
    )
    hub = coordinator.bus.hub
    assert isinstance(coordinator.bus, InMemoryBus)
    assert (hub.queue_size, hub.history_size, hub.history_bytes) == (3, 4, 5000)
    assert hub._closed_max_bytes == 6000
    log = coordinator.log
    assert (log.keep, log.max_event_bytes, log.enabled) == (4, 700, False)


async def test_settings_when_a_key_is_misspelt_then_the_error_names_it_and_the_likely_one(
    settings: Any,
) -> None:
    from django.core.exceptions import ImproperlyConfigured

    from streaming.config import Config

    settings.STREAMING = {**settings.STREAMING, "TASK_TIMOUT": 5}
    with pytest.raises(ImproperlyConfigured) as caught:
        Config.from_settings()
    assert str(caught.value) == (
        "Unknown key 'TASK_TIMOUT' in settings.STREAMING; did you mean 'TASK_TIMEOUT'?"
    )
    settings.STREAMING = {"NOTHING_LIKE_IT": 1}
    with pytest.raises(ImproperlyConfigured, match=r"^Unknown key 'NOTHING_LIKE_IT' in [^;]*\.$"):
        Config.from_settings()
    settings.STREAMING = {"task_timeout": 5}  # the case of a key does not matter
    assert Config.from_settings().task_timeout == 5
    with pytest.raises(TypeError, match=r"^Unknown streaming setting 'lease_s'; did you mean"):
        Config.from_settings(lease_s=3)


async def test_hub_when_made_without_settings_then_it_has_the_default_configurations_bounds() -> (
    None
):
    from streaming.config import Config
    from streaming.hub import Hub

    hub, config = Hub(), Config()
    assert (hub.queue_size, hub.history_size, hub.history_bytes, hub._closed_max_bytes) == (
        config.client_queue_size,
        config.history_size,
        config.history_bytes,
        config.closed_history_bytes,
    )


async def test_start_when_model_or_task_unknown_then_error_names_what_is_known(
    coordinator,
) -> None:
    from streaming.coordinator import UnknownTask, task_models
    from streaming.models import BehaviourTask

    known = sorted(task_models())
    assert "BehaviourTask" in known and "ExampleTask" in known
    with pytest.raises(UnknownTask) as unknown_model:
        await coordinator.start_task("Nope", 1)
    assert str(unknown_model.value) == "Unknown task model 'Nope'."
    assert unknown_model.value.known == tuple(known)
    with pytest.raises(UnknownTask) as unknown_task:
        await coordinator.start_task("BehaviourTask", 999)
    assert str(unknown_task.value) == "BehaviourTask 999 does not exist."
    with pytest.raises(UnknownTask) as unknown_subscription:
        await coordinator.subscribe(BehaviourTask, 999)
    assert str(unknown_subscription.value) == "BehaviourTask 999 does not exist."
    # A cancel says so too, rather than False, which is for a task in no state to cancel.
    with pytest.raises(UnknownTask, match=r"^Unknown task model 'Nope'\.$"):
        await coordinator.cancel_task("Nope", 1)
    with pytest.raises(UnknownTask, match=r"^BehaviourTask 999 does not exist\.$"):
        await coordinator.cancel_task(BehaviourTask, 999)
    with pytest.raises(UnknownTask, match=r"^BehaviourTask 999 does not exist\.$"):
        await coordinator.status_of(BehaviourTask, 999)


async def test_start_when_running_or_finished_then_false_and_when_draining_then_refused(
    coordinator,
) -> None:
    from streaming.coordinator import CoordinatorClosed
    from streaming.models import BehaviourTask

    task = await BehaviourTask.objects.acreate(behaviour="conformance.behaviours:park")
    assert await coordinator.start_task("BehaviourTask", task.pk)
    assert repr(coordinator.run_of(f"BehaviourTask:{task.pk}")) == (
        f"<Run BehaviourTask:{task.pk} attempt=1 next_id=1>"
    )
    assert not await coordinator.start_task(BehaviourTask, task.pk)  # running here
    assert not await coordinator.retry_task(BehaviourTask, task.pk)  # not ended
    assert coordinator.stats() == {"running_tasks": 1, "topics": 1, "subscribers": 0}
    assert repr(coordinator).startswith("<Coordinator open runs=1 ")
    await coordinator.shutdown(0)
    with pytest.raises(CoordinatorClosed) as refused:
        await coordinator.start_task(BehaviourTask, task.pk)
    assert str(refused.value) == f"Cannot start BehaviourTask:{task.pk}: the coordinator is closed."
    assert coordinator.stats() == {"running_tasks": 0, "topics": 0, "subscribers": 0}
    assert await coordinator.health() == "draining"


async def test_subscribe_when_resuming_at_or_past_the_ending_then_nothing_missed_says_where(
    coordinator,
) -> None:
    from streaming.coordinator import NothingMissed
    from streaming.models import BehaviourTask

    task = await BehaviourTask.objects.acreate(
        behaviour="conformance.behaviours:steps", fields={"steps": 1}
    )
    watching = await coordinator.subscribe(BehaviourTask, task.pk)
    assert await coordinator.start_task(BehaviourTask, task.pk)
    async with asyncio.timeout(5):
        ids = [m.event.id async for m in watching]
    assert ids == [1, 2, 3]
    fresh = type(coordinator)()  # knows the task only from the database
    for after in (3, 4):
        with pytest.raises(NothingMissed) as missed:
            await fresh.subscribe(BehaviourTask, task.pk, last_event_id=after)
        assert str(missed.value) == f"BehaviourTask:{task.pk} ended with event 3."
    resumed = await fresh.subscribe(BehaviourTask, task.pk, last_event_id=2)
    async with asyncio.timeout(5):
        assert [(m.event.id, m.event.type) async for m in resumed] == [(3, "complete")]


async def test_run_when_it_sends_after_being_given_up_on_then_each_send_is_a_cancellation(
    coordinator,
) -> None:
    from streaming.models import BehaviourTask

    task = await BehaviourTask.objects.acreate(behaviour="conformance.behaviours:park")
    assert await coordinator.start_task(BehaviourTask, task.pk)
    run = coordinator.run_of(f"BehaviourTask:{task.pk}")
    run.finished = True  # what a give-up marks before it records
    with pytest.raises(asyncio.CancelledError, match=f"^BehaviourTask:{task.pk} was stopped$"):
        await run.send("tick", {})
    run.finished = False


async def raises_its_own_cancelled_error(ctx: Any) -> None:
    """Send ``start``, then raise a CancelledError nobody asked for (a library's, say)."""
    await ctx.send_event("start", {})
    raise asyncio.CancelledError("not from a cancel")


async def swallows_the_cancel_and_returns(ctx: Any) -> dict[str, bool]:
    """Send ``start``, park; when cancelled, carry on and return as if it had finished."""
    from conformance.behaviours import park_forever

    await ctx.send_event("start", {})
    try:
        await park_forever()
    except asyncio.CancelledError:
        pass
    return {"finished": True}


async def _ending(coordinator: Any, behaviour: str, cancel: str | None = None) -> tuple[Any, Any]:
    """Run a BehaviourTask to its end (cancelled with ``cancel`` after ``start``): event, row."""
    from streaming.models import BehaviourTask

    task = await BehaviourTask.objects.acreate(behaviour=behaviour)
    subscriber = await coordinator.subscribe(BehaviourTask, task.pk)
    assert await coordinator.start_task(BehaviourTask, task.pk)
    async with asyncio.timeout(5):
        assert (await subscriber.get()).event.type == "start"
        if cancel is not None:
            assert await coordinator.cancel_task("BehaviourTask", task.pk, cancel)
        ending = [m.event async for m in subscriber][-1]
    return ending, await BehaviourTask.objects.aget(pk=task.pk)


async def test_run_when_its_own_code_raises_cancelled_error_then_it_failed(coordinator) -> None:
    ending, row = await _ending(coordinator, f"{__name__}:raises_its_own_cancelled_error")
    assert (ending.type, dict(ending.data)) == (
        "error",
        {"error_type": "CancelledError", "message": "not from a cancel"},
    )
    assert (row.status, row.error) == ("FAILED", "CancelledError: not from a cancel")


async def test_run_when_it_swallows_the_cancel_and_returns_then_it_ends_cancelled(
    coordinator,
) -> None:
    ending, row = await _ending(
        coordinator, f"{__name__}:swallows_the_cancel_and_returns", cancel="stop now"
    )
    assert (ending.type, ending.data["reason"]) == ("cancelled", "stop now")
    assert (row.status, row.error) == ("CANCELLED", "cancelled: stop now")


async def test_coordinator_when_started_then_its_keeper_runs_and_it_is_healthy() -> None:
    from streaming.coordinator import Coordinator

    coordinator = Coordinator()
    try:
        await coordinator.started()
        assert coordinator.keeper._task is not None and not coordinator.keeper._task.done()
        assert await coordinator.health() is None
    finally:
        await coordinator.shutdown(1.0)
    assert coordinator.keeper._task is None


async def test_shutdown_without_a_grace_then_the_configured_one_bounds_the_drain() -> None:
    from streaming.coordinator import Coordinator
    from streaming.models import BehaviourTask

    coordinator = Coordinator(shutdown_grace=0.1, cancel_grace=1.0)
    task = await BehaviourTask.objects.acreate(behaviour="conformance.behaviours:park")
    assert await coordinator.start_task(BehaviourTask, task.pk)
    await asyncio.wait_for(coordinator.shutdown(), 5)
    assert (await BehaviourTask.objects.aget(pk=task.pk)).status == "INTERRUPTED"


#: Opened by the test that runs :func:`waits_for_the_gate`.
GATE = asyncio.Event()


async def waits_for_the_gate(ctx: Any) -> dict[str, bool]:
    """Send ``start``, then return once the test opens :data:`GATE`."""
    await ctx.send_event("start", {})
    await GATE.wait()
    return {"done": True}


async def test_shutdown_when_its_grace_ends_while_an_ending_is_written_then_clients_get_it(
    hold_orm_thread: Any,
) -> None:
    from streaming.coordinator import Coordinator
    from streaming.models import BehaviourTask
    from streaming.states import TaskStatus

    # Found by CI (RACE-11 on PostgreSQL): the run returned, its ending's write
    # was slow, and the grace ran out meanwhile. Cancelling the write's task
    # with the runs let the UPDATE commit SUCCESSFUL on the ORM's thread while
    # its clients got the farewell for a run "interrupted": SPEC's RACE-20 has
    # a task SUCCESSFUL exactly when its clients received ``complete``.
    GATE.clear()
    coordinator = Coordinator(cancel_grace=5.0)
    coordinator.open()
    task = await BehaviourTask.objects.acreate(behaviour=f"{__name__}:waits_for_the_gate")
    subscriber = await coordinator.subscribe(BehaviourTask, task.pk)
    assert await coordinator.start_task(BehaviourTask, task.pk)
    assert (await asyncio.wait_for(subscriber.get(), 5)).event.type == "start"
    key = f"BehaviourTask:{task.pk}"
    async with hold_orm_thread():
        GATE.set()  # the run returns; its ending waits for the ORM's thread
        await eventually(
            lambda: any(t.get_name() == f"streaming:record:{key}" for t in coordinator._tasks),
            what="the ending's write to be under way",
        )
        closing = asyncio.create_task(coordinator.shutdown(0.01))
        await eventually(lambda: key in coordinator._stopped, what="the grace to run out")
    await asyncio.wait_for(closing, 10)
    row = await BehaviourTask.objects.aget(pk=task.pk)
    told = [m.event.type async for m in subscriber]
    # The run returned before the shutdown began: it succeeded, and says so.
    assert (row.status, told[-1]) == (TaskStatus.SUCCESSFUL, "complete"), (
        f"the task is {row.status}; its client was told {told}"
    )


async def test_run_when_it_ends_then_its_row_names_no_owner_and_holds_no_lease(coordinator) -> None:
    _, row = await _ending(coordinator, "conformance.behaviours:steps")
    assert (row.status, row.owner, row.lease_expires_at) == ("SUCCESSFUL", "", None)
    assert row.completed_at is not None and row.completed_at >= row.started_at


async def test_resume_of_a_finished_task_without_event_log_then_missed_events_from_memory() -> None:
    from streaming.coordinator import Coordinator
    from streaming.models import BehaviourTask

    coordinator = Coordinator(event_log=False, cancel_grace=1.0)
    try:
        task = await BehaviourTask.objects.acreate(
            behaviour="conformance.behaviours:steps", fields={"steps": 2}
        )
        watching = await coordinator.subscribe(BehaviourTask, task.pk)
        assert await coordinator.start_task(BehaviourTask, task.pk)
        async with asyncio.timeout(5):
            assert [m.event.id async for m in watching] == [1, 2, 3, 4]
        await eventually(lambda: not coordinator.stats()["running_tasks"], what="the run released")
        # No database log: only the hub's memory of the finished task can serve this.
        resumed = await coordinator.subscribe(BehaviourTask, task.pk, last_event_id=1)
        async with asyncio.timeout(5):
            assert [m.event.id async for m in resumed] == [2, 3, 4]
    finally:
        await coordinator.shutdown(1.0)


async def test_farewell_when_shutdown_interrupts_the_run_then_it_says_so(coordinator) -> None:
    from streaming.models import BehaviourTask

    running = await BehaviourTask.objects.acreate(behaviour="conformance.behaviours:park")
    waiting = await BehaviourTask.objects.acreate(behaviour="conformance.behaviours:park")
    told_running = await coordinator.subscribe(BehaviourTask, running.pk)
    told_waiting = await coordinator.subscribe(BehaviourTask, waiting.pk)
    assert await coordinator.start_task(BehaviourTask, running.pk)
    async with asyncio.timeout(5):
        assert (await told_running.get()).event.type == "start"
        await coordinator.shutdown(0)
        interrupted = [m.event async for m in told_running][-1]
        untouched = [m.event async for m in told_waiting][-1]

    # A farewell must not promise a resume to a client whose task this shutdown just stopped.
    assert interrupted.type == "shutdown"
    assert interrupted.data["message"] == (
        "Server is shutting down and interrupted this task's run; reconnect to follow it: "
        "it runs again if it has attempts left"
    )
    assert (untouched.type, untouched.data["message"]) == (
        "shutdown",
        "Server is shutting down; reconnect to resume",
    )
    assert (await BehaviourTask.objects.aget(pk=running.pk)).status == "INTERRUPTED"
