"""Database faults and the coordinator's lifecycle, white-box.

A database outage here is real: another SQLite connection holds the file's
write lock (reads still work, as in WAL mode they do), and the ORM's
connection waits a short busy timeout instead of twenty seconds. What is
pinned: the breaker that fails calls at once during an outage and says why,
writes that wait the outage out, the health probe that takes the write
lock, the keeper that distrusts leases after an outage and renews long runs,
and the coordinator's points of start, cancel, give-up and shutdown. On
PostgreSQL (``DATABASE_URL``), a session the server ended is reconnected.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import pytest_asyncio
from asgiref.sync import sync_to_async

from conformance.waiting import eventually

# The coordinator reaches the database from the ORM's own thread, so each test
# gets a real transaction (and a flushed database after it), not a wrapped one.
pytestmark = [pytest.mark.timeout(30), pytest.mark.django_db(transaction=True)]

#: Milliseconds the ORM's connection waits on a locked file before it fails.
BUSY_TIMEOUT_MS = 50


class WriteLock:
    """Another connection that can hold the SQLite file's write lock: an outage for writers."""

    def __init__(self, path: str) -> None:
        self._holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)

    def take(self) -> None:
        self._holder.execute("BEGIN IMMEDIATE")

    def release(self) -> None:
        if self._holder.in_transaction:
            self._holder.execute("ROLLBACK")

    def close(self) -> None:
        self.release()
        self._holder.close()


def _short_busy_timeout() -> str:
    from django.db import connection

    connection.ensure_connection()
    connection.connection.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    return str(connection.settings_dict["NAME"])


@pytest_asyncio.fixture
async def write_lock() -> AsyncIterator[WriteLock]:
    """A write lock on the test database, released after; the ORM waits on it briefly."""
    from django.db import connection

    from streaming import db

    if connection.vendor != "sqlite":
        pytest.skip("holds a SQLite file's write lock")
    path = await sync_to_async(_short_busy_timeout, thread_sensitive=True)()
    lock = WriteLock(path)
    try:
        yield lock
    finally:
        lock.close()
        db._breaker.reset()  # the next test starts without a remembered outage


async def _parked(coordinator: Any, behaviour: str = "conformance.behaviours:park") -> Any:
    """A BehaviourTask started on ``coordinator`` that has sent ``start``; its run."""
    from streaming.models import BehaviourTask

    task = await BehaviourTask.objects.acreate(behaviour=behaviour)
    subscriber = await coordinator.subscribe(BehaviourTask, task.pk)
    assert await coordinator.start_task(BehaviourTask, task.pk)
    async with asyncio.timeout(5):
        assert (await subscriber.get()).event.type == "start"
    subscriber.close()
    return coordinator.run_of(f"BehaviourTask:{task.pk}")


async def _status(pk: int) -> str:
    from streaming.models import BehaviourTask

    return (await BehaviourTask.objects.aget(pk=pk)).status


async def _is(pk: int, status: str) -> bool:
    return await _status(pk) == status


# -- db: describe, the breaker, waiting an outage out --------------------------------------


def test_describe_when_given_an_error_then_its_type_and_one_line_message() -> None:
    from django.db import OperationalError

    from streaming.db import describe

    assert describe(OperationalError("database is\n  locked")) == (
        "OperationalError: database is locked"
    )
    assert describe(OperationalError()) == "OperationalError: OperationalError"


@pytest.mark.asyncio
async def test_run_when_database_locked_then_unavailable_and_refused_at_once_saying_why(
    write_lock: WriteLock,
) -> None:
    from streaming import db
    from streaming.models import BehaviourTask

    task = await BehaviourTask.objects.acreate(behaviour="conformance.behaviours:park")
    calls = 0

    async def write() -> int:
        nonlocal calls
        calls += 1
        return await BehaviourTask.objects.filter(pk=task.pk).aupdate(fields={"n": calls})

    write_lock.take()
    with pytest.raises(db.DatabaseUnavailable) as first:
        await db.run(write)
    assert str(first.value) == "OperationalError: database is locked"
    with pytest.raises(db.DatabaseUnavailable) as refused:
        await db.run(write)
    assert calls == 1, "a call during the cool-down reached the database"
    assert str(refused.value) == "OperationalError: database is locked"


