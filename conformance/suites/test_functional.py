"""Functional suite (FUNC): running tasks and fanning their events out.

The seed's original twelve topics: task execution and completion, multiple
clients, event streaming, connect and disconnect, coordinator management.
Every case that takes ``client`` runs twice: in-process and over HTTP.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import datetime

import pytest

from conformance import behaviours
from conformance.clients import Client, HttpClient, InProcessClient, format_trace
from conformance.contract import (
    OVERFLOW_EVENT,
    Capability,
    Event,
    Implementation,
    Runtime,
    TaskStatus,
    UnknownTask,
)
from conformance.processes import ServerProcess
from conformance.waiting import eventually, status_is, suspended

pytestmark = pytest.mark.asyncio


@pytest.mark.case("FUNC-1")
async def test_started_task_when_run_then_client_gets_events_in_order_then_complete(
    runtime: Runtime, client: Client
) -> None:
    ref = await runtime.create_task(behaviours.steps, {"steps": 3, "message": "hello"})
    stream = await client.subscribe(ref)
    assert await runtime.start_task(ref)
    events = await stream.until()
    assert [e.type for e in events] == ["start", "progress", "progress", "progress", "complete"], (
        stream.trace()
    )
    assert events[0].data["message"] == "hello"
    assert [e.data["step"] for e in events[1:4]] == [1, 2, 3]


@pytest.mark.case("FUNC-2")
async def test_run_when_task_returns_then_one_complete_event_with_result_and_stream_ends(
    runtime: Runtime, client: Client
) -> None:
    ref = await runtime.create_task(behaviours.steps, {"steps": 1})
    stream = await client.subscribe(ref)
    await runtime.start_task(ref)
    events = await stream.until()
    await stream.expect_end()
    terminal = [e for e in stream.seen if e.is_terminal]
    assert [e.type for e in terminal] == ["complete"], stream.trace()
    assert terminal[0].data["total_steps"] == 1, stream.trace()
    assert events[-1] is terminal[0]


@pytest.mark.case("FUNC-3")
async def test_events_when_streamed_then_ids_count_from_one_with_task_metadata(
    runtime: Runtime, client: Client
) -> None:
    ref = await runtime.create_task(behaviours.steps, {"steps": 3})
    stream = await client.subscribe(ref)
    await runtime.start_task(ref)
    events = await stream.until()
    assert [e.id for e in events] == list(range(1, len(events) + 1)), stream.trace()
    for event in events:
        assert (event.task_id, event.model) == (ref.id, ref.model), event
        stamp = datetime.fromisoformat(event.timestamp)
        assert stamp.utcoffset() is not None, f"timestamp without UTC offset: {event.timestamp}"


@pytest.mark.case("FUNC-4")
async def test_many_clients_when_task_runs_then_all_receive_identical_events(
    runtime: Runtime, client: Client
) -> None:
    ref = await runtime.create_task(behaviours.steps, {"steps": 5})
    streams = [await client.subscribe(ref) for _ in range(5)]
    await runtime.start_task(ref)
    seen = await asyncio.gather(*(s.until() for s in streams))
    reference = [(e.id, e.type, dict(e.data)) for e in seen[0]]
    assert len(reference) == 7, streams[0].trace()
    for stream, events in zip(streams, seen, strict=True):
        assert [(e.id, e.type, dict(e.data)) for e in events] == reference, stream.trace()


@pytest.mark.case("FUNC-5")
async def test_late_client_when_task_running_then_latest_event_first_then_the_rest(
    runtime: Runtime, client: Client
) -> None:
    ref = await runtime.create_task(behaviours.stepper, {"total": 3})
    early = await client.subscribe(ref)
    await runtime.start_task(ref)
    await early.until("start")
    await runtime.write_fields(ref, allow=2)
    await early.next()
    latest = await early.next()
    assert (latest.type, latest.data.get("step")) == ("progress", 2), early.trace()

    late = await client.subscribe(ref)
    first = await late.next(timeout=2)
    assert (first.id, first.type) == (latest.id, latest.type), late.trace()
    await runtime.write_fields(ref, allow=3)
    rest = await late.until()
    everything = await early.until()
    assert [e.id for e in late.seen] == list(range(latest.id, latest.id + 1 + len(rest))), (
        late.trace()
    )
    assert [(e.id, e.type) for e in late.seen] == [(e.id, e.type) for e in early.seen[2:]], (
        f"late client:\n{late.trace()}\nearly client:\n{early.trace()}"
    )
    assert everything[-1].type == "complete"


@pytest.mark.case("FUNC-6")
async def test_all_clients_gone_when_task_runs_then_it_continues_and_returning_client_gets_latest(
    runtime: Runtime, client: Client
) -> None:
    ref = await runtime.create_task(behaviours.stepper, {"total": 3})
    stream = await client.subscribe(ref)
    await runtime.start_task(ref)
    await stream.until("start")
    await stream.aclose()
    await eventually(lambda: runtime.stats().subscribers == 0, what="the client to be unregistered")

    await runtime.write_fields(ref, allow=2)
    await behaviours.reached(runtime, ref, 2)
    back = await client.subscribe(ref)
    first = await back.next(timeout=2)
    assert (first.type, first.data.get("step")) == ("progress", 2), back.trace()
    await runtime.write_fields(ref, allow=3)
    events = await back.until()
    assert [e.type for e in events][-2:] == ["progress", "complete"], back.trace()
    await status_is(runtime, ref, TaskStatus.SUCCESSFUL)


@pytest.mark.case("FUNC-7")
async def test_one_client_leaves_when_task_runs_then_it_is_unregistered_and_others_continue(
    runtime: Runtime, client: Client
) -> None:
    ref = await runtime.create_task(behaviours.stepper, {"total": 3})
    leaving, staying = await client.subscribe(ref), await client.subscribe(ref)
    await runtime.start_task(ref)
    await leaving.until("start")
    await eventually(lambda: runtime.stats().subscribers == 2, what="both clients registered")
    await leaving.aclose()
    await eventually(
        lambda: runtime.stats().subscribers == 1, what="the leaving client to be unregistered"
    )
    await runtime.write_fields(ref, allow=3)
    events = await staying.until()
    assert [e.type for e in events] == ["start", "progress", "progress", "progress", "complete"], (
        staying.trace()
    )


@pytest.mark.case("FUNC-8")
async def test_client_when_task_already_finished_then_gets_terminal_event_and_stream_ends(
    runtime: Runtime, client: Client
) -> None:
    ref = await runtime.create_task(behaviours.steps, {"steps": 2})
    await runtime.start_task(ref)
    await status_is(runtime, ref, TaskStatus.SUCCESSFUL)
    stream = await client.subscribe(ref)
    event = await stream.next(timeout=2)
    assert event.type == "complete", stream.trace()
    assert event.id == 4, stream.trace()
    await stream.expect_end()


@pytest.mark.case("FUNC-9")
async def test_task_when_it_raises_then_one_error_event_and_failed_state(
    runtime: Runtime, client: Client
) -> None:
    ref = await runtime.create_task(behaviours.fail, {"message": "boom at step 1"})
    stream = await client.subscribe(ref)
    await runtime.start_task(ref)
    events = await stream.until()
    await stream.expect_end()
    errors = [e for e in events if e.type == "error"]
    assert len(errors) == 1 and events[-1] is errors[0], stream.trace()
    assert errors[0].data["error_type"] == "ValueError", stream.trace()
    assert "boom at step 1" in errors[0].data["message"], stream.trace()
    state = await status_is(runtime, ref, TaskStatus.FAILED)
    assert "boom at step 1" in state.error


@pytest.mark.case("FUNC-10")
async def test_start_when_task_running_or_finished_then_false_and_not_run_again(
    runtime: Runtime, client: Client
) -> None:
    ref = await runtime.create_task(behaviours.stepper, {"total": 1})
    stream = await client.subscribe(ref)
    assert await runtime.start_task(ref) is True
    await stream.until("start")
    assert await runtime.start_task(ref) is False
    await runtime.write_fields(ref, allow=1)
    await stream.until()
    await status_is(runtime, ref, TaskStatus.SUCCESSFUL)
    assert await runtime.start_task(ref) is False
    assert [e.type for e in stream.seen] == ["start", "progress", "complete"], stream.trace()

    missing = type(ref)(ref.model, "987654321")
    with pytest.raises(UnknownTask):
        await runtime.start_task(missing)
    with pytest.raises(UnknownTask):
        await runtime.subscribe(missing)


@pytest.mark.case("FUNC-11")
async def test_run_when_ended_and_clients_left_then_nothing_is_held(
    runtime: Runtime, client: Client
) -> None:
    refs = [await runtime.create_task(behaviours.steps, {"steps": 2}) for _ in range(3)]
    streams = [await client.subscribe(ref) for ref in refs]
    for ref in refs:
        await runtime.start_task(ref)
    for stream in streams:
        await stream.until()
        await stream.aclose()
    await eventually(
        lambda: runtime.stats() == type(runtime.stats())(0, 0, 0),
        what="no running task, subscriber or topic",
    )


@pytest.mark.case("FUNC-12")
async def test_running_task_when_fields_change_outside_then_it_sees_the_change(
    runtime: Runtime, client: Client
) -> None:
    ref = await runtime.create_task(behaviours.wait_for_flag, {"go": False})
    stream = await client.subscribe(ref)
    await runtime.start_task(ref)
    started = await stream.next()
    assert (started.type, started.data["go"]) == ("started", False), stream.trace()
    await runtime.write_fields(ref, go=True)
    events = await stream.until()
    assert [e.type for e in events] == ["final", "complete"], stream.trace()


@pytest.mark.case("FUNC-13")
async def test_events_when_no_client_subscribed_then_later_client_gets_latest_first(
    runtime: Runtime, client: Client
) -> None:
    ref = await runtime.create_task(behaviours.stepper, {"total": 3})
    await runtime.start_task(ref)
    await runtime.write_fields(ref, allow=1)
    await behaviours.reached(runtime, ref, 1)
    stream = await client.subscribe(ref)
    first = await stream.next(timeout=2)
    assert (first.id, first.type, first.data.get("step")) == (2, "progress", 1), stream.trace()
    await runtime.write_fields(ref, allow=3)
    events = await stream.until()
    assert [e.id for e in events] == [3, 4, 5], stream.trace()


@pytest.mark.case("FUNC-14")
async def test_task_when_it_sends_a_terminal_type_then_refused_and_one_terminal_event(
    runtime: Runtime, client: Client
) -> None:
    ref = await runtime.create_task(behaviours.send_terminal)
    stream = await client.subscribe(ref)
    await runtime.start_task(ref)
    events = await stream.until()
    assert [e.type for e in events] == ["refused", "complete"], stream.trace()
    assert "forged" not in events[-1].data, stream.trace()


@pytest.mark.case("FUNC-15")
async def test_persisted_state_when_task_runs_then_running_then_final_with_times(
    runtime: Runtime, client: Client
) -> None:
    ref = await runtime.create_task(behaviours.stepper, {"total": 1})
    assert (await runtime.get_state(ref)).status is TaskStatus.READY
    stream = await client.subscribe(ref)
    await runtime.start_task(ref)
    await stream.until("start")
    running = await runtime.get_state(ref)
    assert running.status is TaskStatus.RUNNING and running.started_at, running
    assert running.completed_at is None, running
    await runtime.write_fields(ref, allow=1)
    await stream.until()
    done = await status_is(runtime, ref, TaskStatus.SUCCESSFUL)
    assert done.completed_at is not None and done.started_at is not None, done
    assert datetime.fromisoformat(done.completed_at) >= datetime.fromisoformat(done.started_at)


@pytest.mark.case("FUNC-16")
async def test_two_tasks_when_one_waits_then_the_other_still_streams_and_completes(
    runtime: Runtime, client: Client
) -> None:
    waiting = await runtime.create_task(behaviours.wait_for_flag, {"go": False})
    quick = await runtime.create_task(behaviours.steps, {"steps": 3})
    waiting_stream = await client.subscribe(waiting)
    quick_stream = await client.subscribe(quick)
    await runtime.start_task(waiting)
    await waiting_stream.until("started")
    await runtime.start_task(quick)
    events = await quick_stream.until()
    assert events[-1].type == "complete", quick_stream.trace()
    assert (await runtime.get_state(waiting)).status is TaskStatus.RUNNING
    await runtime.write_fields(waiting, go=True)
    assert (await waiting_stream.until())[-1].type == "complete", waiting_stream.trace()


@pytest.mark.case("FUNC-17")
async def test_subscription_when_closed_while_a_read_is_pending_then_the_read_ends(
    runtime: Runtime,
) -> None:
    ref = await runtime.create_task(behaviours.stepper, {"total": 1})
    subscription = await runtime.subscribe(ref)
    events = aiter(subscription)

    async def read() -> Event:
        return await anext(events)

    pending = asyncio.create_task(read(), name="conformance:pending-read")
    await eventually(
        lambda: suspended(pending),
        what="the read to wait for an event",
    )
    await subscription.aclose()
    try:
        async with asyncio.timeout(2):
            await pending
    except StopAsyncIteration:
        pass
    except TimeoutError:
        pytest.fail("aclose() did not end the read that was waiting: it still waits 2s later")
    else:
        pytest.fail("the pending read returned an event after aclose(); it must end instead")
    await eventually(lambda: runtime.stats().subscribers == 0, what="the client to be gone")


@pytest.mark.case("FUNC-18")
async def test_client_when_it_falls_too_far_behind_then_overflow_ends_it_and_others_carry_on(
    runtime: Runtime, impl: Implementation
) -> None:
    count = 2 * impl.client_queue_size + 10
    ref = await runtime.create_task(behaviours.burst, {"count": count})
    behind = await runtime.subscribe(ref)  # never read until the task is done
    reader = await InProcessClient(runtime).subscribe(ref)
    await runtime.start_task(ref)
    events = await reader.until(timeout=30)
    assert [e.id for e in events] == list(range(1, count + 2)), reader.trace()[-2000:]
    await status_is(runtime, ref, TaskStatus.SUCCESSFUL)
    await eventually(
        lambda: runtime.stats().subscribers == 0,
        what="the client that fell behind to be dropped",
    )
    late: list[Event] = []
    async with asyncio.timeout(5):
        async for event in behind:
            late.append(event)
    trace = format_trace(late)
    assert late and late[-1].type == OVERFLOW_EVENT, (
        f"a client {count} events behind (the queue holds {impl.client_queue_size}) must "
        f"end with {OVERFLOW_EVENT!r}; it read {len(late)} events:\n{trace[-1500:]}"
    )
    kept = late[:-1]
    assert len(kept) <= impl.client_queue_size, f"{len(kept)} events queued for one client"
    assert [e.id for e in kept] == list(range(1, len(kept) + 1)), trace
    assert late[-1].data.get("last_event_id") in (kept[-1].id if kept else None, 0), trace


@pytest.mark.case("FUNC-8")
@pytest.mark.requires(Capability.PROCESS, Capability.HTTP, Capability.PERSISTENCE)
async def test_client_when_task_finished_in_another_process_then_gets_terminal_event_and_ends(
    runtime: Runtime, client: Client, spawn_server: Callable[..., Awaitable[ServerProcess]]
) -> None:
    server = await spawn_server()
    ref = await runtime.create_task(behaviours.steps, {"steps": 2})
    await server.start_task(ref)
    await status_is(runtime, ref, TaskStatus.SUCCESSFUL)
    stream = await client.subscribe(ref)
    # At once: the ending is stored, so nothing need be waited for.
    event = await stream.next(timeout=0.5)
    assert (event.type, event.id) == ("complete", 4), stream.trace()
    await stream.expect_end()


@pytest.mark.case("FUNC-15")
@pytest.mark.requires(Capability.PROCESS, Capability.HTTP, Capability.PERSISTENCE)
async def test_terminal_event_when_it_reaches_a_client_then_the_status_is_readable_elsewhere(
    runtime: Runtime, spawn_server: Callable[..., Awaitable[ServerProcess]]
) -> None:
    server = await spawn_server()
    ref = await runtime.create_task(behaviours.stepper, {"total": 1})
    async with HttpClient(server.url) as sse:
        stream = await sse.subscribe(ref)
        await server.start_task(ref)
        await stream.until("start")
        await runtime.write_fields(ref, allow=1)
        assert (await stream.until())[-1].type == "complete", stream.trace()
        # At once, in another process: the outcome was stored before it was sent.
        state = await runtime.get_state(ref)
    assert state.status is TaskStatus.SUCCESSFUL and state.completed_at, state


@pytest.mark.case("FUNC-19")
async def test_task_when_it_sends_a_type_outside_the_charset_then_refused_and_nothing_sent(
    runtime: Runtime, client: Client
) -> None:
    ref = await runtime.create_task(behaviours.send_hostile_types)
    stream = await client.subscribe(ref)
    await runtime.start_task(ref)
    events = await stream.until()
    expected = [*behaviours.EDGE_EVENT_TYPES, "report", "complete"]
    assert [e.type for e in events] == expected, stream.trace()
    accepted = events[-2].data["accepted"]
    assert accepted == [], f"sent with a type SPEC refuses: {accepted!r}\n{stream.trace()}"
    assert [e.id for e in events] == list(range(1, len(events) + 1)), (
        f"a refused send used an id, or a forged frame set one:\n{stream.trace()}"
    )


@pytest.mark.case("FUNC-20")
async def test_task_when_it_sends_nan_or_infinity_then_refused_and_nothing_sent(
    runtime: Runtime, client: Client
) -> None:
    ref = await runtime.create_task(behaviours.send_non_json)
    stream = await client.subscribe(ref)
    await runtime.start_task(ref)
    events = await stream.until()
    assert [e.type for e in events] == ["report", "complete"], stream.trace()
    assert events[0].data["accepted"] == 0, (
        f"{events[0].data['accepted']} of {len(behaviours.NOT_STRICT_JSON)} sends of NaN or "
        f"infinity went through:\n{stream.trace()}"
    )
    assert [e.id for e in events] == [1, 2], f"a refused send used an id:\n{stream.trace()}"


@pytest.mark.case("FUNC-20")
async def test_task_when_it_returns_nan_then_the_run_fails_with_one_error_event(
    runtime: Runtime, client: Client
) -> None:
    ref = await runtime.create_task(behaviours.send_non_json, {"return_nan": True})
    stream = await client.subscribe(ref)
    await runtime.start_task(ref)
    events = await stream.until()
    assert [e.type for e in events] == ["report", "error"], stream.trace()
    await stream.expect_end()
    await status_is(runtime, ref, TaskStatus.FAILED)
