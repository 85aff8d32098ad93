"""The reference's recovery machinery, white-box: leases, id ceilings, the event log, the writer.

The edge-case suite judges these from outside (a server killed, a database
that drops). These tests pin what the design promises inside: a run whose
lease another coordinator took stops and reports what the database says; a
run that sends past its reserved ids reserves more first; the event log
keeps the last events of each task and reads them back; gaps are announced;
memory for finished tasks stays under its byte budget; a stalled stream's
connection is aborted through its transport.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from conformance.waiting import eventually

# The coordinator reaches the database from the ORM's own thread, so each test
# gets a real transaction (and a flushed database after it), not a wrapped one.
pytestmark = [
    pytest.mark.timeout(30),
    pytest.mark.asyncio,
    pytest.mark.django_db(transaction=True),
]


@pytest_asyncio.fixture
async def coordinator() -> AsyncIterator[Any]:
    from streaming.coordinator import Coordinator

    made = Coordinator(cancel_grace=1.0, lease=3.0)
    made.open()
    try:
        yield made
    finally:
        await made.shutdown(1.0)


def _event(number: int, type: str = "tick", size: int = 0, model: str = "T") -> Any:
    from streaming.events import Event

    data = {"n": number, "pad": "x" * size}
    return Event(number, type, data, 1, model, "2026-01-01T00:00:00+00:00")


# -- leases -------------------------------------------------------------------------


async def test_run_when_another_coordinator_took_its_lease_then_it_stops_and_clients_get_that(
    coordinator,
) -> None:
    from streaming.events import Event, now_iso
    from streaming.models import BehaviourTask
    from streaming.states import TaskStatus

    task = await BehaviourTask.objects.acreate(behaviour="conformance.behaviours:park")
    subscriber = await coordinator.subscribe(BehaviourTask, task.pk)
    assert await coordinator.start_task(BehaviourTask, task.pk)
    assert (await subscriber.get()).event.type == "start"
    # What another coordinator's keeper writes when it finds the lease expired.
    stolen = Event(1001, "interrupted", {"reason": "taken"}, task.pk, "BehaviourTask", now_iso())
    await BehaviourTask.objects.filter(pk=task.pk).aupdate(
        status=TaskStatus.INTERRUPTED, owner="", final_event=stolen.to_json()
    )
    await coordinator.keeper.renew()
    reset, last = await asyncio.wait_for(subscriber.get(), 5), await subscriber.get()
    assert (reset.event.type, reset.event.data["oldest_available_id"]) == ("stream-reset", 1001)
    assert (last.event.type, last.event.id) == ("interrupted", 1001)
    row = await BehaviourTask.objects.aget(pk=task.pk)
    assert (row.status, row.final_event) == (TaskStatus.INTERRUPTED, stolen.to_json())


async def test_expired_lease_of_another_owner_when_keeper_looks_then_interrupted_and_told(
    coordinator,
) -> None:
    from datetime import UTC, datetime, timedelta

    from streaming.models import BehaviourTask
    from streaming.states import TaskStatus

    dead = await BehaviourTask.objects.acreate(
        behaviour="conformance.behaviours:park",
        status=TaskStatus.RUNNING,
        attempt=1,
        owner="elsewhere:1:dead",
        lease_expires_at=datetime.now(UTC) - timedelta(seconds=1),
        event_id_ceiling=1000,
    )
    alive = await BehaviourTask.objects.acreate(
        behaviour="conformance.behaviours:park",
        status=TaskStatus.RUNNING,
        attempt=1,
        owner="elsewhere:2:alive",
        lease_expires_at=datetime.now(UTC) + timedelta(seconds=60),
    )
    waiting = await coordinator.subscribe(BehaviourTask, dead.pk)
    notice = await asyncio.wait_for(waiting.get(), 5)
    assert (notice.event.type, notice.event.id, notice.final) == ("waiting", 0, False)
    await coordinator.keeper.recover_lost()
    told = await asyncio.wait_for(waiting.get(), 5)
    assert (told.event.type, told.event.id) == ("interrupted", 1001)
    assert "elsewhere:1:dead" in told.event.data["reason"]
    rows = {r.pk: r async for r in BehaviourTask.objects.filter(pk__in=[dead.pk, alive.pk])}
    assert rows[dead.pk].status == TaskStatus.INTERRUPTED
    assert rows[dead.pk].event_id_ceiling == 1001 and rows[dead.pk].owner == ""
    assert rows[alive.pk].status == TaskStatus.RUNNING
    await BehaviourTask.objects.filter(pk=alive.pk).aupdate(status=TaskStatus.INTERRUPTED)


async def test_keeper_when_database_just_came_back_then_it_waits_a_lease_before_taking_any() -> (
    None
):
    from datetime import UTC, datetime, timedelta

    from streaming.coordinator import Coordinator
    from streaming.models import BehaviourTask
    from streaming.states import TaskStatus

    coordinator = Coordinator(lease=3.0)  # not opened: only this test drives its keeper

    dead = await BehaviourTask.objects.acreate(
        behaviour="conformance.behaviours:park",
        status=TaskStatus.RUNNING,
        attempt=1,
        owner="elsewhere:3:dead",
        lease_expires_at=datetime.now(UTC) - timedelta(seconds=1),
    )
    keeper = coordinator.keeper
    keeper._trust_from = asyncio.get_running_loop().time() + 60  # as after an outage
    await keeper.tick()
    assert (await BehaviourTask.objects.aget(pk=dead.pk)).status == TaskStatus.RUNNING
    keeper._trust_from = 0
    await keeper.tick()
    assert (await BehaviourTask.objects.aget(pk=dead.pk)).status == TaskStatus.INTERRUPTED
    await coordinator.shutdown(0.1)


# -- event ids ---------------------------------------------------------------------------


async def test_run_when_it_sends_more_than_a_block_then_ids_are_reserved_before_use() -> None:
    from streaming.coordinator import ID_BLOCK, Coordinator
    from streaming.models import BehaviourTask

    count = 2 * ID_BLOCK + 500
    # A queue for every event: this client reads slowly (it queries as it goes).
    coordinator = Coordinator(client_queue_size=count + 10)
    task = await BehaviourTask.objects.acreate(
        behaviour="conformance.behaviours:burst", fields={"count": count}
    )
    subscriber = await coordinator.subscribe(BehaviourTask, task.pk)
    assert await coordinator.start_task(BehaviourTask, task.pk)
    highest_seen = 0
    async for message in subscriber:
        if message.event.type == "tick" and message.event.id % 250 == 0:
            # Any id a client has seen is at or below the ceiling stored now.
            stored = await BehaviourTask.objects.aget(pk=task.pk)
            assert stored.event_id_ceiling >= message.event.id, (stored, message)
        highest_seen = message.event.id
    row = await BehaviourTask.objects.aget(pk=task.pk)
    assert highest_seen == count + 1 == row.event_id_ceiling
    await coordinator.shutdown(1.0)


# -- the event log -----------------------------------------------------------------------


async def test_event_log_when_more_than_kept_then_last_ones_read_back_in_order(
    coordinator,
) -> None:
    from streaming.eventlog import EventLog
    from streaming.hub import Message

    log = EventLog(keep=5, max_event_bytes=100)
    log.start()
    try:
        for number in range(1, 13):
            log.append(Message(_event(number, model="LogTest")))
        log.append(Message(_event(13, size=500, model="LogTest")))  # too big to keep
        await log.close(timeout=5)
    finally:
        await log.close(timeout=0)
    stored = await log.read("LogTest", 1, after=0, before=None)
    assert [m.event.id for m in stored] == [8, 9, 10, 11, 12]
    assert stored[0].event.data == {"n": 8, "pad": ""}
    assert stored[0].json == '{"n": 8, "pad": ""}'
    assert [m.event.id for m in await log.read("LogTest", 1, after=9, before=12)] == [
        10,
        11,
    ]
    from streaming.models import StreamEvent

    await StreamEvent.objects.filter(model="LogTest").adelete()


# -- the hub: gaps and bytes ----------------------------------------------------------------


async def test_subscriber_when_ids_jump_then_stream_reset_before_the_jump() -> None:
    from streaming.hub import Hub

    hub = Hub()
    hub.open("T:1")
    subscriber = hub.subscribe("T:1")
    for number in (1, 2, 7):
        hub.publish("T:1", _event(number))
    types = [(m.event.type, m.event.id) for m in subscriber.take()]
    assert types == [("tick", 1), ("tick", 2), ("stream-reset", 2), ("tick", 7)]
    subscriber.close()


async def test_backfill_when_stored_events_older_than_queued_then_in_order_without_repeats() -> (
    None
):
    from streaming.hub import Hub, Message

    hub = Hub(history_size=2)
    hub.open("T:1")
    for number in range(1, 7):
        hub.publish("T:1", _event(number))
    resumed = hub.subscribe("T:1", after=1)  # memory keeps 5 and 6 only
    assert hub.kept_since("T:1") == 5
    resumed.backfill([Message(_event(n)) for n in (2, 3, 4, 5)], after=1)
    assert [m.event.id for m in resumed.take()] == [2, 3, 4, 5, 6]
    resumed.close()


async def test_finished_tasks_when_over_the_byte_budget_then_oldest_forgotten_latest_kept() -> None:
    from streaming.hub import Hub

    hub = Hub(history_bytes=10_000, closed_history_bytes=50_000)
    for task in range(1, 11):
        key = f"T:{task}"
        hub.open(key)
        for number in range(1, 5):
            hub.publish(key, _event(number, size=4_000))
        hub.publish(key, _event(5, "complete"), final=True)
    assert hub._closed_bytes <= 50_000
    assert "T:10" in hub._closed and "T:1" not in hub._closed
    kept = hub._closed["T:10"]
    assert kept[-1].event.type == "complete" and sum(m.size for m in kept) <= 10_000 + 100


# -- the writer ------------------------------------------------------------------------------


class _Transport:
    def __init__(self) -> None:
        self.aborted = False
        self.buffered = 0

    def abort(self) -> None:
        self.aborted = True

    def get_write_buffer_size(self) -> int:
        return self.buffered


async def _silent_client() -> dict[str, Any]:
    """An ASGI ``receive`` of a client that never sends anything, nor leaves."""
    await asyncio.Event().wait()
    return {"type": "http.disconnect"}


class _Cycle:
    """Stands in for uvicorn's RequestResponseCycle: a send that can block, and its transport."""

    def __init__(self) -> None:
        self.transport = _Transport()
        self.sent: list[dict[str, Any]] = []
        self.unblock = asyncio.Event()
        self.unblock.set()

    async def send(self, message: dict[str, Any]) -> None:
        self.sent.append(message)
        await self.unblock.wait()


