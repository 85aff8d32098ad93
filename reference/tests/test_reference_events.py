"""What the reference's events carry and how it keeps them, white-box.

The data of the events it makes itself (cancelled, interrupted, shutdown,
stream-reset, overflow), the JSON framing of a task's data, the byte
accounting of the hub's history, the configured hub and history size, resume
from the database's event log, and the SSE writer's keep-alive and timer.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from conformance.waiting import eventually

pytestmark = [pytest.mark.timeout(30)]

TIMESTAMP = "2026-01-01T00:00:00+00:00"


def _event(number: int, type: str = "tick", size: int = 0, model: str = "T") -> Any:
    from streaming.events import Event

    return Event(number, type, {"n": number, "pad": "x" * size}, 1, model, TIMESTAMP)


async def _drain(subscriber: Any, timeout: float = 5.0) -> list[Any]:
    events = []
    async with asyncio.timeout(timeout):
        async for message in subscriber:
            events.append(message.event)
    return events


def _sse_data(frame: bytes) -> dict[str, Any]:
    (line,) = [line for line in frame.decode().splitlines() if line.startswith("data: ")]
    return dict(json.loads(line.removeprefix("data: ")))


# -- states ----------------------------------------------------------------------------


def test_transition_when_target_reached_from_nowhere_then_error_says_nowhere() -> None:
    from streaming.states import InvalidTransition, TaskStatus, check_transition

    with pytest.raises(InvalidTransition) as caught:
        check_transition(TaskStatus.RUNNING, TaskStatus.READY)
    assert str(caught.value) == (
        "Cannot move a task from RUNNING to READY: READY is reached only from nowhere."
    )


# -- framing ---------------------------------------------------------------------------


def test_message_when_data_holds_datetime_and_decimal_then_sent_as_their_str() -> None:
    from streaming.events import Event
    from streaming.hub import Hub

    hub = Hub()
    hub.open("ExampleTask:3")
    data = {"at": datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC), "price": Decimal("9.90")}
    event = Event(1, "progress", data, 3, "ExampleTask", TIMESTAMP)
    message = hub.publish("ExampleTask:3", event)
    assert message.json == '{"at": "2026-01-02 03:04:05+00:00", "price": "9.90"}'
    assert _sse_data(message.sse) == {
        "at": "2026-01-02 03:04:05+00:00",
        "price": "9.90",
        "_task_id": 3,
        "_model": "ExampleTask",
        "_timestamp": TIMESTAMP,
    }
    hub.release("ExampleTask:3")


def test_frame_when_data_has_metadata_keys_then_the_metadata_wins() -> None:
    from streaming.events import Event
    from streaming.hub import Message

    data = {"_model": "Forged", "_task_id": 99, "step": 1}
    message = Message(Event(7, "progress", data, 3, "ExampleTask", TIMESTAMP))
    assert message.sse.startswith(b"event: progress\ndata: ")
    assert message.sse.endswith(b"\nid: 7\n\n")
    assert _sse_data(message.sse) == {
        "step": 1,
        "_task_id": 3,
        "_model": "ExampleTask",
        "_timestamp": TIMESTAMP,
    }


# -- the hub's history -----------------------------------------------------------------


def test_history_when_count_limit_reached_then_bytes_are_those_of_the_messages_kept() -> None:
    from streaming.hub import History, Message

    history = History(max_events=2, max_bytes=1_000_000)
    for number, size in enumerate((5, 50, 200, 10, 120), start=1):
        history.append(Message(_event(number, size=size)))
        assert history.bytes == sum(m.size for m in history.messages)
    assert [m.event.id for m in history.messages] == [4, 5]


def test_hub_when_one_event_exceeds_history_bytes_then_late_joiner_still_gets_it() -> None:
    from streaming.hub import Hub

    hub = Hub(history_bytes=50)
    hub.open("T:1")
    hub.publish("T:1", _event(1))
    hub.publish("T:1", _event(2, size=500))
    late = hub.subscribe("T:1")
    assert [m.event.id for m in late.take()] == [2]
    assert hub.kept_since("T:1") == 2
    late.close()
    hub.release("T:1")


def test_hub_when_closed_budget_below_one_task_then_its_final_event_is_kept() -> None:
    from streaming.hub import Hub

    hub = Hub(closed_history_bytes=100)
    hub.open("T:1")
    for number in range(1, 4):
        hub.publish("T:1", _event(number, size=60))
    hub.publish("T:1", _event(4, "complete"), final=True)
    late = hub.subscribe("T:1")
    assert [(m.event.type, m.event.id) for m in late.take()] == [("complete", 4)]
    assert late.ended
    assert hub.stats() == {"topics": 0, "subscribers": 0}


# -- subscribers -----------------------------------------------------------------------


def test_subscriber_when_fresh_then_it_has_neither_ended_nor_closed() -> None:
    from streaming.hub import Hub

    hub = Hub()
    hub.open("T:1")
    subscriber = hub.subscribe("T:1")
    assert subscriber.ended is False
    assert subscriber.closed is False
    subscriber.close()
    assert subscriber.ended is True
    hub.release("T:1")


@pytest.mark.asyncio
async def test_resume_when_events_no_longer_kept_then_reset_names_ids_and_stream_goes_on() -> None:
    from streaming.hub import Hub

    hub = Hub(history_size=2)
    hub.open("T:1")
    for number in range(1, 6):
        hub.publish("T:1", _event(number))
    resumed = hub.subscribe("T:1", after=1)
    reset = await resumed.get()
    assert (reset.event.type, reset.event.id) == ("stream-reset", 1)
    assert dict(reset.event.data) == {
        "reason": "events after the requested id are no longer available",
        "last_event_id": 1,
        "oldest_available_id": 4,
    }
    assert [(await resumed.get()).event.id for _ in range(2)] == [4, 5]
    hub.publish("T:1", _event(6))
    hub.publish("T:1", _event(7, "complete"), final=True)
    assert [e.id for e in await _drain(resumed)] == [6, 7]


@pytest.mark.asyncio
async def test_overflow_when_client_already_read_some_then_notice_id_is_its_last_event() -> None:
    from streaming.hub import Hub

    hub = Hub(queue_size=3)
    hub.open("T:1")
    slow = hub.subscribe("T:1")
    for number in (1, 2):
        hub.publish("T:1", _event(number))
    assert [(await slow.get()).event.id for _ in range(2)] == [1, 2]
    for number in range(3, 7):
        hub.publish("T:1", _event(number))
    notice = await slow.get()
    assert (notice.event.type, notice.event.id) == ("overflow", 2)
    assert notice.event.data["last_event_id"] == 2
    assert slow.closed
    hub.release("T:1")


# -- the bus the configuration makes ---------------------------------------------------


@pytest.mark.asyncio
async def test_bus_when_client_queue_size_configured_then_a_client_overflows_past_it() -> None:
    from streaming.config import Config
    from streaming.coordinator import make_bus

    bus = make_bus(Config(client_queue_size=3))
    bus.open("T:1")
    subscriber = await bus.subscribe("T:1")
    for number in range(1, 6):
        await bus.publish("T:1", _event(number))
    assert [m.event.type for m in subscriber.take()] == ["overflow"]
    assert subscriber.overflowed
    bus.release("T:1")


@pytest.mark.asyncio
async def test_bus_when_history_size_configured_then_older_events_are_reset_on_resume() -> None:
    from streaming.config import Config
    from streaming.coordinator import make_bus

    bus = make_bus(Config(history_size=2))
    bus.open("T:1")
    for number in range(1, 6):
        await bus.publish("T:1", _event(number))
    resumed = await bus.subscribe("T:1", after=1)
    assert [(m.event.type, m.event.id) for m in resumed.take()] == [
        ("stream-reset", 1),
        ("tick", 4),
        ("tick", 5),
    ]
    assert bus.kept_since("T:1") == 4
    resumed.close()
    bus.release("T:1")


# -- the event log ---------------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_event_log_when_event_exactly_max_bytes_then_it_is_stored() -> None:
    from streaming.eventlog import EventLog
    from streaming.hub import Message

    exact, over = Message(_event(1, model="LogEdge")), Message(_event(2, size=1, model="LogEdge"))
    log = EventLog(keep=10, max_event_bytes=exact.size)
    log.start()
    try:
        log.append(exact)
        log.append(over)
        await log.close(timeout=5)
    finally:
        await log.close(timeout=0)
    stored = await log.read("LogEdge", 1, after=0, before=None)
    assert [m.event.id for m in stored] == [1]


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_event_log_when_read_right_after_append_then_settled_waits_for_the_writer() -> None:
    from streaming.eventlog import EventLog
    from streaming.hub import Message

    log = EventLog(keep=10, max_event_bytes=1000)
    log.start()
    try:
        for number in range(1, 4):
            log.append(Message(_event(number, model="LogSettle")))
        await log.settled(timeout=5)
        stored = await log.read("LogSettle", 1, after=0, before=None)
    finally:
        await log.close(timeout=5)
    assert [m.event.id for m in stored] == [1, 2, 3]


@pytest.mark.asyncio
async def test_event_log_when_its_writer_is_not_running_then_settled_does_not_wait() -> None:
    from streaming.eventlog import EventLog
    from streaming.hub import Message

    log = EventLog(keep=10, max_event_bytes=1000)  # never started: nothing will write
    log.append(Message(_event(1, model="LogIdle")))
    assert log._pending and not log._idle.is_set()
    # Returns at once, not after the 60 s it would allow a running writer.
    await asyncio.wait_for(log.settled(timeout=60), 5)


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_event_log_when_disabled_then_it_keeps_nothing_and_reads_nothing() -> None:
    from streaming.eventlog import EventLog
    from streaming.hub import Message

    on = EventLog(keep=10, max_event_bytes=1000)
    on.start()
    try:
        on.append(Message(_event(1, model="LogOff")))
        await on.settled(timeout=5)
    finally:
        await on.close(timeout=5)
    off = EventLog(keep=10, max_event_bytes=1000, enabled=False)
    off.start()
    assert off._writer is None
    off.append(Message(_event(2, model="LogOff")))
    assert not off._pending
    await off.settled(timeout=5)  # no writer: nothing to wait for
    await off.close(timeout=5)
    assert await off.read("LogOff", 1, after=0, before=None) == []
    assert [m.event.id for m in await on.read("LogOff", 1, after=0, before=None)] == [1]


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_event_log_when_read_between_ids_then_only_those_oldest_first_as_sent() -> None:
    from streaming.eventlog import EventLog
    from streaming.hub import Message

    log = EventLog(keep=10, max_event_bytes=1000)
    log.start()
    try:
        for number in (3, 1, 2, 5, 4):
            log.append(Message(_event(number, model="LogRange")))
        log.append(Message(_event(1, model="LogOther")))
        await log.settled(timeout=5)
    finally:
        await log.close(timeout=5)
    between = await log.read("LogRange", 1, after=1, before=5)
    assert [m.event.id for m in between] == [2, 3, 4]
    assert [(m.event.model, m.event.task_id, m.event.type) for m in between] == [
        ("LogRange", 1, "tick")
    ] * 3
    assert between[0].event.data == {"n": 2, "pad": ""}
    assert between[0].json == json.dumps({"n": 2, "pad": ""})
    assert [m.event.id for m in await log.read("LogRange", 1, after=3, before=None)] == [4, 5]
    assert await log.read("LogRange", 2, after=0, before=None) == []


# -- the coordinator's own events ------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_cancel_when_ready_without_reason_then_default_reason_message_and_timestamp(
    coordinator,
) -> None:
    from streaming.models import BehaviourTask
    from streaming.states import TaskStatus

    task = await BehaviourTask.objects.acreate(behaviour="conformance.behaviours:park")
    subscriber = await coordinator.subscribe(BehaviourTask, task.pk)
    assert await coordinator.cancel_task(BehaviourTask, task.pk)
    (event,) = await _drain(subscriber)
    assert event.type == "cancelled"
    assert dict(event.data) == {"message": "Task was cancelled", "reason": "cancelled by request"}
    assert isinstance(event.timestamp, str)
    assert datetime.fromisoformat(event.timestamp).tzinfo is not None
    row = await BehaviourTask.objects.aget(pk=task.pk)
    assert (row.status, row.error) == (TaskStatus.CANCELLED, "cancelled: cancelled by request")
    assert json.loads(row.final_event)["timestamp"] == event.timestamp


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_shutdown_when_task_running_then_farewell_names_model_and_row_says_interrupted(
    coordinator,
) -> None:
    from streaming.models import BehaviourTask
    from streaming.states import TaskStatus

    task = await BehaviourTask.objects.acreate(behaviour="conformance.behaviours:park")
    subscriber = await coordinator.subscribe(BehaviourTask, task.pk)
    assert await coordinator.start_task(BehaviourTask, task.pk)
    await coordinator.shutdown(0.0)
    start, farewell = await _drain(subscriber)
    assert (start.type, farewell.type, farewell.id) == ("start", "shutdown", start.id)
    assert (farewell.model, str(farewell.task_id)) == ("BehaviourTask", str(task.pk))
    row = await BehaviourTask.objects.aget(pk=task.pk)
    assert row.status == TaskStatus.INTERRUPTED
    assert json.loads(row.final_event)["data"] == {
        "message": "Task was interrupted; it may be run again",
        "reason": "stopped by the server's shutdown",
    }


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_farewell_when_encoded_then_frame_carries_model_and_retry() -> None:
    from streaming.coordinator import Coordinator
    from streaming.hub import Message
    from streaming.models import ExampleTask

    coordinator = Coordinator(retry_ms=1234)
    try:
        row = await ExampleTask.objects.acreate()
        subscriber = await coordinator.subscribe(ExampleTask, row.pk)
    finally:
        await coordinator.shutdown(0.0)
    (farewell,) = await _drain(subscriber)
    frame = Message(farewell, final=True).sse
    assert _sse_data(frame)["_model"] == "ExampleTask"
    assert _sse_data(frame)["_task_id"] == str(row.pk)
    assert frame.endswith(b"id: 0\nretry: 1234\n\n")


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_subscribe_when_task_ended_before_coordinator_started_then_stored_end_and_close(
    coordinator,
) -> None:
    from streaming.events import Event
    from streaming.models import BehaviourTask
    from streaming.states import TaskStatus

    task = await BehaviourTask.objects.acreate(behaviour="conformance.behaviours:steps")
    done = {"message": "done elsewhere"}
    ending = Event(5, "complete", done, task.pk, "BehaviourTask", TIMESTAMP)
    await BehaviourTask.objects.filter(pk=task.pk).aupdate(
        status=TaskStatus.SUCCESSFUL, final_event=ending.to_json(), event_id_ceiling=5
    )
    subscriber = await coordinator.subscribe(BehaviourTask, task.pk)
    events = await _drain(subscriber, timeout=2.0)
    assert [(e.type, e.id, dict(e.data)) for e in events] == [("complete", 5, done)]
    assert subscriber.ended


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_resume_when_hub_kept_only_the_end_then_missed_events_come_from_the_event_log() -> (
    None
):
    from streaming.coordinator import Coordinator
    from streaming.models import BehaviourTask

    # One byte of history per task: the hub keeps only each task's latest event.
    coordinator = Coordinator(history_bytes=1, cancel_grace=1.0)
    try:
        task = await BehaviourTask.objects.acreate(
            behaviour="conformance.behaviours:steps", fields={"steps": 3}
        )
        live = await coordinator.subscribe(BehaviourTask, task.pk)
        assert await coordinator.start_task(BehaviourTask, task.pk)
        seen = await _drain(live)
        assert [e.type for e in seen] == ["start", "progress", "progress", "progress", "complete"]
        first = seen[0].id
        assert coordinator.bus.kept_since(f"BehaviourTask:{task.pk}") == seen[-1].id
        resumed = await coordinator.subscribe(BehaviourTask, task.pk, last_event_id=first)
        again = await _drain(resumed)
        assert [(e.type, e.id) for e in again] == [(e.type, e.id) for e in seen[1:]]
        assert [dict(e.data) for e in again[:3]] == [
            {"step": step, "total_steps": 3} for step in (1, 2, 3)
        ]
    finally:
        await coordinator.shutdown(1.0)


# -- the SSE writer --------------------------------------------------------------------


async def _never_disconnects() -> dict[str, Any]:
    await asyncio.Event().wait()  # the client never leaves on its own
    return {"type": "http.disconnect"}


@pytest.mark.asyncio
async def test_writer_when_idle_past_keepalive_then_comment_sent_and_stream_stays_open() -> None:
    from streaming.hub import Hub
    from streaming.sse import KEEPALIVE, StreamWriter, Writers

    hub = Hub()
    hub.open("T:1")
    subscriber = hub.subscribe("T:1")
    sent: list[dict[str, Any]] = []
    kept_alive = asyncio.Event()

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
        if message.get("body") == KEEPALIVE:
            kept_alive.set()

    writers = Writers(keepalive=0.05, write_deadline=5.0)
    serving = asyncio.create_task(
        writers.serve(StreamWriter(send, subscriber), _never_disconnects, 10)
    )
    async with asyncio.timeout(5):
        await kept_alive.wait()
    hub.publish("T:1", _event(1, "complete"), final=True)
    await asyncio.wait_for(serving, 5)
    bodies = [m for m in sent if m["type"] == "http.response.body"]
    assert any(m["body"] == KEEPALIVE for m in bodies)
    assert [m["more_body"] for m in bodies[:-1]] == [True] * (len(bodies) - 1)
    assert bodies[-1]["more_body"] is False and b"event: complete" in bodies[-1]["body"]


@pytest.mark.asyncio
async def test_writers_when_last_stream_ended_then_their_timer_stops() -> None:
    from streaming.hub import Hub
    from streaming.sse import StreamWriter, Writers

    hub = Hub()
    hub.open("T:1")
    subscriber = hub.subscribe("T:1")
    hub.publish("T:1", _event(1, "complete"), final=True)
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    writers = Writers(keepalive=0.04, write_deadline=0.04)
    await asyncio.wait_for(writers.serve(StreamWriter(send, subscriber), _never_disconnects, 10), 5)
    assert len(writers) == 0 and sent[-1]["more_body"] is False
    await eventually(lambda: writers._timer is None, timeout=1.0, what="the timer to stop")


# -- the event log, the hub's bookkeeping, outcomes: pinned by mutation samples ----------------


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_event_log_when_events_read_back_then_each_keeps_its_timestamp() -> None:
    from streaming.eventlog import EventLog
    from streaming.events import Event
    from streaming.hub import Message

    stamps = ["2026-01-01T00:00:01+00:00", "2026-01-02T00:00:02+00:00"]
    log = EventLog(keep=10, max_event_bytes=1000)
    log.start()
    try:
        for number, stamp in enumerate(stamps, 1):
            log.append(Message(Event(number, "tick", {"n": number}, 1, "LogStamp", stamp)))
        await log.settled(timeout=5)
        stored = await log.read("LogStamp", 1, after=0, before=None)
    finally:
        await log.close(timeout=5)
    assert [m.event.timestamp for m in stored] == stamps


@pytest.mark.django_db(transaction=True)
def test_event_log_when_a_batch_is_written_twice_then_no_error_and_stored_once() -> None:
    # A batch written again (its first commit's answer lost with the
    # connection) must not fail on the rows the first write stored.
    from streaming.eventlog import _write
    from streaming.hub import Message
    from streaming.models import StreamEvent

    batch = [Message(_event(number, model="LogTwice")) for number in (1, 2)]
    _write(batch, keep=10)
    _write(batch, keep=10)
    stored = StreamEvent.objects.filter(model="LogTwice").order_by("event_id")
    assert list(stored.values_list("event_id", flat=True)) == [1, 2]


@pytest.mark.django_db
def test_event_log_when_one_task_is_trimmed_then_other_tasks_of_its_kind_keep_theirs() -> None:
    from streaming.eventlog import _write
    from streaming.events import Event
    from streaming.hub import Message
    from streaming.models import StreamEvent

    _write([Message(_event(number, model="LogTrim")) for number in (1, 2, 3)], keep=10)
    busy = [Message(Event(n, "tick", {}, 2, "LogTrim", TIMESTAMP)) for n in range(1, 21)]
    _write(busy, keep=10)
    stored = StreamEvent.objects.filter(model="LogTrim").order_by("event_id")
    assert list(stored.filter(task_id=1).values_list("event_id", flat=True)) == [1, 2, 3]
    assert list(stored.filter(task_id=2).values_list("event_id", flat=True)) == list(range(11, 21))


def test_control_event_when_made_for_a_key_then_it_names_model_and_task() -> None:
    from streaming.hub import control_event

    before = datetime.now(UTC)
    event = control_event("BehaviourTask:17", "overflow", 5, {"reason": "slow"})
    assert (event.model, event.task_id, event.id, event.type) == (
        "BehaviourTask",
        "17",
        5,
        "overflow",
    )
    assert event.data == {"reason": "slow"} and event.retry is None
    assert before <= datetime.fromisoformat(event.timestamp) <= datetime.now(UTC)


@pytest.mark.asyncio
async def test_hub_when_farewell_said_to_a_running_task_then_its_topic_goes_with_its_clients() -> (
    None
):
    from streaming.hub import Hub

    hub = Hub()
    hub.open("T:1")
    subscriber = hub.subscribe("T:1")
    hub.publish("T:1", _event(1))
    assert hub.say_farewell(lambda key, last: _event(last + 1, "shutdown")) == 1
    assert [e.type for e in await _drain(subscriber)] == ["tick", "shutdown"]
    subscriber.close()
    assert hub.active_keys() == set() and hub.stats()["topics"] == 0


def test_bus_when_described_then_it_names_its_kind_beside_its_counts() -> None:
    from streaming.bus import InMemoryBus

    description = InMemoryBus().describe()
    assert description["bus"] == "InMemoryBus" and "topics" in description


def test_error_outcome_when_groups_are_nested_then_every_leaf_is_listed() -> None:
    from streaming.outcomes import failed

    inner = ExceptionGroup("inner", [KeyError("k"), OSError("disk")])
    outcome = failed(ExceptionGroup("outer", [ValueError("v"), inner]))
    assert outcome.data["errors"] == [
        {"error_type": "ValueError", "message": "v"},
        {"error_type": "KeyError", "message": "'k'"},
        {"error_type": "OSError", "message": "disk"},
    ]


def test_hub_when_closed_tasks_evicted_then_bytes_counted_are_those_of_the_tasks_kept() -> None:
    from streaming.hub import Hub

    hub = Hub(remember_closed=2)
    for task in range(1, 5):
        key = f"T:{task}"
        hub.open(key)
        hub.publish(key, _event(1, size=100 * task))
        hub.publish(key, _event(2, "complete"), final=True)
    kept = [m for messages in hub._closed.values() for m in messages]
    assert list(hub._closed) == ["T:3", "T:4"]
    assert hub._closed_bytes == sum(m.size for m in kept)


def test_event_log_when_its_buffer_is_full_then_each_event_over_is_counted_dropped() -> None:
    from streaming.eventlog import EventLog
    from streaming.hub import Message

    log = EventLog(keep=10, max_event_bytes=1000, buffer_limit=3)  # no writer: all pend
    for number in range(1, 6):
        log.append(Message(_event(number, model="LogFull")))
    assert log.dropped == 2


def test_timeout_outcome_when_made_then_its_event_says_the_limit_and_why() -> None:
    from streaming.outcomes import timed_out

    outcome = timed_out(1.5)
    assert outcome.data == {"message": "Task exceeded its timeout of 1.5s", "timeout": 1.5}


def test_outcomes_when_made_then_each_ending_has_its_status_event_data_and_error() -> None:
    from streaming import outcomes
    from streaming.states import TaskStatus

    def whole(outcome: Any) -> tuple[Any, ...]:
        return (outcome.status, outcome.event_type, dict(outcome.data), outcome.error)

    assert whole(outcomes.completed({"rows": 3})) == (
        TaskStatus.SUCCESSFUL,
        "complete",
        {"message": "Task completed successfully", "rows": 3},
        "",
    )
    assert whole(outcomes.completed("not a mapping")) == (
        TaskStatus.SUCCESSFUL,
        "complete",
        {"message": "Task completed successfully"},
        "",
    )
    assert whole(outcomes.cancelled("by the user")) == (
        TaskStatus.CANCELLED,
        "cancelled",
        {"message": "Task was cancelled", "reason": "by the user"},
        "cancelled: by the user",
    )
    assert whole(outcomes.interrupted("shutdown")) == (
        TaskStatus.INTERRUPTED,
        "interrupted",
        {"message": "Task was interrupted; it may be run again", "reason": "shutdown"},
        "interrupted: shutdown",
    )
    assert whole(outcomes.failed(KeyError("k"))) == (
        TaskStatus.FAILED,
        "error",
        {"error_type": "KeyError", "message": "'k'"},
        "KeyError: 'k'",
    )
    noted = outcomes.cancelled("r").noting(" (late)", forced=True)
    assert whole(noted) == (
        TaskStatus.CANCELLED,
        "cancelled",
        {"message": "Task was cancelled", "reason": "r", "forced": True},
        "cancelled: r (late)",
    )
    assert whole(outcomes.timed_out(2)) == (
        TaskStatus.TIMED_OUT,
        "timeout",
        {"message": "Task exceeded its timeout of 2s", "timeout": 2},
        "timed out after 2s",
    )
