"""Cancellation suite (CANCEL): stopping a task, and everyone hearing of it.

The seed's system had no ``cancel_task()``, swallowed nothing and told no
one: a cancelled fetch task left its clients waiting forever. These cases
park tasks on a future only cancellation can end, so what they observe is
the cancel, never a race with the task's own progress.
"""

from __future__ import annotations

import asyncio

import pytest

from conformance import behaviours
from conformance.checks import told
from conformance.clients import Client, HttpClient, http_client
from conformance.contract import Capability, Implementation, Runtime, TaskRef, TaskStatus
from conformance.servers import Spawn
from conformance.waiting import MARGIN, eventually, nothing_running, status_is
from conformance.wire import HangingUpstream

pytestmark = [pytest.mark.asyncio, pytest.mark.requires(Capability.CANCEL)]


@pytest.mark.case("CANCEL-1")
async def test_running_task_when_cancelled_then_every_client_gets_one_cancelled_event_with_reason(
    runtime: Runtime, client: Client
) -> None:
    ref = await runtime.create_task(behaviours.park)
    streams = [await client.subscribe(ref) for _ in range(3)]
    await runtime.start_task(ref)
    for stream in streams:
        await stream.until("start")
    assert await runtime.cancel_task(ref, reason="user asked") is True
    for stream in streams:
        events = await stream.until()
        await stream.expect_end()
        assert [e.type for e in stream.seen] == ["start", "cancelled"], stream.trace()
        assert events[-1].data.get("reason") == "user asked", stream.trace()
        assert told(events[-1]), f"SPEC's table: 'cancelled' carries a message\n{stream.trace()}"


@pytest.mark.case("CANCEL-2")
@pytest.mark.requires(Capability.PERSISTENCE)
async def test_cancelled_task_when_state_read_then_cancelled_with_time_and_reason(
    runtime: Runtime, client: Client
) -> None:
    ref = await runtime.create_task(behaviours.park)
    stream = await client.subscribe(ref)
    await runtime.start_task(ref)
    await stream.until("start")
    await runtime.cancel_task(ref, reason="quota exceeded")
    await stream.until()
    state = await status_is(runtime, ref, TaskStatus.CANCELLED)
    assert state.completed_at is not None, state
    assert "quota exceeded" in state.error, state
    assert await runtime.get_state(ref) == state


@pytest.mark.case("CANCEL-3")
async def test_parked_task_when_cancelled_then_finally_and_aexit_run_and_cleanup_events_come_first(
    runtime: Runtime, client: Client
) -> None:
    ref = await runtime.create_task(behaviours.cleanup_probe)
    stream = await client.subscribe(ref)
    await runtime.start_task(ref)
    await stream.until("start")
    await runtime.cancel_task(ref)
    await stream.until()
    assert [e.type for e in stream.seen] == ["start", "cleanup", "cancelled"], stream.trace()
    fields = (await status_is(runtime, ref, TaskStatus.CANCELLED)).fields
    assert fields.get("finally_ran") is True, fields
    assert fields.get("released") is True, fields


@pytest.mark.case("CANCEL-4")
async def test_ready_task_when_cancelled_then_cancelled_recorded_clients_told_and_start_refused(
    runtime: Runtime, client: Client
) -> None:
    ref = await runtime.create_task(behaviours.steps)
    stream = await client.subscribe(ref)
    assert await runtime.cancel_task(ref, reason="not needed") is True
    event = await stream.next()
    assert (event.type, event.data.get("reason")) == ("cancelled", "not needed"), stream.trace()
    # The task's first event, numbered as any first event is (FUNC-3).
    assert event.id == 1, stream.trace()
    await stream.expect_end()
    await status_is(runtime, ref, TaskStatus.CANCELLED)
    assert await runtime.start_task(ref) is False
    assert (await runtime.get_state(ref)).status is TaskStatus.CANCELLED


@pytest.mark.case("CANCEL-5")
async def test_finished_task_when_cancelled_then_false_no_event_and_status_kept(
    runtime: Runtime, client: Client
) -> None:
    ref = await runtime.create_task(behaviours.steps, {"steps": 1})
    stream = await client.subscribe(ref)
    await runtime.start_task(ref)
    await stream.until()
    await status_is(runtime, ref, TaskStatus.SUCCESSFUL)
    assert await runtime.cancel_task(ref) is False
    await stream.expect_end()
    assert (await runtime.get_state(ref)).status is TaskStatus.SUCCESSFUL
    late = await client.subscribe(ref)
    assert (await late.next()).type == "complete", late.trace()
    await late.expect_end()