async def test_writer_when_events_queued_then_one_write_and_retry_first() -> None:
    from streaming.hub import Hub
    from streaming.sse import StreamWriter

    hub = Hub()
    hub.open("T:1")
    subscriber = hub.subscribe("T:1")
    for number in range(1, 4):
        hub.publish("T:1", _event(number))
    hub.publish("T:1", _event(4, "complete"), final=True)
    cycle = _Cycle()
    await StreamWriter(cycle.send, subscriber).run(retry_ms=1500, keepalive=60)
    bodies = [m for m in cycle.sent if m["type"] == "http.response.body"]
    assert len(bodies) == 1 and bodies[0]["more_body"] is False
    body = bodies[0]["body"]
    assert body.startswith(b"retry: 1500\n\n") and body.count(b"event: ") == 4


async def test_writer_when_aborted_twice_then_connection_aborted_once() -> None:
    from streaming.hub import Hub
    from streaming.sse import StreamWriter

    hub = Hub()
    hub.open("T:1")
    cycle = _Cycle()
    aborts: list[bool] = []
    cycle.transport.abort = lambda: aborts.append(True)  # type: ignore[method-assign]
    writer = StreamWriter(cycle.send, hub.subscribe("T:1"))
    writer.abort()
    writer.abort()
    assert len(aborts) == 1 and writer.aborted is True