@pytest.mark.asyncio
async def test_run_until_available_when_database_comes_back_then_retries_and_returns_result(
    write_lock: WriteLock, caplog: pytest.LogCaptureFixture
) -> None:
    from streaming import db
    from streaming.models import BehaviourTask

    task = await BehaviourTask.objects.acreate(behaviour="conformance.behaviours:park")
    told: list[bool] = []

    def keep_trying() -> bool:
        told.append(True)
        write_lock.release()  # the outage ends once the first try has failed
        return True

    write_lock.take()
    async with asyncio.timeout(5):
        updated = await db.run_until_available(
            lambda: BehaviourTask.objects.filter(pk=task.pk).aupdate(fields={"written": True}),
            what="test write",
            keep_trying=keep_trying,
            first_delay=0.01,
        )
    assert updated == 1 and told
    assert (await BehaviourTask.objects.aget(pk=task.pk)).fields == {"written": True}
    # The outage is logged once, when it is first met, and so is its end.
    said = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "streaming.db"]
    assert [level for level, _ in said] == ["WARNING", "INFO"], said
    assert said[0][1].startswith("test write: database unavailable (")
    assert said[1][1] == "test write: done once the database was back"


def test_describe_when_the_message_is_long_then_cut_to_one_short_line() -> None:
    from django.db import OperationalError

    from streaming.db import describe

    said = describe(OperationalError("x" * 400))
    assert said == "OperationalError: " + "x" * (300 - len("OperationalError: "))


def test_breaker_when_tripped_then_calls_refused_for_the_cool_down_saying_why() -> None:
    import time

    from streaming import db

    breaker = db._Breaker()
    breaker.check()  # closed: nothing raised
    before = time.monotonic()
    breaker.trip("OperationalError: gone")
    assert before < breaker.open_until <= time.monotonic() + db.COOL_DOWN
    assert breaker.open_until >= before + db.COOL_DOWN
    with pytest.raises(db.DatabaseUnavailable, match=r"^OperationalError: gone$"):
        breaker.check()
    breaker.reset()
    breaker.check()


@pytest.mark.asyncio
async def test_run_until_available_when_told_to_stop_trying_then_first_failure_raised_unlogged(
    write_lock: WriteLock, caplog: pytest.LogCaptureFixture
) -> None:
    from streaming import db
    from streaming.models import BehaviourTask

    write_lock.take()
    with pytest.raises(db.DatabaseUnavailable, match="database is locked"):
        await db.run_until_available(
            lambda: BehaviourTask.objects.filter(pk=1).aupdate(fields={}),
            what="test write",
            keep_trying=lambda: False,
        )
    assert not [r for r in caplog.records if r.name == "streaming.db"]


@pytest.mark.asyncio
async def test_probe_when_the_orm_thread_is_busy_past_the_timeout_then_it_says_no_answer(
    hold_orm_thread: Callable[[], Any],
) -> None:
    from streaming import db

    async with hold_orm_thread():
        assert await db.probe(0.05) == "database unavailable: no answer within 0.05s"
    assert await db.probe(5) is None


@pytest.mark.asyncio
async def test_health_when_another_connection_holds_the_write_lock_then_unavailable(
    write_lock: WriteLock,
) -> None:
    from streaming.coordinator import Coordinator

    coordinator = Coordinator()
    assert await coordinator.health() is None
    write_lock.take()
    assert await coordinator.health() == (
        "database unavailable: OperationalError: database is locked"
    )


# -- coordinator: event ids, opening, the cleanup's error -----------------------------------


@pytest.mark.asyncio
async def test_run_when_it_sends_a_few_events_then_ceiling_stays_at_the_claimed_block(
    coordinator,
) -> None:
    from streaming.coordinator import ID_BLOCK
    from streaming.models import BehaviourTask

    run = await _parked(coordinator)
    reserving = [t for t in coordinator.tracked() if t.get_name().startswith("streaming:reserve:")]
    await asyncio.gather(*reserving)
    stored = await BehaviourTask.objects.aget(pk=run.task.pk)
    assert (stored.event_id_ceiling, run.reserved) == (ID_BLOCK, ID_BLOCK)
    assert await coordinator.cancel_task(BehaviourTask, run.task.pk)


