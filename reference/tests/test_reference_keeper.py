"""The lease keeper and the cross-coordinator paths, white-box: two coordinators, one database.

What another process would do is done here by a second coordinator in this
process, or written straight into the task's row: a run another coordinator
ended, a lease that expired, a cancel asked for by another worker. Races
between processes are not raced: the other process's write is made to land
at the exact point in question (just before this coordinator's UPDATE), so
each case is a state, not a timing guess.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import pytest_asyncio
from asgiref.sync import sync_to_async

from conformance.waiting import eventually

# The coordinator reaches the database from the ORM's own thread, so each test
# gets a real transaction (and a flushed database after it), not a wrapped one.
pytestmark = [
    pytest.mark.timeout(30),
    pytest.mark.asyncio,
    pytest.mark.django_db(transaction=True),
]

PARK = "conformance.behaviours:park"
STEPS = "conformance.behaviours:steps"


async def _quiet(**overrides: Any) -> Any:
    """An open coordinator whose keeper only ticks when the test says so."""
    from streaming.coordinator import Coordinator

    made = Coordinator(cancel_grace=1.0, **overrides)
    made.open()
    await made.keeper.stop()  # cancelled before its first tick
    return made


@pytest_asyncio.fixture
async def here() -> AsyncIterator[Any]:
    made = await _quiet()
    try:
        yield made
    finally:
        await made.shutdown(1.0)


@pytest_asyncio.fixture
async def there() -> AsyncIterator[Any]:
    made = await _quiet()
    try:
        yield made
    finally:
        await made.shutdown(1.0)


async def _until_ended(subscriber: Any) -> list[Any]:
    messages = []
    async with asyncio.timeout(5):
        async for message in subscriber:
            messages.append(message)
    return messages


async def _next(subscriber: Any) -> Any:
    return await asyncio.wait_for(subscriber.get(), 5)


async def _watched_run(model: Any, coordinator: Any) -> tuple[Any, Any]:
    """A parked task started on ``coordinator``, and a client there that has seen its start."""
    task = await model.objects.acreate(behaviour=PARK)
    client = await coordinator.subscribe(model, task.pk)
    assert await coordinator.start_task(model, task.pk)
    assert (await _next(client)).event.type == "start"
    return task, client


def _running_elsewhere(**fields: Any) -> dict[str, Any]:
    """A row as another live coordinator's claim leaves it."""
    from streaming.states import TaskStatus

    return {
        "behaviour": PARK,
        "status": TaskStatus.RUNNING,
        "attempt": 1,
        "owner": "elsewhere:1:alive",
        "lease_expires_at": datetime.now(UTC) + timedelta(seconds=60),
        "event_id_ceiling": 1000,
        **fields,
    }