async def test_writer_when_a_long_write_keeps_draining_then_not_aborted_until_it_stops() -> None:
    from streaming.hub import Hub
    from streaming.sse import StreamWriter, Writers

    hub = Hub()
    hub.open("T:1")
    subscriber = hub.subscribe("T:1")
    cycle = _Cycle()
    cycle.unblock.clear()  # one write that takes many deadlines to drain
    cycle.transport.buffered = 10_000_000
    aborted = asyncio.Event()
    cycle.transport.abort = aborted.set  # type: ignore[method-assign]
    writers = Writers(keepalive=60, write_deadline=0.2)
    writer = StreamWriter(cycle.send, subscriber)

    serving = asyncio.create_task(writers.serve(writer, _silent_client, 10))
    hub.publish("T:1", _event(1))
    loop = asyncio.get_running_loop()
    began = loop.time()
    while loop.time() - began < 5 * writers.write_deadline:  # the client drains, slowly
        cycle.transport.buffered -= 1000
        last_read = loop.time()
        await asyncio.sleep(writers.period / 4)
    assert not aborted.is_set() and writer.sending_since is not None
    # The client stops reading. Its write stalls from its last read, which the
    # writers see at their next tick: the abort comes a deadline after that.
    await asyncio.wait_for(aborted.wait(), 5)
    assert loop.time() - last_read >= writers.write_deadline
    cycle.unblock.set()
    await asyncio.wait_for(serving, 5)
    hub.release("T:1")


async def test_writer_when_a_write_stalls_past_the_deadline_then_connection_aborted() -> None:
    from streaming.hub import Hub
    from streaming.sse import StreamWriter, Writers

    hub = Hub()
    hub.open("T:1")
    subscriber = hub.subscribe("T:1")
    cycle = _Cycle()
    writers = Writers(keepalive=60, write_deadline=0.2)

    cycle.unblock.clear()  # the client stopped reading: every send hangs
    aborted = asyncio.Event()
    cycle.transport.abort = aborted.set  # type: ignore[method-assign]
    writer = StreamWriter(cycle.send, subscriber)
    serving = asyncio.create_task(writers.serve(writer, _silent_client, 10))
    hub.publish("T:1", _event(1))
    await asyncio.wait_for(aborted.wait(), 5)
    cycle.unblock.set()  # what uvicorn does once the transport is gone
    await asyncio.wait_for(serving, 5)
    assert subscriber.ended and len(writers) == 0
    hub.release("T:1")