@pytest.mark.asyncio
async def test_coordinator_when_its_first_run_starts_then_event_log_writer_is_running(
    coordinator,
) -> None:
    from streaming.models import BehaviourTask

    task = await BehaviourTask.objects.acreate(
        behaviour="conformance.behaviours:steps", fields={"steps": 2}
    )
    subscriber = await coordinator.subscribe(BehaviourTask, task.pk)
    assert await coordinator.start_task(BehaviourTask, task.pk)
    async with asyncio.timeout(5):
        sent = [message.event.id async for message in subscriber]
    await coordinator.log.settled(timeout=5)
    stored = await coordinator.log.read("BehaviourTask", task.pk, after=0, before=None)
    assert [message.event.id for message in stored] == sent == [1, 2, 3, 4]


@pytest.mark.asyncio
async def test_cancel_when_cleanup_then_raises_then_cancelled_and_error_names_what_raised(
    coordinator,
) -> None:
    from streaming.models import BehaviourTask

    run = await _parked(coordinator, "conformance.behaviours:cleanup_raises")
    assert await coordinator.cancel_task(BehaviourTask, run.task.pk, "stop now")
    async with asyncio.timeout(5):
        await asyncio.gather(run.supervisor, return_exceptions=True)
    stored = await BehaviourTask.objects.aget(pk=run.task.pk)
    assert (stored.status, stored.error) == (
        "CANCELLED",
        "cancelled: stop now; cleanup raised ValueError: cleanup failed",
    )


def _relay_bus(handlers: dict[str, Callable[[str, str], None]]) -> Any:
    """An in-memory bus whose cancels reach the coordinator they name, as RedisBus's do."""
    from streaming.bus import InMemoryBus

    class RelayBus(InMemoryBus):
        def start(self, owner: str, on_cancel: Callable[[str, str], None]) -> None:
            handlers[owner] = on_cancel

        async def request_cancel(self, owner: str, key: str, reason: str) -> None:
            handlers[owner](key, reason)

    return RelayBus()


@pytest.mark.asyncio
async def test_cancel_from_another_worker_when_bus_relays_it_then_owner_cancels_at_once() -> None:
    from streaming.coordinator import Coordinator
    from streaming.models import BehaviourTask

    handlers: dict[str, Callable[[str, str], None]] = {}
    # A long lease: the owner's keeper looks only every 10 s, so only the bus can be that quick.
    owner = Coordinator(lease=30.0, cancel_grace=1.0, bus=_relay_bus(handlers))
    other = Coordinator(lease=30.0, cancel_grace=1.0, bus=_relay_bus(handlers))
    try:
        run = await _parked(owner)
        assert await other.cancel_task(BehaviourTask, run.task.pk, "from the other worker")
        await eventually(
            lambda: _is(run.task.pk, "CANCELLED"),
            timeout=3,
            what="the owner to record the cancel",
        )
    finally:
        await owner.shutdown(1.0)
        await other.shutdown(1.0)


# -- coordinator: cancel, give-up and shutdown at their edges ----------------------------------


@pytest.mark.asyncio
async def test_cancel_when_supervisor_ended_before_its_release_then_true_and_cancelled(
    coordinator,
) -> None:
    from streaming.models import BehaviourTask

    task = await BehaviourTask.objects.acreate(behaviour="conformance.behaviours:park")
    assert await coordinator.start_task(BehaviourTask, task.pk)
    key = f"BehaviourTask:{task.pk}"
    run = coordinator.run_of(key)
    run.supervisor.cancel(msg="coordinator shutdown")  # before its first step, as a drain does
    await asyncio.sleep(0)  # one turn: the supervisor ends; its done-callbacks are queued
    assert run.supervisor.done() and coordinator.run_of(key) is run
    # Its ending is not written: the task is RUNNING, so the cancel wins
    # (RACE-21), and the release's INTERRUPTED becomes that cancel. (Before
    # issue 27 it answered false, and the run was recorded INTERRUPTED.)
    assert await coordinator.cancel_task(BehaviourTask, task.pk, "just in time")
    await eventually(lambda: _is(task.pk, "CANCELLED"), what="the run recorded CANCELLED")