@contextlib.asynccontextmanager
async def _lands_before_update(
    setting: str, write: Callable[[], None]
) -> AsyncIterator[list[bool]]:
    """Run ``write`` (another process's write) just before our next UPDATE to status ``setting``.

    Installed on the connection of the ORM's thread, where the coordinator's
    queries run; yields a list that holds True once the write has landed.
    """
    from django.db import connections

    landed: list[bool] = []

    def wrapper(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        if not landed and sql.startswith("UPDATE") and params and params[0] == setting:
            landed.append(True)
            write()
        return execute(sql, params, many, context)

    def install() -> None:
        connections["default"].execute_wrappers.append(wrapper)

    def remove() -> None:
        connections["default"].execute_wrappers.remove(wrapper)

    await sync_to_async(install, thread_sensitive=True)()
    try:
        yield landed
    finally:
        await sync_to_async(remove, thread_sensitive=True)()


# -- 4. clients here of a run elsewhere ------------------------------------------------------


async def test_client_of_a_run_elsewhere_when_it_ended_there_then_keeper_gives_it_the_ending(
    here, there
) -> None:
    from streaming.models import BehaviourTask

    task = await BehaviourTask.objects.acreate(behaviour=STEPS, fields={"steps": 1})
    client = await here.subscribe(BehaviourTask, task.pk)
    own = await there.subscribe(BehaviourTask, task.pk)
    assert await there.start_task(BehaviourTask, task.pk)
    ending = (await _until_ended(own))[-1]
    assert ending.event.type == "complete"
    assert not client.ended  # this coordinator's hub never heard of that run
    still_running = await BehaviourTask.objects.acreate(**_running_elsewhere())
    waiting = await here.subscribe(BehaviourTask, still_running.pk)
    await here.keeper.tell_watchers()  # one of the two runs elsewhere has ended
    assert not waiting.ended and waiting.take() == []
    told = await _next(client)
    assert (told.event.type, told.event.id, told.final) == ("complete", ending.event.id, True)
    assert told.event.data["total_steps"] == 1 and client.ended


# -- 2. runs lost with their process ---------------------------------------------------------


async def test_expired_lease_when_keeper_recovers_it_then_client_stream_ends_on_a_dated_ending(
    here,
) -> None:
    from streaming.events import Event
    from streaming.models import BehaviourTask

    dead = await BehaviourTask.objects.acreate(
        **_running_elsewhere(
            owner="elsewhere:1:dead", lease_expires_at=datetime.now(UTC) - timedelta(seconds=1)
        )
    )
    client = await here.subscribe(BehaviourTask, dead.pk)
    before = datetime.now(UTC)
    await here.keeper.recover_lost()
    messages = await _until_ended(client)
    assert [(m.event.type, m.event.id, m.final) for m in messages] == [
        ("waiting", 0, False),  # its lease had lapsed: the run looked lost from the start
        ("interrupted", 1001, True),
    ]
    messages = messages[1:]
    stamped = datetime.fromisoformat(messages[0].event.timestamp)
    assert before <= stamped <= datetime.now(UTC)
    row = await BehaviourTask.objects.aget(pk=dead.pk)
    assert Event.from_json(row.final_event) == messages[0].event
    assert row.completed_at is not None and before <= row.completed_at <= datetime.now(UTC)


async def test_lost_run_when_a_cancel_lands_after_the_keeper_read_it_then_cancelled(
    here,
) -> None:
    # Found by the soak (issue 27): a worker killed, a cancel to the other
    # worker answered true (the request left in the row) just after a keeper
    # had read the lost run's row, and that keeper recorded INTERRUPTED from
    # what it had read, then ran it again. True means CANCELLED.
    from streaming.models import BehaviourTask
    from streaming.states import TaskStatus

    dead = await BehaviourTask.objects.acreate(
        **_running_elsewhere(
            owner="elsewhere:1:dead", lease_expires_at=datetime.now(UTC) - timedelta(seconds=1)
        )
    )
    read = {"pk": dead.pk, "attempt": 1, "owner": dead.owner, "event_id_ceiling": 1000}
    await BehaviourTask.objects.filter(pk=dead.pk).aupdate(cancel_requested="raced the keeper")
    await here.keeper._interrupt(BehaviourTask, {**read, "cancel_requested": None})
    await here.keeper.recover_lost()
    row = await BehaviourTask.objects.aget(pk=dead.pk)
    assert row.status == TaskStatus.CANCELLED, row.error
    assert "raced the keeper" in row.error


# -- 3. interrupted runs with attempts left ------------------------------------------------


async def test_interrupted_task_with_attempts_left_when_keeper_ticks_then_it_runs_again_here(
    here, there
) -> None:
    from streaming.events import Event, now_iso
    from streaming.models import BehaviourTask
    from streaming.states import TaskStatus

    task = await BehaviourTask.objects.acreate(
        behaviour=PARK, status=TaskStatus.INTERRUPTED, attempt=1, max_attempts=3
    )
    # How a keeper leaves a run lost with its process (see Keeper._interrupt).
    old = Event(1001, "interrupted", {"reason": "lost"}, task.pk, "BehaviourTask", now_iso())
    await BehaviourTask.objects.filter(pk=task.pk).aupdate(
        event_id_ceiling=old.id, final_event=old.to_json()
    )
    spent = await BehaviourTask.objects.acreate(
        behaviour=PARK, status=TaskStatus.INTERRUPTED, attempt=3, max_attempts=3
    )
    await here.keeper.rerun()
    row = await BehaviourTask.objects.aget(pk=task.pk)
    assert (row.status, row.attempt, row.owner) == (TaskStatus.RUNNING, 2, here.owner)
    # A client on another worker must wait for this run, not be handed the old ending.
    assert row.final_event is None and row.cancel_requested is None
    watcher = await there.subscribe(BehaviourTask, task.pk)
    assert not watcher.ended
    assert (await BehaviourTask.objects.aget(pk=spent.pk)).status == TaskStatus.INTERRUPTED
    client = await here.subscribe(BehaviourTask, task.pk)
    assert (await _next(client)).event.type == "start"
    assert await here.cancel_task(BehaviourTask, task.pk, "done here")
    assert [m.event.type for m in await _until_ended(client)] == ["cancelled"]
    watcher.close()


# -- cancelling a run another coordinator owns --------------------------------------------


async def test_cancel_of_a_run_elsewhere_when_its_owner_renews_then_it_ends_cancelled_so(
    here, there
) -> None:
    from streaming.models import BehaviourTask
    from streaming.states import TaskStatus

    task, client = await _watched_run(BehaviourTask, there)
    assert await here.cancel_task(BehaviourTask, task.pk, "asked from here")
    assert not await here.cancel_task(BehaviourTask, task.pk, "asked twice")
    row = await BehaviourTask.objects.aget(pk=task.pk)
    assert (row.status, row.owner, row.cancel_requested) == (
        TaskStatus.RUNNING,
        there.owner,
        "asked from here",
    )
    await there.keeper.renew()  # the owner finds the request in its row
    ending = (await _until_ended(client))[-1]
    assert (ending.event.type, ending.event.data["reason"]) == ("cancelled", "asked from here")
    assert (await BehaviourTask.objects.aget(pk=task.pk)).status == TaskStatus.CANCELLED


class _LinkedBus:
    """In-memory buses that reach one another's coordinators, as Redis links workers."""

    def __init__(self) -> None:
        self.handlers: dict[str, Callable[[str, str], None]] = {}

    def bus(self) -> Any:
        from streaming.bus import InMemoryBus

        handlers = self.handlers

        class Linked(InMemoryBus):
            def start(self, owner: str, on_cancel: Callable[[str, str], None]) -> None:
                handlers[owner] = on_cancel

            async def request_cancel(self, owner: str, key: str, reason: str) -> None:
                handlers[owner](key, reason)

        return Linked()


async def test_cancel_of_a_run_elsewhere_when_the_bus_tells_its_owner_then_cancelled_at_once() -> (
    None
):
    from streaming.models import BehaviourTask

    linked = _LinkedBus()
    made = [await _quiet(bus=linked.bus()) for _ in range(2)]
    asker, owner = made
    try:
        task, client = await _watched_run(BehaviourTask, owner)
        assert await asker.cancel_task(BehaviourTask, task.pk, "over the bus")
        ending = (await _until_ended(client))[-1]  # no keeper tick: the bus told the owner
        assert (ending.event.type, ending.event.data["reason"]) == ("cancelled", "over the bus")
    finally:
        for coordinator in made:
            await coordinator.shutdown(1.0)


async def test_run_here_when_its_owner_finds_a_cancel_in_its_row_then_it_ends_cancelled_so(
    here,
) -> None:
    from streaming.models import BehaviourTask
    from streaming.states import TaskStatus

    task, client = await _watched_run(BehaviourTask, here)
    # What another worker's cancel_task leaves in the row of a run it does not own.
    await BehaviourTask.objects.filter(pk=task.pk).aupdate(cancel_requested="from the row")
    await here.keeper.renew()
    ending = (await _until_ended(client))[-1]
    assert (ending.event.type, ending.event.data["reason"]) == ("cancelled", "from the row")
    row = await BehaviourTask.objects.aget(pk=task.pk)
    assert (row.status, row.error) == (TaskStatus.CANCELLED, "cancelled: from the row")


async def test_run_here_when_another_coordinator_recorded_it_cancelled_then_clients_get_that(
    here,
) -> None:
    from streaming.events import Event, now_iso
    from streaming.models import BehaviourTask
    from streaming.states import TaskStatus

    task, client = await _watched_run(BehaviourTask, here)
    # Another keeper found the lease expired and a cancel asked for: it recorded CANCELLED.
    theirs = Event(1001, "cancelled", {"reason": "theirs"}, task.pk, "BehaviourTask", now_iso())
    await BehaviourTask.objects.filter(pk=task.pk).aupdate(
        status=TaskStatus.CANCELLED, owner="", final_event=theirs.to_json()
    )
    await here.keeper.renew()
    ending = (await _until_ended(client))[-1]
    assert (ending.event, ending.final) == (theirs, True)


# -- races across processes, made states --------------------------------------------------


async def test_start_when_a_cancel_lands_between_its_read_and_its_claim_then_false_and_cancelled(
    here,
) -> None:
    from streaming.models import BehaviourTask
    from streaming.states import TaskStatus

    task = await BehaviourTask.objects.acreate(behaviour=PARK)

    def cancelled_elsewhere() -> None:
        BehaviourTask.objects.filter(pk=task.pk).update(
            status=TaskStatus.CANCELLED, error="cancelled: elsewhere"
        )

    async with _lands_before_update(TaskStatus.RUNNING, cancelled_elsewhere) as landed:
        assert not await here.start_task(BehaviourTask, task.pk)
    assert landed
    row = await BehaviourTask.objects.aget(pk=task.pk)
    assert (row.status, row.attempt, row.owner) == (TaskStatus.CANCELLED, 0, "")
    assert here.stats()["running_tasks"] == 0


async def test_cancel_when_a_start_elsewhere_lands_before_its_update_then_its_owner_is_asked(
    here,
) -> None:
    from streaming.models import BehaviourTask
    from streaming.states import TaskStatus

    # The cancel read READY; the start it races wins the row first. A cancel of
    # a READY or RUNNING task always wins (RACE-19, RACE-21), across processes
    # too: the run's new owner is asked to stop it.
    task = await BehaviourTask.objects.acreate(behaviour=PARK)

    def started_elsewhere() -> None:
        BehaviourTask.objects.filter(pk=task.pk).update(**_running_elsewhere(behaviour=PARK))

    async with _lands_before_update(TaskStatus.CANCELLED, started_elsewhere) as landed:
        assert await here.cancel_task(BehaviourTask, task.pk, "asked while it started")
    assert landed
    row = await BehaviourTask.objects.aget(pk=task.pk)
    assert (row.status, row.owner, row.final_event, row.cancel_requested) == (
        TaskStatus.RUNNING,
        "elsewhere:1:alive",
        None,
        "asked while it started",
    )


async def test_cancel_when_a_takeover_lands_before_its_update_then_the_new_owner_is_asked(
    here,
) -> None:
    from streaming.models import BehaviourTask
    from streaming.states import TaskStatus

    # The cancel read the run's first owner; a retry elsewhere took the row over
    # before the cancel's UPDATE, which then matches no row.
    task = await BehaviourTask.objects.acreate(**_running_elsewhere())

    def taken_over() -> None:
        BehaviourTask.objects.filter(pk=task.pk).update(owner="elsewhere:2:alive", attempt=2)

    async with _lands_before_update("asked during a takeover", taken_over) as landed:
        assert await here.cancel_task(BehaviourTask, task.pk, "asked during a takeover")
    assert landed
    row = await BehaviourTask.objects.aget(pk=task.pk)
    assert (row.status, row.owner, row.cancel_requested) == (
        TaskStatus.RUNNING,
        "elsewhere:2:alive",
        "asked during a takeover",
    )


async def test_cancel_of_our_run_when_it_was_taken_over_unnoticed_then_the_new_owner_is_asked(
    here,
) -> None:
    from streaming.models import BehaviourTask
    from streaming.states import TaskStatus

    # Our run's lease lapsed (its loop held, its database away) and another
    # worker's keeper ran it again, before our keeper noticed: the task is
    # RUNNING, so a cancel must still win (RACE-21), by asking the new owner.
    # Found in review of the soak's fix: the promise in our run's row matched
    # no row, and the cancel answered false.
    task, _ = await _watched_run(BehaviourTask, here)
    await BehaviourTask.objects.filter(pk=task.pk).aupdate(
        owner="elsewhere:2:alive", attempt=2, cancel_requested=None
    )
    assert await here.cancel_task(BehaviourTask, task.pk, "after a takeover")
    row = await BehaviourTask.objects.aget(pk=task.pk)
    assert (row.status, row.owner, row.cancel_requested) == (
        TaskStatus.RUNNING,
        "elsewhere:2:alive",
        "after a takeover",
    )


# -- the hub's side of it -------------------------------------------------------------------


def _event(number: int, type: str = "tick") -> Any:
    from streaming.events import Event

    return Event(number, type, {"n": number}, 1, "T", "2026-01-01T00:00:00+00:00")


async def test_hub_when_a_client_subscribes_then_it_has_subscribers_until_it_leaves() -> None:
    from streaming.hub import Hub

    hub = Hub()
    assert not hub.has_subscribers("T:1")
    client = hub.subscribe("T:1")
    assert hub.has_subscribers("T:1") and not hub.has_subscribers("T:2")
    client.close()
    assert not hub.has_subscribers("T:1")


async def test_hub_when_events_published_then_latest_id_is_the_last_one() -> None:
    from streaming.hub import Hub

    hub = Hub()
    hub.open("T:1")
    assert hub.latest_id("T:1") is None
    for number in (1, 2, 3):
        hub.publish("T:1", _event(number))
    assert hub.latest_id("T:1") == 3 and hub.latest_id("T:2") is None
    hub.release("T:1")


async def test_deliver_when_the_client_already_has_that_id_then_nothing_more_is_sent() -> None:
    from streaming.bus import InMemoryBus

    bus = InMemoryBus()
    client = bus.hub.subscribe("T:1")
    bus.hub.publish("T:1", _event(3))  # as a bus's reader hands over another worker's event
    bus.deliver("T:1", _event(3, "complete"))
    assert [(m.event.type, m.event.id) for m in client.take()] == [("tick", 3)]
    bus.deliver("T:1", _event(4, "complete"))
    assert [(m.event.type, m.final) for m in client.take()] == [("complete", True)]


async def test_client_resuming_a_task_that_ended_here_when_events_kept_then_it_gets_them() -> None:
    from streaming.hub import Hub

    hub = Hub()
    hub.open("T:1")
    for number in (1, 2, 3):
        hub.publish("T:1", _event(number))
    hub.publish("T:1", _event(4, "complete"), final=True)
    resumed = hub.subscribe_finished("T:1", _event(4, "complete"), after=1)
    assert [(m.event.id, m.final) for m in resumed.take()] == [(2, False), (3, False), (4, True)]


async def test_client_of_a_task_that_ended_elsewhere_when_subscribed_then_its_ending_is_final() -> (
    None
):
    from streaming.hub import Hub

    hub = Hub()
    client = hub.subscribe_finished("T:1", _event(7, "complete"))
    assert [(m.event.type, m.final) for m in client.take()] == [("complete", True)]
    assert client.ended


# -- the coordinator's own edges ------------------------------------------------------------


async def test_rerun_when_the_task_has_no_attempts_left_then_false_and_still_interrupted(
    here,
) -> None:
    from streaming.models import BehaviourTask
    from streaming.states import TaskStatus

    spent = await BehaviourTask.objects.acreate(
        behaviour=PARK, status=TaskStatus.INTERRUPTED, attempt=3, max_attempts=3
    )
    assert not await here.rerun(BehaviourTask, spent.pk)
    assert (await BehaviourTask.objects.aget(pk=spent.pk)).status == TaskStatus.INTERRUPTED


async def test_start_when_shutdown_begins_while_it_waits_for_the_task_then_false_and_ready(
    here,
) -> None:
    from streaming.coordinator import State
    from streaming.models import BehaviourTask
    from streaming.states import TaskStatus

    task = await BehaviourTask.objects.acreate(behaviour=PARK)
    key = f"BehaviourTask:{task.pk}"
    async with here._serial.hold(key):  # the start waits here, past its own state check
        starting = asyncio.create_task(here.start_task(BehaviourTask, task.pk))
        await eventually(lambda: here._serial._users.get(key) == 2, what="the start waiting")
        stopping = asyncio.create_task(here.shutdown(1.0))
        await eventually(lambda: here.state is State.DRAINING, what="the shutdown begun")
    assert await asyncio.wait_for(starting, 5) is False
    await asyncio.wait_for(stopping, 5)
    assert (await BehaviourTask.objects.aget(pk=task.pk)).status == TaskStatus.READY


async def test_lose_when_the_run_has_no_supervisor_yet_then_marked_lost_without_error(
    here,
) -> None:
    from streaming.models import BehaviourTask
    from streaming.runs import Run

    task = await BehaviourTask.objects.acreate(behaviour=PARK)
    run = Run(here, task, attempt=1, timeout=None)  # as a claim in flight leaves it
    here.lose(run, "lease expired")
    assert run.lost and run.supervisor is None


async def test_keeper_renew_when_our_run_row_was_taken_over_then_its_lease_is_left_alone(
    here,
) -> None:
    from streaming.models import BehaviourTask

    task, client = await _watched_run(BehaviourTask, here)
    theirs = datetime.now(UTC) + timedelta(seconds=600)
    await BehaviourTask.objects.filter(pk=task.pk).aupdate(
        owner="elsewhere:1:alive", lease_expires_at=theirs
    )
    await here.keeper.renew()
    row = await BehaviourTask.objects.aget(pk=task.pk)
    assert (row.owner, row.lease_expires_at) == ("elsewhere:1:alive", theirs)
    client.close()


async def test_run_when_process_sends_a_terminal_type_then_value_error_says_why(here) -> None:
    from streaming.models import BehaviourTask

    task, client = await _watched_run(BehaviourTask, here)
    run = here.run_of(f"BehaviourTask:{task.pk}")
    for reserved in ("complete", "shutdown", "stream-reset", "waiting"):
        with pytest.raises(ValueError, match=r"sends terminal and control events itself"):
            await run.send(reserved, {})
    client.close()


async def test_start_when_claimed_then_the_row_holds_a_lease_of_the_configured_length(
    here,
) -> None:
    from streaming.models import BehaviourTask

    before = datetime.now(UTC)
    task, client = await _watched_run(BehaviourTask, here)
    row = await BehaviourTask.objects.aget(pk=task.pk)
    lease = timedelta(seconds=here.config.lease)
    assert row.owner == here.owner
    assert before + lease <= row.lease_expires_at <= datetime.now(UTC) + lease
    client.close()


async def test_retry_when_the_task_failed_before_then_the_new_run_starts_without_its_error(
    here,
) -> None:
    from streaming.models import BehaviourTask
    from streaming.states import TaskStatus

    before = datetime.now(UTC)
    task = await BehaviourTask.objects.acreate(
        behaviour=PARK,
        status=TaskStatus.FAILED,
        attempt=1,
        error="ValueError: before",
        started_at=before - timedelta(minutes=2),
        completed_at=before - timedelta(minutes=1),
        final_event='{"id": 1, "type": "error"}',
        cancel_requested="asked once, too late",
        event_id_ceiling=1001,
    )
    assert await here.retry_task(BehaviourTask, task.pk)
    row = await BehaviourTask.objects.aget(pk=task.pk)
    assert (row.status, row.attempt, row.error) == (TaskStatus.RUNNING, 2, "")
    assert (row.completed_at, row.final_event, row.cancel_requested) == (None, None, None)
    assert row.started_at >= before and row.owner == here.owner
    assert row.event_id_ceiling == 2001  # the new run's ids follow the old run's
    assert await here.cancel_task(BehaviourTask, task.pk)


async def test_resume_of_a_run_elsewhere_when_nothing_is_kept_here_then_read_from_the_log(
    here,
) -> None:
    from streaming.models import BehaviourTask, StreamEvent

    task = await BehaviourTask.objects.acreate(**_running_elsewhere())
    for number in (1001, 1002, 1003):
        await StreamEvent.objects.acreate(
            model="BehaviourTask",
            task_id=task.pk,
            event_id=number,
            type="tick",
            data=f'{{"n": {number}}}',
            timestamp="2026-01-01T00:00:00+00:00",
        )
    client = await here.subscribe(BehaviourTask, task.pk, last_event_id=1001)
    assert [(await _next(client)).event.id for _ in range(2)] == [1002, 1003]
    client.close()


# -- the keeper's loop ---------------------------------------------------------------------


async def test_keeper_when_ticks_fail_then_an_outage_logged_once_an_error_with_its_trace(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from streaming import db
    from streaming.coordinator import Coordinator
    from streaming.leases import Keeper

    failures: list[BaseException] = [
        db.DatabaseUnavailable("gone"),
        db.DatabaseUnavailable("still gone"),
        RuntimeError("boom"),
    ]
    ticks = 0

    class Scripted(Keeper):
        """Its first ticks fail as scripted; the later ones are the real tick."""

        async def tick(self) -> None:
            nonlocal ticks
            ticks += 1
            if failures:
                raise failures.pop(0)
            await super().tick()

    coordinator = Coordinator(lease=0.3)  # a tick every 0.1 s
    keeper = coordinator.keeper = Scripted(coordinator)
    keeper.start()
    try:
        await eventually(lambda: ticks >= 5, what="five ticks")
    finally:
        await keeper.stop()
    said = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "streaming.leases"]
    assert said[:3] == [
        ("WARNING", "keeper: database unavailable (gone)"),
        ("ERROR", "keeper: tick failed"),
        ("INFO", "keeper: the database is back; no lease is taken as lost for 0.3s"),
    ]
    failed = next(r for r in caplog.records if r.getMessage() == "keeper: tick failed")
    assert failed.exc_info is not None and str(failed.exc_info[1]) == "boom"
    assert keeper._task is None
    await keeper.stop()  # stopped twice: nothing to do


async def test_keeper_when_a_write_took_longer_than_a_heartbeat_then_no_lease_taken_as_lost(
    caplog: pytest.LogCaptureFixture, hold_orm_thread: Callable[[], Any]
) -> None:
    from streaming.coordinator import Coordinator
    from streaming.models import BehaviourTask
    from streaming.states import TaskStatus

    lost = await BehaviourTask.objects.acreate(
        behaviour=PARK,
        status=TaskStatus.RUNNING,
        attempt=1,
        owner="elsewhere:1:dead",
        lease_expires_at=datetime.now(UTC) - timedelta(seconds=1),
    )
    coordinator = Coordinator(lease=0.3)  # not opened: only the test ticks its keeper
    loop = asyncio.get_running_loop()
    # The ORM's one thread is busy: the keeper's write probe waits behind it.
    async with hold_orm_thread():
        ticking = asyncio.create_task(coordinator.keeper.tick())
        held_from = loop.time()
        await eventually(
            lambda: loop.time() - held_from > 2 * coordinator.config.heartbeat,
            what="the probe to wait past a heartbeat",
        )
    await asyncio.wait_for(ticking, 5)
    assert (
        "keeper: the database was slow to take a write; no lease is taken as lost for 0.3s"
        in caplog.messages
    )
    assert (await BehaviourTask.objects.aget(pk=lost.pk)).status == TaskStatus.RUNNING
    await BehaviourTask.objects.filter(pk=lost.pk).aupdate(status=TaskStatus.INTERRUPTED)


async def test_keeper_when_its_sweep_is_slow_then_its_own_leases_are_still_renewed_in_time() -> (
    None
):
    from streaming.coordinator import Coordinator
    from streaming.leases import Keeper
    from streaming.models import BehaviourTask

    loop = asyncio.get_running_loop()
    renewed: list[float] = []  # loop time at the end of each renewal
    sweeps = 0

    class SlowSweep(Keeper):
        """Its look for lost runs takes most of a lease: many models on a loaded machine.

        Seen in CI: ten clients of a task sending 10,000 events and a busy
        second core made each sweep take two seconds against a 3 s lease, and
        another worker took the run for lost while it ran.
        """

        async def recover_lost(self) -> None:
            nonlocal sweeps
            await asyncio.sleep(0.5)  # the sweep's cost, as a slow database's would be
            await super().recover_lost()
            sweeps += 1

        async def renew(self) -> None:
            await super().renew()
            renewed.append(loop.time())

    coordinator = Coordinator(lease=0.6, cancel_grace=1.0)  # a heartbeat every 0.2 s
    coordinator.keeper = SlowSweep(coordinator)
    coordinator.open()
    try:
        task, client = await _watched_run(BehaviourTask, coordinator)
        ran_from = len(renewed)
        await eventually(lambda: sweeps >= 3, what="three slow sweeps")
        # Each renewal sets the lease to a whole lease from then: a gap longer
        # than a lease between two of them is a lease that lapsed meanwhile.
        gaps = [b - a for a, b in itertools.pairwise(renewed[ran_from:])]
        assert gaps and max(gaps) < coordinator.config.lease, (
            f"renewals {max(gaps, default=0):.2f} s apart at most, against a lease of "
            f"{coordinator.config.lease} s: the run's renewal waited for the sweep"
        )
        assert (await BehaviourTask.objects.aget(pk=task.pk)).status == "RUNNING"
        client.close()
    finally:
        await coordinator.shutdown(1.0)


async def test_keeper_rerun_when_its_coordinator_has_closed_then_it_stops_asking(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from streaming.coordinator import Coordinator
    from streaming.models import BehaviourTask
    from streaming.states import TaskStatus

    coordinator = Coordinator(max_attempts=3)
    await coordinator.shutdown(0)
    rows = [
        await BehaviourTask.objects.acreate(
            behaviour=STEPS, status=TaskStatus.INTERRUPTED, attempt=1
        )
        for _ in range(2)
    ]
    await coordinator.keeper.rerun()
    for row in rows:
        assert (await BehaviourTask.objects.aget(pk=row.pk)).status == TaskStatus.INTERRUPTED
    assert not [r for r in caplog.records if r.name == "streaming.leases"]


async def test_keeper_rerun_when_a_listed_task_is_deleted_then_the_next_still_runs_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from streaming.coordinator import Coordinator
    from streaming.models import BehaviourTask
    from streaming.states import TaskStatus

    asked: list[int] = []

    class DeletedMeanwhile(Coordinator):
        """The first task the keeper asks for is deleted just before it is asked."""

        async def rerun(self, model: Any, pk: Any) -> bool:
            asked.append(pk)
            if len(asked) == 1:
                await model._default_manager.filter(pk=pk).adelete()
            return await super().rerun(model, pk)

    rows = [
        await BehaviourTask.objects.acreate(
            behaviour=STEPS, fields={"steps": 1}, status=TaskStatus.INTERRUPTED, attempt=1
        )
        for _ in range(2)
    ]
    coordinator = DeletedMeanwhile(max_attempts=2, cancel_grace=1.0)
    try:
        await coordinator.keeper.rerun()
        assert sorted(asked) == sorted(row.pk for row in rows)
        survivor = asked[1]
        assert f"BehaviourTask:{survivor}: interrupted, run again" in caplog.messages, (
            caplog.messages
        )
    finally:
        await coordinator.shutdown(5.0)
    assert (await BehaviourTask.objects.aget(pk=survivor)).status == TaskStatus.SUCCESSFUL


async def test_keeper_renew_when_a_run_is_still_being_claimed_then_it_is_left_alone(here) -> None:
    from streaming.leases import Keeper
    from streaming.models import BehaviourTask
    from streaming.runs import Run

    # Between _launch's registering a run and its claim's UPDATE, the run has
    # no supervisor and its row is still READY: a renewal then must not take
    # the missing RUNNING row for a lost lease.
    task = await BehaviourTask.objects.acreate(behaviour=PARK)
    run = Run(here, task, attempt=1, timeout=None)

    class Claiming:
        """The coordinator, with ``run`` registered and its claim not yet made."""

        def __getattr__(self, name: str) -> Any:
            return getattr(here, name)

        def running(self) -> list[Run]:
            return [*here.running(), run]

    await Keeper(Claiming()).renew()
    assert not run.lost


async def test_keeper_when_its_own_run_outlived_its_lease_then_it_is_not_taken_for_lost(
    here,
) -> None:
    from streaming.models import BehaviourTask
    from streaming.states import TaskStatus

    # A renewal that came late (a busy loop): the row looks lost, but its run is here.
    task, client = await _watched_run(BehaviourTask, here)
    await BehaviourTask.objects.filter(pk=task.pk).aupdate(
        lease_expires_at=datetime.now(UTC) - timedelta(seconds=1)
    )
    await here.keeper.recover_lost()
    row = await BehaviourTask.objects.aget(pk=task.pk)
    assert (row.status, row.owner) == (TaskStatus.RUNNING, here.owner)
    assert not here.run_of(f"BehaviourTask:{task.pk}").lost and client.take() == []
    assert await here.cancel_task(BehaviourTask, task.pk)


async def test_keeper_when_a_lost_runs_lease_was_renewed_meanwhile_then_nothing_recorded(
    here, caplog: pytest.LogCaptureFixture
) -> None:
    from streaming.models import BehaviourTask
    from streaming.states import TaskStatus

    # Listed as expired, then renewed by its owner before the keeper's UPDATE.
    task = await BehaviourTask.objects.acreate(**_running_elsewhere())
    client = await here.subscribe(BehaviourTask, task.pk)
    row = {
        "pk": task.pk,
        "attempt": 1,
        "owner": "elsewhere:1:alive",
        "event_id_ceiling": 1000,
        "cancel_requested": None,
    }
    await here.keeper._interrupt(BehaviourTask, row)
    stored = await BehaviourTask.objects.aget(pk=task.pk)
    assert (stored.status, stored.final_event) == (TaskStatus.RUNNING, None)
    assert client.take() == [] and not client.ended
    assert not [r for r in caplog.records if r.name == "streaming.leases"]


# -- 4. what clients of a lost run are told while they wait -----------------------------------


def _exited_pid() -> int:
    """The pid of a process of this host that has exited (and been reaped)."""
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait(timeout=20)
    return child.pid


async def test_client_of_a_run_whose_process_exited_when_subscribed_then_told_the_wait_at_once(
    here,
) -> None:
    import socket

    from streaming.models import BehaviourTask

    owner = f"{socket.gethostname()}:{_exited_pid()}:deadbeef"
    lost = await BehaviourTask.objects.acreate(**_running_elsewhere(owner=owner))
    alive = await BehaviourTask.objects.acreate(**_running_elsewhere())

    told = await _next(await here.subscribe(BehaviourTask, lost.pk))
    quiet = await here.subscribe(BehaviourTask, alive.pk)

    assert (told.event.type, told.event.id, told.final) == ("waiting", 0, False)
    assert told.event.data["reason"] == "lease"
    assert f"its process ({owner}) has exited" in told.event.data["message"]
    # Recorded at the first keeper tick after the lease lapses: 60 s here, plus one period.
    assert 60 < told.event.data["seconds"] <= 60 + here.config.heartbeat
    assert quiet.take() == []  # a live owner's run: nothing to wait for
    for pk in (lost.pk, alive.pk):
        await BehaviourTask.objects.filter(pk=pk).aupdate(status="INTERRUPTED")


async def test_clients_of_a_run_elsewhere_when_it_misses_a_renewal_then_told_once(here) -> None:
    from streaming.models import BehaviourTask

    run = await BehaviourTask.objects.acreate(**_running_elsewhere(owner="elsewhere:1:stalled"))
    first, second = [await here.subscribe(BehaviourTask, run.pk) for _ in range(2)]
    await here.keeper.tell_watchers()
    assert first.take() == [] and second.take() == []  # renewed a moment ago

    # Its owner renews every heartbeat; a lease this short has missed one.
    soon = datetime.now(UTC) + timedelta(seconds=here.config.heartbeat / 4)
    await BehaviourTask.objects.filter(pk=run.pk).aupdate(lease_expires_at=soon)
    await here.keeper.tell_watchers()
    await here.keeper.tell_watchers()

    for client in (first, second):
        (notice,) = client.take()
        assert (notice.event.type, notice.event.id) == ("waiting", 0)
        assert (
            "(elsewhere:1:stalled) has stopped renewing its lease" in notice.event.data["message"]
        )
    await BehaviourTask.objects.filter(pk=run.pk).aupdate(status="INTERRUPTED")