@pytest.mark.case("CANCEL-6")
async def test_running_task_when_cancelled_twice_then_true_then_false_and_one_event(
    runtime: Runtime, client: Client
) -> None:
    ref = await runtime.create_task(behaviours.park)
    stream = await client.subscribe(ref)
    await runtime.start_task(ref)
    await stream.until("start")
    first, second = await asyncio.gather(runtime.cancel_task(ref), runtime.cancel_task(ref))
    assert (first, second) == (True, False)
    assert await runtime.cancel_task(ref) is False
    await stream.until()
    await stream.expect_end()
    assert [e.type for e in stream.seen].count("cancelled") == 1, stream.trace()


@pytest.mark.case("CANCEL-7")
async def test_unknown_task_when_cancelled_then_false_and_no_exception(runtime: Runtime) -> None:
    ref = await runtime.create_task(behaviours.steps)
    assert await runtime.cancel_task(TaskRef(ref.model, "987654321")) is False
    assert await runtime.cancel_task(TaskRef("NoSuchModel", "1"), reason="x") is False


@pytest.mark.case("CANCEL-8")
async def test_client_when_task_already_cancelled_then_gets_cancelled_and_stream_ends(
    runtime: Runtime, client: Client
) -> None:
    ref = await runtime.create_task(behaviours.park)
    await runtime.start_task(ref)
    await eventually(lambda: runtime.stats().running_tasks == 1, what="the task to run")
    await runtime.cancel_task(ref, reason="gone")
    await status_is(runtime, ref, TaskStatus.CANCELLED)
    stream = await client.subscribe(ref)
    event = await stream.next()
    assert (event.type, event.data.get("reason")) == ("cancelled", "gone"), stream.trace()
    await stream.expect_end()


@pytest.mark.case("CANCEL-9")
async def test_task_when_it_swallows_cancellation_then_still_stopped_after_grace(
    runtime: Runtime, client: Client, impl: Implementation
) -> None:
    ref = await runtime.create_task(behaviours.swallow_once)
    stream = await client.subscribe(ref)
    await runtime.start_task(ref)
    await stream.until("start")
    assert await runtime.cancel_task(ref, reason="stop") is True
    event = await stream.next(timeout=impl.timings.cancel_grace + MARGIN)
    assert event.type == "cancelled", stream.trace()
    await stream.expect_end()
    state = await status_is(runtime, ref, TaskStatus.CANCELLED)
    assert state.fields.get("swallowed") == 1, state
    await nothing_running(runtime)


@pytest.mark.case("CANCEL-10")
async def test_task_with_taskgroup_children_when_cancelled_then_every_child_is_cancelled(
    runtime: Runtime, client: Client
) -> None:
    ref = await runtime.create_task(behaviours.children, {"children": 3})
    stream = await client.subscribe(ref)
    await runtime.start_task(ref)
    await stream.until("children-started")
    await runtime.cancel_task(ref)
    await stream.until()
    fields = (await status_is(runtime, ref, TaskStatus.CANCELLED)).fields
    assert {fields.get(f"child_{i}") for i in range(3)} == {"cancelled"}, fields
    await nothing_running(runtime)


@pytest.mark.case("CANCEL-11")
async def test_task_with_request_in_flight_when_cancelled_then_connection_is_closed(
    runtime: Runtime, client: Client
) -> None:
    upstream = HangingUpstream()
    async with upstream.running() as url:
        ref = await runtime.create_task(behaviours.fetch, {"url": url})
        stream = await client.subscribe(ref)
        await runtime.start_task(ref)
        await stream.until("connected")
        await asyncio.wait_for(upstream.connected.wait(), 5)
        assert not upstream.closed.is_set()
        await runtime.cancel_task(ref, reason="too slow")
        assert (await stream.until())[-1].type == "cancelled", stream.trace()
        try:
            await asyncio.wait_for(upstream.closed.wait(), 5)
        except TimeoutError:
            raise AssertionError("the cancelled task's HTTP connection stayed open") from None