@pytest.mark.asyncio
async def test_give_up_when_its_record_waits_for_the_database_then_its_task_names_the_run(
    write_lock: WriteLock,
) -> None:
    from streaming.coordinator import Coordinator
    from streaming.models import BehaviourTask

    coordinator = Coordinator(cancel_grace=0.5)
    try:
        run = await _parked(coordinator, "conformance.behaviours:swallow_once")
        assert await coordinator.cancel_task(BehaviourTask, run.task.pk, "stop")

        async def swallowed() -> bool:
            stored = await BehaviourTask.objects.aget(pk=run.task.pk)
            return stored.fields.get("swallowed") == 1

        await eventually(swallowed, what="the task to swallow the cancel")
        write_lock.take()  # the give-up's record now waits for the database
        name = f"streaming:give-up:{run.key}"
        await eventually(
            lambda: any(task.get_name() == name for task in asyncio.all_tasks()),
            what=f"a task named {name}",
        )
        write_lock.release()
        await eventually(lambda: _is(run.task.pk, "CANCELLED"), what="the give-up recorded")
    finally:
        write_lock.release()
        await coordinator.shutdown(1.0)


@pytest.mark.asyncio
async def test_shutdown_when_database_stays_away_then_outcome_given_up_and_no_task_left(
    write_lock: WriteLock, caplog: pytest.LogCaptureFixture
) -> None:
    from streaming.coordinator import Coordinator

    coordinator = Coordinator(cancel_grace=0.2)
    run = await _parked(coordinator)
    write_lock.take()
    await coordinator.shutdown(0)
    await eventually(
        lambda: not coordinator.tracked(), timeout=5, what="the outcome's writer to give up"
    )
    assert f"{run.key}: outcome INTERRUPTED lost: the database stayed away" in caplog.messages
    assert (
        f"{run.key}: recording INTERRUPTED: database unavailable "
        "(OperationalError: database is locked); retrying"
    ) in caplog.messages
    write_lock.release()
    assert await _status(run.task.pk) == "RUNNING"  # its lease expires; a keeper takes it


#: Lets ``_reserving`` send the event that needs the next block of ids.
_GO_ON = asyncio.Event()