async def test_writer_when_it_starts_then_headers_say_event_stream_uncached_unbuffered() -> None:
    from streaming.hub import Hub
    from streaming.sse import StreamWriter

    hub = Hub()
    hub.open("T:1")
    subscriber = hub.subscribe("T:1")
    hub.publish("T:1", _event(1, "complete"), final=True)
    cycle = _Cycle()
    await StreamWriter(cycle.send, subscriber).run(retry_ms=1000, keepalive=60)
    assert cycle.sent[0] == {
        "type": "http.response.start",
        "status": 200,
        "headers": [
            (b"content-type", b"text/event-stream; charset=utf-8"),
            (b"cache-control", b"no-cache"),
            (b"x-accel-buffering", b"no"),
        ],
    }


async def test_writer_when_its_server_hides_the_transport_then_abort_ends_the_stream_and_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from streaming.hub import Hub
    from streaming.sse import StreamWriter, Writers

    hub = Hub()
    hub.open("T:1")
    subscriber = hub.subscribe("T:1")

    async def send(message: dict[str, Any]) -> None:  # a plain function: no transport
        pass

    writer = StreamWriter(send, subscriber)
    assert not writer.drained()  # nothing to look at: never counted as progress
    writer.abort()
    assert writer.aborted and subscriber.ended
    assert caplog.messages == [
        "cannot close a stalled stream: the server does not expose its transport"
    ]
    assert Writers(keepalive=8, write_deadline=2).period == 0.5
    assert Writers(keepalive=1, write_deadline=2).period == 0.25
    hub.release("T:1")


async def test_writers_when_serving_a_stream_then_its_disconnect_listener_is_named() -> None:
    from streaming.hub import Hub
    from streaming.sse import StreamWriter, Writers

    hub = Hub()
    hub.open("T:1")
    subscriber = hub.subscribe("T:1")
    left = asyncio.Event()

    async def receive() -> dict[str, Any]:
        await left.wait()
        return {"type": "http.disconnect"}

    writers = Writers(keepalive=60, write_deadline=10)
    writer = StreamWriter(_Cycle().send, subscriber)
    serving = asyncio.create_task(writers.serve(writer, receive, 10))
    name = "streaming:disconnect-listener"
    await eventually(
        lambda: any(t.get_name() == name and not t.done() for t in asyncio.all_tasks()),
        what=f"a task named {name}",
    )
    left.set()  # the client goes: the listener closes the stream
    await asyncio.wait_for(serving, 5)
    assert subscriber.ended and len(writers) == 0
    hub.release("T:1")


async def test_writer_when_the_loop_itself_stalled_then_the_client_is_not_blamed_for_it() -> None:
    import time

    from streaming.hub import Hub
    from streaming.sse import StreamWriter, Writers

    hub = Hub()
    hub.open("T:1")
    subscriber = hub.subscribe("T:1")
    cycle = _Cycle()
    cycle.unblock.clear()  # one write, pending; its buffer neither grows nor shrinks
    cycle.transport.buffered = 1_000_000
    aborted = asyncio.Event()
    cycle.transport.abort = aborted.set  # type: ignore[method-assign]
    writers = Writers(keepalive=60, write_deadline=0.2)
    writer = StreamWriter(cycle.send, subscriber)

    serving = asyncio.create_task(writers.serve(writer, _silent_client, 10))
    hub.publish("T:1", _event(1))
    await eventually(lambda: writer._buffered is not None, what="a tick to see the pending write")
    ticked = writers._timer
    # The loop itself is held (a task's synchronous code, a starved machine):
    # no writer can move a byte, whatever its client does.
    loop = asyncio.get_running_loop()
    began, held_from = writer.sending_since, loop.time()
    assert began is not None
    time.sleep(3 * writers.write_deadline)  # noqa: ASYNC251 - holding the loop is the point
    resumed = loop.time()
    await eventually(lambda: writers._timer is not ticked, what="the first tick after the stall")
    assert not aborted.is_set(), "a client was cut off for the server's own stall"
    # The write still does not move once the loop runs again: then it is the client's,
    # and the deadline counts the time the loop ran, before the stall and after it
    # (the timer sees a stall only from the tick it was due at: a period's slack).
    await asyncio.wait_for(aborted.wait(), 5)
    ran = (held_from - began) + (loop.time() - resumed)
    assert ran >= writers.write_deadline - writers.period
    cycle.unblock.set()
    await asyncio.wait_for(serving, 5)
    hub.release("T:1")