@pytest.mark.case("CANCEL-12")
async def test_cancelled_run_when_clients_left_then_nothing_is_held(
    runtime: Runtime, client: Client
) -> None:
    refs = [await runtime.create_task(behaviours.park) for _ in range(3)]
    streams = [await client.subscribe(ref) for ref in refs]
    for ref, stream in zip(refs, streams, strict=True):
        await runtime.start_task(ref)
        await stream.until("start")
    for ref in refs:
        await runtime.cancel_task(ref)
    for stream in streams:
        await stream.until()
        await stream.aclose()
    await eventually(
        lambda: runtime.stats() == type(runtime.stats())(0, 0, 0),
        what="no running task, subscriber or topic",
    )


@pytest.mark.case("CANCEL-13")
@pytest.mark.requires(Capability.HTTP)
async def test_cancel_endpoint_when_posted_then_200_true_reason_told_then_false_and_404(
    runtime: Runtime, server_url: str
) -> None:
    ref = await runtime.create_task(behaviours.park)
    async with HttpClient(server_url) as sse:
        stream = await sse.subscribe(ref)
        await runtime.start_task(ref)
        await stream.until("start")
        path = f"/tasks/{ref.model}/{ref.id}/cancel"
        async with http_client(server_url) as http:
            first = await http.post(path, json={"reason": "from the web"})
            assert (first.status_code, first.json()) == (200, {"cancelled": True}), first.text
            event = await stream.next()
            assert (event.type, event.data.get("reason")) == ("cancelled", "from the web")
            again = await http.post(path)
            refused = again.json()
            # Beside {"cancelled": false} the answer may say why, in a "reason" of text.
            assert isinstance(refused.pop("reason", ""), str), again.text
            assert (again.status_code, refused) == (200, {"cancelled": False}), again.text
            missing = await http.post(f"/tasks/{ref.model}/987654321/cancel")
            assert missing.status_code == 404 and missing.text.strip(), missing.text


@pytest.mark.case("CANCEL-14")
async def test_task_when_cleanup_raises_during_cancel_then_one_cancelled_event_and_cancelled(
    runtime: Runtime, client: Client
) -> None:
    ref = await runtime.create_task(behaviours.cleanup_raises)
    stream = await client.subscribe(ref)
    await runtime.start_task(ref)
    await stream.until("start")
    await runtime.cancel_task(ref)
    await stream.until()
    await stream.expect_end()
    assert [e.type for e in stream.seen] == ["start", "cancelled"], stream.trace()
    await status_is(runtime, ref, TaskStatus.CANCELLED)


@pytest.mark.case("CANCEL-15")
async def test_one_task_when_cancelled_then_another_task_and_its_clients_carry_on(
    runtime: Runtime, client: Client
) -> None:
    doomed = await runtime.create_task(behaviours.park)
    other = await runtime.create_task(behaviours.stepper, {"total": 2})
    doomed_stream, other_stream = await client.subscribe(doomed), await client.subscribe(other)
    await runtime.start_task(doomed)
    await runtime.start_task(other)
    await doomed_stream.until("start")
    await other_stream.until("start")
    await runtime.cancel_task(doomed)
    await doomed_stream.until()
    await runtime.write_fields(other, allow=2)
    events = await other_stream.until()
    assert [e.type for e in events] == ["progress", "progress", "complete"], other_stream.trace()
    await status_is(runtime, other, TaskStatus.SUCCESSFUL)


@pytest.mark.case("CANCEL-2")
@pytest.mark.requires(Capability.PERSISTENCE, Capability.PROCESS, Capability.HTTP)
async def test_task_cancelled_in_a_server_when_clients_told_then_cancelled_is_readable_elsewhere(
    runtime: Runtime, spawn_server: Spawn
) -> None:
    server = await spawn_server()
    ref = await runtime.create_task(behaviours.park)
    async with HttpClient(server.url) as sse:
        stream = await sse.subscribe(ref)
        await server.start_task(ref)
        await stream.until("start")
        path = f"/tasks/{ref.model}/{ref.id}/cancel"
        response = await server.request("POST", path, json={"reason": "from afar"})
        assert response.json() == {"cancelled": True}, response.text
        assert (await stream.until())[-1].type == "cancelled", stream.trace()
        # At once, in another process: the outcome was stored before it was sent.
        state = await runtime.get_state(ref)
    assert state.status is TaskStatus.CANCELLED and "from afar" in state.error, state