async def _reserving(ctx: Any) -> None:
    """Send half a block of events; once ``_GO_ON`` is set, one more (a reservation); park."""
    from conformance.behaviours import park_forever
    from streaming.coordinator import ID_BLOCK

    for index in range(ID_BLOCK // 2):
        await ctx.send_event("tick", {"index": index})
    await _GO_ON.wait()
    await ctx.send_event("tick", {"index": ID_BLOCK // 2})
    await park_forever()


@pytest.mark.asyncio
async def test_reservation_when_database_away_then_it_waits_it_out_saying_for_which_run(
    coordinator, write_lock: WriteLock, caplog: pytest.LogCaptureFixture
) -> None:
    from streaming.coordinator import ID_BLOCK
    from streaming.models import BehaviourTask

    _GO_ON.clear()
    task = await BehaviourTask.objects.acreate(behaviour=f"{__name__}:_reserving")
    assert await coordinator.start_task(BehaviourTask, task.pk)
    run = coordinator.run_of(f"BehaviourTask:{task.pk}")
    await eventually(lambda: run.next_id > ID_BLOCK // 2, what="half a block sent")
    write_lock.take()
    _GO_ON.set()
    said = (
        f"{run.key}: reserving event ids: database unavailable "
        "(OperationalError: database is locked); retrying"
    )
    await eventually(lambda: said in caplog.messages, what="the reservation to meet the outage")
    write_lock.release()
    await eventually(lambda: run.reserved == 2 * ID_BLOCK, what="the block reserved")
    assert not run.lost
    stored = await BehaviourTask.objects.aget(pk=task.pk)
    assert stored.event_id_ceiling == 2 * ID_BLOCK
    assert await coordinator.cancel_task(BehaviourTask, task.pk)


@pytest.mark.asyncio
async def test_abandon_when_already_shut_down_then_coordinator_stays_closed() -> None:
    from streaming.coordinator import Coordinator

    coordinator = Coordinator()
    await coordinator.shutdown(0)
    coordinator.abandon()
    assert repr(coordinator).startswith("<Coordinator closed runs=0 ")
    assert await coordinator.health() == "draining"


@pytest.mark.asyncio
async def test_shutdown_when_abandoned_first_then_it_still_closes() -> None:
    from streaming.coordinator import Coordinator

    coordinator = Coordinator()
    coordinator.open()
    keeper = coordinator.keeper._task
    assert keeper is not None
    coordinator.abandon()
    # abandon() refuses new work at once; shutdown() must still do the closing,
    # not wait for a shutdown that nobody started.
    async with asyncio.timeout(5):
        await coordinator.shutdown(0)
    assert repr(coordinator).startswith("<Coordinator closed runs=0 ")
    assert keeper.done()


@pytest.mark.asyncio
async def test_event_log_when_database_away_at_shutdown_then_it_says_how_many_were_not_written(
    write_lock: WriteLock, caplog: pytest.LogCaptureFixture
) -> None:
    from streaming.eventlog import EventLog
    from streaming.events import Event
    from streaming.hub import Message

    log = EventLog(keep=10, max_event_bytes=1000)
    log.start()
    write_lock.take()
    for number in (1, 2, 3):
        log.append(Message(Event(number, "tick", {}, 1, "T", "2026-01-01T00:00:00+00:00")))
    # The writer takes all three as one batch, which then waits for the database.
    await eventually(lambda: not log._pending, what="the writer to take the batch")
    await log.close(timeout=0.2)
    assert "event log: 3 event(s) not written at shutdown" in caplog.messages


@pytest.mark.asyncio
async def test_event_log_when_database_away_then_back_then_the_batch_is_written_after_all(
    write_lock: WriteLock, caplog: pytest.LogCaptureFixture
) -> None:
    from streaming.eventlog import EventLog
    from streaming.events import Event
    from streaming.hub import Message

    log = EventLog(keep=10, max_event_bytes=1000)
    log.start()
    try:
        write_lock.take()
        for number in (1, 2):
            log.append(Message(Event(number, "tick", {}, 1, "Away", "2026-01-01T00:00:00+00:00")))
        said = "event log (2 events): database unavailable (OperationalError: database is locked)"
        await eventually(
            lambda: f"{said}; retrying" in caplog.messages, what="the writer to meet the outage"
        )
        write_lock.release()
        await log.settled(timeout=10)
        assert "event log (2 events): done once the database was back" in caplog.messages
    finally:
        await log.close(timeout=5)
    assert [m.event.id for m in await log.read("Away", 1, after=0, before=None)] == [1, 2]


@pytest.mark.asyncio
async def test_start_when_its_claim_meets_an_outage_then_refused_and_startable_once_back(
    coordinator, write_lock: WriteLock
) -> None:
    from streaming import db
    from streaming.models import BehaviourTask

    task = await BehaviourTask.objects.acreate(behaviour="conformance.behaviours:park")
    write_lock.take()
    with pytest.raises(db.DatabaseUnavailable):
        await coordinator.start_task(BehaviourTask, task.pk)
    write_lock.release()
    db._breaker.reset()  # as the cool-down's end would
    assert coordinator.stats()["running_tasks"] == 0
    assert await coordinator.start_task(BehaviourTask, task.pk)  # nothing left of the first try
    assert await coordinator.cancel_task(BehaviourTask, task.pk)


@pytest.mark.asyncio
async def test_resume_when_the_event_log_writer_is_stuck_then_the_client_is_not_kept_waiting(
    coordinator,
) -> None:
    from conformance.behaviours import park_forever
    from streaming.events import Event
    from streaming.hub import Message
    from streaming.models import BehaviourTask

    task = await BehaviourTask.objects.acreate(behaviour="conformance.behaviours:park")
    log = coordinator.log
    log._writer = stuck = asyncio.create_task(park_forever())  # a writer that never finishes
    stamp = "2026-01-01T00:00:00+00:00"
    log.append(Message(Event(1, "tick", {}, task.pk, "BehaviourTask", stamp)))
    try:
        # The resume waits a moment for the writer, then reads what the log has.
        resumed = await asyncio.wait_for(
            coordinator.subscribe(BehaviourTask, task.pk, last_event_id=0), 10
        )
        resumed.close()
    finally:
        stuck.cancel()
        log._writer = None


# -- the keeper --------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_keeper_when_run_outlasts_its_lease_then_lease_renewed() -> None:
    from streaming.coordinator import Coordinator
    from streaming.models import BehaviourTask

    coordinator = Coordinator(lease=0.6, cancel_grace=1.0)  # renewed every 0.2 s
    try:
        run = await _parked(coordinator)
        claimed = (await BehaviourTask.objects.aget(pk=run.task.pk)).lease_expires_at

        async def renewed() -> bool:
            stored = await BehaviourTask.objects.aget(pk=run.task.pk)
            return stored.status == "RUNNING" and stored.lease_expires_at > claimed

        await eventually(renewed, timeout=3, what="the lease to be renewed")
        assert await coordinator.cancel_task(BehaviourTask, run.task.pk)
    finally:
        await coordinator.shutdown(1.0)


@pytest.mark.asyncio
async def test_keeper_when_database_comes_back_then_no_lease_taken_as_lost_for_a_lease(
    write_lock: WriteLock, caplog: pytest.LogCaptureFixture
) -> None:
    from streaming.coordinator import Coordinator
    from streaming.models import BehaviourTask

    # A live coordinator elsewhere whose lease ran out while nobody could write.
    alive = await BehaviourTask.objects.acreate(
        behaviour="conformance.behaviours:park",
        status="RUNNING",
        attempt=1,
        owner="elsewhere:1:alive",
        lease_expires_at=datetime.now(UTC) - timedelta(seconds=1),
    )
    # Run again by the keeper's first good tick: a sign that the tick is over.
    again = await BehaviourTask.objects.acreate(
        behaviour="conformance.behaviours:steps",
        fields={"steps": 1},
        status="INTERRUPTED",
        attempt=0,
    )
    coordinator = Coordinator(lease=1.2, cancel_grace=1.0)  # a tick every 0.4 s
    try:
        write_lock.take()
        coordinator.open()
        await eventually(
            lambda: any(m.startswith("keeper: database unavailable") for m in caplog.messages),
            what="the keeper to find the database away",
        )
        write_lock.release()

        async def ran_again() -> bool:
            return (await BehaviourTask.objects.aget(pk=again.pk)).attempt == 1

        await eventually(ran_again, timeout=5, what="a keeper tick with the database back")
        assert await _status(alive.pk) == "RUNNING"
        assert "keeper: the database is back; no lease is taken as lost for 1.2s" in (
            caplog.messages
        )
    finally:
        await coordinator.shutdown(1.0)


# -- on a database server (PostgreSQL): a dropped connection, the probe --------------------------


@pytest.fixture
def database_server() -> None:
    """Skip unless the tests run on a database server (PostgreSQL)."""
    from django.db import connection

    if connection.vendor != "postgresql":
        pytest.skip("needs a database server (PostgreSQL); SQLite has no session to drop")


def _orm_backend_pid() -> int:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        return int(cursor.fetchone()[0])


def _terminate(pid: int, wait_until: Callable[..., Any]) -> None:
    from django.db import connections

    # Another thread's connection: the server ends the ORM's session, as a restart would.
    try:
        with connections["default"].cursor() as cursor:
            cursor.execute("SELECT pg_terminate_backend(%s)", [pid])

            def gone() -> bool:  # the backend ends a moment after it is told to
                cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", [pid])
                return not cursor.fetchone()[0]

            wait_until(gone, 5, f"backend {pid} to end")
    finally:
        connections["default"].close()


@pytest.mark.usefixtures("database_server")
@pytest.mark.asyncio
async def test_run_when_server_dropped_the_connection_then_reconnects_and_succeeds(
    wait_until: Callable[..., Any],
) -> None:
    from streaming import db
    from streaming.models import BehaviourTask

    await BehaviourTask.objects.acreate(behaviour="conformance.behaviours:park")
    dropped = await sync_to_async(_orm_backend_pid, thread_sensitive=True)()
    await asyncio.to_thread(_terminate, dropped, wait_until)
    assert await db.run(lambda: BehaviourTask.objects.acount()) == 1
    assert await sync_to_async(_orm_backend_pid, thread_sensitive=True)() != dropped


@pytest.mark.usefixtures("database_server")
@pytest.mark.asyncio
async def test_health_when_database_server_answers_then_healthy() -> None:
    from streaming.coordinator import Coordinator

    assert await Coordinator().health() is None
