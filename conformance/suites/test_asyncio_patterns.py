"""Asyncio patterns suite (ASYNC): modern asyncio, observable from outside.

Timeouts (the task's own and the implementation's), cancellation through
``Task.cancel()``, TaskGroups and exception groups, ``asyncio.shield``,
context variables, eager task factories, debug mode and cancellation-safe
clients. Every case observes the implementation through the contract: the
events a client sees, the persisted state, and what the behaviours of
:mod:`conformance.behaviours` report from inside the task.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import re
import uuid
import warnings

import pytest

from conformance import behaviours, hygiene
from conformance.checks import ended, listed_errors, names_limit, ran_for, terminals
from conformance.clients import Client, InProcessClient, raw_subscription
from conformance.contract import (
    Capability,
    Implementation,
    Runtime,
    TaskRef,
    TaskStatus,
    UnknownTask,
)
from conformance.eventloop import (
    SLOW_CALLBACK,
    SlowCallbacks,
    eager_tasks,
    no_task_pending_since,
    pending_since,
)
from conformance.tasks import run_watched
from conformance.waiting import MARGIN, eventually, finished, status_is, stored, suspended

pytestmark = pytest.mark.asyncio

#: A task timeout short enough to keep the suite fast, long enough to start.
SHORT = 0.2
#: A task timeout no case reaches.
GENEROUS = 30.0


# -- timeouts -------------------------------------------------------------------


@pytest.mark.case("ASYNC-1")
@pytest.mark.requires(Capability.TIMEOUTS)
async def test_task_when_it_runs_past_its_timeout_then_one_timeout_event_and_timed_out(
    runtime: Runtime, client: Client
) -> None:
    ref = await runtime.create_task(behaviours.park, timeout=SHORT)
    stream = await client.subscribe(ref)
    await runtime.start_task(ref)
    events = await stream.until()
    await stream.expect_end()
    assert [e.type for e in events] == ["start", "timeout"], stream.trace()
    assert names_limit(events[-1], SHORT), f"the limit {SHORT}s is not named:\n{stream.trace()}"
    message = events[-1].data.get("message")
    assert isinstance(message, str) and message.strip(), (
        f"SPEC's table: 'timeout' carries a message\n{stream.trace()}"
    )
    state = await status_is(runtime, ref, TaskStatus.TIMED_OUT)
    assert ran_for(state) >= SHORT, f"stopped before its timeout of {SHORT}s: {state}"


@pytest.mark.case("ASYNC-1")
@pytest.mark.requires(Capability.TIMEOUTS, Capability.CANCEL)
async def test_task_swallowing_its_timeouts_cancellation_when_past_it_then_stopped_timed_out(
    runtime: Runtime, client: Client, impl: Implementation
) -> None:
    # Found by the soak (issue 27): a task that swallowed the cancellation its
    # timeout sent ran on for good, RUNNING long past its limit. A swallowed
    # cancel is stopped after the grace (CANCEL-9); so must a swallowed timeout.
    ref = await runtime.create_task(behaviours.swallow_once, timeout=SHORT)
    stream = await client.subscribe(ref)
    await runtime.start_task(ref)
    deadline = SHORT + impl.timings.cancel_grace + MARGIN
    events = await stream.until(timeout=deadline)
    assert [e.type for e in events] == ["start", "timeout"], stream.trace()
    await status_is(runtime, ref, TaskStatus.TIMED_OUT)


@pytest.mark.case("ASYNC-2")
@pytest.mark.requires(Capability.TIMEOUTS)
async def test_task_when_it_finishes_within_its_timeout_then_complete_and_no_timeout_later(
    runtime: Runtime, client: Client
) -> None:
    quick = await runtime.create_task(behaviours.steps, {"steps": 2}, timeout=SHORT)
    # Started after the quick task with the same timeout: its timeout event
    # says the quick task's deadline has passed too.
    witness = await runtime.create_task(behaviours.park, timeout=SHORT)
    stream = await client.subscribe(quick)
    witness_stream = await client.subscribe(witness)
    await runtime.start_task(quick)
    await runtime.start_task(witness)
    events = await stream.until()
    assert [e.type for e in events] == ["start", "progress", "progress", "complete"], stream.trace()
    await stream.expect_end()
    await witness_stream.until("timeout")

    assert (await runtime.get_state(quick)).status is TaskStatus.SUCCESSFUL
    late = await client.subscribe(quick)
    assert (await late.next()).type == "complete", late.trace()
    await late.expect_end()


@pytest.mark.case("ASYNC-3")
@pytest.mark.requires(Capability.TIMEOUTS)
async def test_task_when_its_own_asyncio_timeout_expires_uncaught_then_error_and_failed(
    runtime: Runtime, client: Client
) -> None:
    ref = await runtime.create_task(behaviours.own_timeout_expires, {"own": 0.05}, timeout=GENEROUS)
    stream = await client.subscribe(ref)
    await runtime.start_task(ref)
    events = await stream.until()
    assert terminals(events) == ["error"], stream.trace()
    assert events[-1].data["error_type"] == "TimeoutError", stream.trace()
    state = await finished(runtime, ref)
    assert state.status is TaskStatus.FAILED, state


@pytest.mark.case("ASYNC-4")
@pytest.mark.requires(Capability.TIMEOUTS)
async def test_task_when_it_catches_its_own_timeout_then_runs_on_and_completes(
    runtime: Runtime, client: Client
) -> None:
    ref = await runtime.create_task(behaviours.own_timeout_caught, {"own": 0.05}, timeout=GENEROUS)
    stream = await client.subscribe(ref)
    await runtime.start_task(ref)
    events = await stream.until()
    assert [e.type for e in events] == ["caught", "after", "complete"], stream.trace()
    assert events[-1].data.get("ran_on") is True, stream.trace()
    await status_is(runtime, ref, TaskStatus.SUCCESSFUL)


@pytest.mark.case("ASYNC-5")
@pytest.mark.requires(Capability.TIMEOUTS)
async def test_task_timeout_when_task_is_inside_its_own_longer_timeout_then_timed_out(
    runtime: Runtime, client: Client
) -> None:
    ref = await runtime.create_task(
        behaviours.inside_long_timeout, {"own": GENEROUS}, timeout=SHORT
    )
    stream = await client.subscribe(ref)
    await runtime.start_task(ref)
    events = await stream.until()
    assert [e.type for e in events] == ["inside", "stopped-inside", "timeout"], stream.trace()
    assert names_limit(events[-1], SHORT), stream.trace()
    await status_is(runtime, ref, TaskStatus.TIMED_OUT)


@pytest.mark.case("ASYNC-6")
@pytest.mark.requires(Capability.CANCEL)
async def test_cancel_when_task_is_inside_its_own_timeout_then_cancelled_not_timeout(
    runtime: Runtime, client: Client
) -> None:
    ref = await runtime.create_task(behaviours.inside_long_timeout, {"own": GENEROUS})
    stream = await client.subscribe(ref)
    await runtime.start_task(ref)
    await stream.until("inside")
    assert await runtime.cancel_task(ref, "stop inside timeout")
    events = await stream.until()
    assert [e.type for e in events] == ["stopped-inside", "cancelled"], stream.trace()
    assert events[-1].data.get("reason") == "stop inside timeout", stream.trace()
    await status_is(runtime, ref, TaskStatus.CANCELLED)


@pytest.mark.case("ASYNC-7")
@pytest.mark.requires(Capability.CANCEL)
async def test_cancel_when_task_handles_it_then_current_task_cancelling_is_at_least_one(
    runtime: Runtime, client: Client
) -> None:
    ref = await runtime.create_task(behaviours.report_cancelling)
    stream = await client.subscribe(ref)
    await runtime.start_task(ref)
    await stream.until("parked")
    assert await runtime.cancel_task(ref)
    events = await stream.until()
    assert [e.type for e in events] == ["cancel-seen", "cancelled"], stream.trace()
    assert events[0].data["cancelling"] >= 1, stream.trace()


# -- task groups and exception groups ---------------------------------------------


@pytest.mark.case("ASYNC-8")
async def test_taskgroup_when_one_child_fails_then_siblings_cancelled_and_one_error_lists_it(
    runtime: Runtime, client: Client
) -> None:
    ref = await runtime.create_task(
        behaviours.group_one_fails, {"siblings": 2, "message": "child boom"}
    )
    stream = await client.subscribe(ref)
    await runtime.start_task(ref)
    events = await stream.until()
    await stream.expect_end()
    types = [e.type for e in events]
    assert sorted(e.data["index"] for e in events if e.type == "sibling-cancelled") == [0, 1], (
        stream.trace()
    )
    assert terminals(events) == ["error"] and types[-1] == "error", stream.trace()
    assert listed_errors(events[-1]) == [("ValueError", "child boom")], stream.trace()
    await status_is(runtime, ref, TaskStatus.FAILED)


@pytest.mark.case("ASYNC-9")
async def test_taskgroup_when_several_children_fail_then_one_error_lists_every_error(
    runtime: Runtime, client: Client
) -> None:
    errors = [["ValueError", "first"], ["RuntimeError", "second"], ["LookupError", "third"]]
    ref = await runtime.create_task(behaviours.group_many_fail, {"errors": errors})
    stream = await client.subscribe(ref)
    await runtime.start_task(ref)
    events = await stream.until()
    await stream.expect_end()
    assert [e.type for e in events] == ["starting", "error"], stream.trace()
    assert sorted(listed_errors(events[-1])) == sorted(map(tuple, errors)), stream.trace()
    await status_is(runtime, ref, TaskStatus.FAILED)


@pytest.mark.case("ASYNC-10")
async def test_exception_group_when_handled_with_except_star_then_task_completes(
    runtime: Runtime, client: Client
) -> None:
    ref = await runtime.create_task(behaviours.handle_with_except_star, {"children": 2})
    stream = await client.subscribe(ref)
    await runtime.start_task(ref)
    events = await stream.until()
    assert [e.type for e in events] == ["handled", "complete"], stream.trace()
    assert events[-1].data.get("handled") == 2, stream.trace()
    await status_is(runtime, ref, TaskStatus.SUCCESSFUL)


@pytest.mark.case("ASYNC-11")
async def test_concurrent_starts_when_one_fails_then_the_others_run_to_completion(
    runtime: Runtime, client: Client
) -> None:
    first = await runtime.create_task(behaviours.steps, {"steps": 2})
    second = await runtime.create_task(behaviours.steps, {"steps": 2})
    missing = TaskRef(first.model, "987654321")
    streams = [await client.subscribe(first), await client.subscribe(second)]
    results = await asyncio.gather(
        runtime.start_task(first),
        runtime.start_task(missing),
        runtime.start_task(second),
        return_exceptions=True,
    )
    assert results[0] is True and results[2] is True, results
    assert isinstance(results[1], UnknownTask), results
    for stream in streams:
        assert (await stream.until())[-1].type == "complete", stream.trace()
    await status_is(runtime, first, TaskStatus.SUCCESSFUL)
    await status_is(runtime, second, TaskStatus.SUCCESSFUL)


# -- cancellation and shutdown -----------------------------------------------------


@pytest.mark.case("ASYNC-12")
@pytest.mark.requires(Capability.CANCEL)
async def test_cancel_when_shutdown_follows_at_once_then_cancelled_state_is_persisted(
    runtime: Runtime, client: Client
) -> None:
    ref = await runtime.create_task(behaviours.cleanup_writes_on_cancel)
    stream = await client.subscribe(ref)
    await runtime.start_task(ref)
    await stream.until("parked")
    assert await runtime.cancel_task(ref, "cancel then shut down")
    await runtime.shutdown(0)
    state = await runtime.get_state(ref)
    assert state.status is TaskStatus.CANCELLED, state
    assert state.completed_at is not None, state
    events = await stream.until()
    assert terminals(events) == ["cancelled"], stream.trace()


@pytest.mark.case("ASYNC-27")
@pytest.mark.requires(Capability.CANCEL)
async def test_cancel_when_task_awaits_shield_then_cancelled_and_shielded_work_finishes(
    runtime: Runtime, client: Client
) -> None:
    ref = await runtime.create_task(behaviours.shielded_work)
    stream = await client.subscribe(ref)
    await runtime.start_task(ref)
    await stream.until("shielding")
    assert await runtime.cancel_task(ref, "stop the shielded task")
    events = await stream.until()
    assert [e.type for e in events] == ["shield-cancelled", "cancelled"], stream.trace()
    assert events[0].data["work_done"] is False, stream.trace()
    state = await status_is(runtime, ref, TaskStatus.CANCELLED)
    assert "shielded_done" not in state.fields, state
    await runtime.write_fields(ref, finish=True)
    assert await stored(runtime, ref, "shielded_done") is True


# -- the event loop: blocking, names, leaks, loop errors ---------------------------


@pytest.mark.case("ASYNC-13")
async def test_event_loop_when_tasks_run_stream_and_store_in_debug_mode_then_no_slow_callback(
    runtime: Runtime, client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    loop = asyncio.get_running_loop()
    debug, slow = loop.get_debug(), loop.slow_callback_duration
    caplog.set_level(logging.WARNING, logger="asyncio")
    watch = SlowCallbacks(loop)
    logging.getLogger("asyncio").addHandler(watch)
    loop.set_debug(True)
    loop.slow_callback_duration = SLOW_CALLBACK
    try:
        paced = [await runtime.create_task(behaviours.stepper, {"total": 3}) for _ in range(3)]
        bursts = [await runtime.create_task(behaviours.burst, {"count": 200}) for _ in range(2)]
        streams = [await client.subscribe(ref) for ref in paced + bursts]
        for ref in paced + bursts:
            await runtime.start_task(ref)
        for step in range(1, 4):
            for ref in paced:
                await runtime.write_fields(ref, allow=step)
        for stream in streams:
            assert (await stream.until())[-1].type == "complete", stream.trace()
        for ref in paced:
            assert (await runtime.get_state(ref)).fields.get("reached") == 3
    finally:
        loop.set_debug(debug)
        loop.slow_callback_duration = slow
        logging.getLogger("asyncio").removeHandler(watch)
        watch.close()
    # The case's own coroutine and the suite's client tasks run on this loop
    # too; on a loaded machine a step of theirs may pass 100 ms. Only the
    # implementation's callbacks are judged.
    own = {f"name='{asyncio.current_task().get_name()}'", "name='conformance:"}  # type: ignore[union-attr]
    slow_callbacks = [m for m in watch.blocking if not any(marker in m for marker in own)]
    assert not slow_callbacks, "callbacks blocked the loop:\n" + "\n".join(slow_callbacks)


@pytest.mark.case("ASYNC-14")
async def test_asyncio_task_when_it_runs_a_task_then_its_name_has_model_and_id(
    runtime: Runtime,
) -> None:
    ref = await runtime.create_task(behaviours.report_task_name)
    await runtime.start_task(ref)
    name = await stored(runtime, ref, "task_name")
    assert ref.model in name, f"{name!r} does not name the model {ref.model!r}"
    assert re.search(rf"(?<![0-9]){re.escape(ref.id)}(?![0-9])", name), (
        f"{name!r} does not name the task id {ref.id!r}"
    )
    assert name in [t.get_name() for t in asyncio.all_tasks() if not t.done()], name
    await runtime.write_fields(ref, go=True)
    await status_is(runtime, ref, TaskStatus.SUCCESSFUL)


@pytest.mark.case("ASYNC-15")
async def test_runs_when_completed_or_failed_and_clients_left_then_no_asyncio_task_pending(
    runtime: Runtime, client: Client
) -> None:
    before = set(asyncio.all_tasks())
    kinds = [
        (behaviours.steps, {"steps": 2}),
        (behaviours.fail, {}),
        (behaviours.group_one_fails, {"siblings": 2}),
        (behaviours.concurrent_senders, {"children": 3, "each": 3}),
    ]
    refs = [await runtime.create_task(kind, fields) for kind, fields in kinds]
    streams = [await run_watched(client, runtime, ref) for ref in refs]
    for stream in streams:
        await stream.aclose()
    await no_task_pending_since(before, "every asyncio task of the ended runs to be done")


@pytest.mark.case("ASYNC-15")
@pytest.mark.requires(Capability.CANCEL)
async def test_runs_when_cancelled_and_clients_left_then_no_asyncio_task_pending(
    runtime: Runtime, client: Client
) -> None:
    before = set(asyncio.all_tasks())
    refs = [await runtime.create_task(behaviours.cleanup_on_stop) for _ in range(3)]
    streams = [await client.subscribe(ref) for ref in refs]
    for ref, stream in zip(refs, streams, strict=True):
        await runtime.start_task(ref)
        await stream.until("working")
    for ref in refs:
        assert await runtime.cancel_task(ref)
    for stream in streams:
        assert (await stream.until())[-1].type == "cancelled", stream.trace()
        await stream.aclose()
    await no_task_pending_since(before, "every asyncio task of the cancelled runs to be done")


@pytest.mark.case("ASYNC-16")
async def test_failing_tasks_when_collected_then_no_unretrieved_exception_or_unawaited_coroutine(
    runtime: Runtime,
) -> None:
    before = set(asyncio.all_tasks())
    with hygiene.loop_errors() as reported, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        refs = [
            await runtime.create_task(behaviours.fail, {"message": "retrieve me"}),
            await runtime.create_task(behaviours.group_one_fails, {"siblings": 1}),
            await runtime.create_task(
                behaviours.group_many_fail, {"errors": [["ValueError", "a"], ["RuntimeError", "b"]]}
            ),
        ]
        for ref in refs:
            await runtime.start_task(ref)
        for ref in refs:
            await status_is(runtime, ref, TaskStatus.FAILED)
        await eventually(
            lambda: runtime.stats().running_tasks == 0 and not pending_since(before),
            what="the failed runs to end",
        )
        await asyncio.sleep(0)  # one turn: done-callbacks drop the finished tasks
        gc.collect()
    assert not reported, f"the loop reported: {reported}"
    unawaited = [str(w.message) for w in caught if "never awaited" in str(w.message)]
    assert not unawaited, unawaited


# -- context, task factories ----------------------------------------------------------


@pytest.mark.case("ASYNC-17")
async def test_context_variable_when_set_by_the_caller_of_start_then_visible_in_the_task(
    runtime: Runtime,
) -> None:
    value = f"caller-{uuid.uuid4().hex[:8]}"
    ref = await runtime.create_task(behaviours.report_context)
    token = behaviours.CALLER_VALUE.set(value)
    try:
        await runtime.start_task(ref)
    finally:
        behaviours.CALLER_VALUE.reset(token)
    await status_is(runtime, ref, TaskStatus.SUCCESSFUL)
    assert (await runtime.get_state(ref)).fields.get("seen") == value


@pytest.mark.case("ASYNC-18")
@pytest.mark.requires(Capability.CANCEL)
async def test_eager_task_factory_when_installed_then_run_stream_late_join_and_cancel_work(
    runtime: Runtime,
) -> None:
    client = InProcessClient(runtime)
    with eager_tasks():
        try:
            paced = await runtime.create_task(behaviours.stepper, {"total": 2})
            early = await client.subscribe(paced)
            assert await runtime.start_task(paced)
            await early.until("start")
            await runtime.write_fields(paced, allow=1)
            latest = (await early.until("progress"))[-1]
            late = await client.subscribe(paced)
            first = await late.next()
            assert (first.id, first.type) == (latest.id, latest.type), late.trace()
            await runtime.write_fields(paced, allow=2)
            await early.until()
            await late.until()
            assert [e.id for e in early.seen] == [1, 2, 3, 4], early.trace()
            assert [e.type for e in early.seen] == ["start", "progress", "progress", "complete"]
            assert [e.id for e in late.seen] == [2, 3, 4], late.trace()

            parked = await runtime.create_task(behaviours.park)
            watcher = await client.subscribe(parked)
            await runtime.start_task(parked)
            await watcher.until("start")
            assert await runtime.cancel_task(parked, "eager cancel")
            assert [e.type for e in await watcher.until()] == ["cancelled"], watcher.trace()
            await status_is(runtime, parked, TaskStatus.CANCELLED)
        finally:
            await client.aclose()


# -- clients: cancellation-safe waits ----------------------------------------------------


@pytest.mark.case("ASYNC-19")
async def test_next_event_when_wait_for_times_out_then_no_event_lost_and_subscription_usable(
    runtime: Runtime,
) -> None:
    ref = await runtime.create_task(behaviours.stepper, {"total": 2})
    async with raw_subscription(runtime, ref) as raw:
        await runtime.start_task(ref)
        assert (await raw.next()).type == "start", raw.trace()
        for _ in range(3):
            assert await raw.times_out(0.05), raw.trace()
        await runtime.write_fields(ref, allow=2)
        rest = await raw.until()
        expected = [(2, "progress"), (3, "progress"), (4, "complete")]
        assert [(e.id, e.type) for e in rest] == expected, raw.trace()


@pytest.mark.case("ASYNC-19")
async def test_next_event_when_waits_time_out_while_events_arrive_then_none_is_lost(
    runtime: Runtime,
) -> None:
    count = 40
    ref = await runtime.create_task(behaviours.trickle, {"count": count, "interval": 0.002})
    timeouts = 0
    async with raw_subscription(runtime, ref) as raw:
        await runtime.start_task(ref)
        while not (raw.seen and raw.seen[-1].is_terminal):
            try:
                await raw.wait_next(0.001)
            except TimeoutError:
                timeouts += 1
            except StopAsyncIteration:
                pytest.fail(f"The stream ended before a terminal event:\n{raw.trace()}")
        assert timeouts > 0, "no wait timed out: the case tested nothing"
        assert [e.id for e in raw.seen] == list(range(1, count + 2)), raw.trace()
        assert [e.data.get("index") for e in raw.seen[:-1]] == list(range(count)), raw.trace()


@pytest.mark.case("ASYNC-26")
async def test_wait_for_next_event_when_none_comes_in_time_then_timeout_error_and_task_unaffected(
    runtime: Runtime,
) -> None:
    ref = await runtime.create_task(behaviours.wait_for_flag, {"go": False})
    async with raw_subscription(runtime, ref) as raw:
        await runtime.start_task(ref)
        assert (await raw.next()).type == "started", raw.trace()
        with pytest.raises(TimeoutError):
            await raw.wait_next(0.05)
        assert (await runtime.get_state(ref)).status is TaskStatus.RUNNING
        await runtime.write_fields(ref, go=True)
        rest = await raw.until()
        assert [e.type for e in rest] == ["final", "complete"], raw.trace()
    await status_is(runtime, ref, TaskStatus.SUCCESSFUL)


@pytest.mark.case("ASYNC-20")
async def test_client_when_cancelled_while_waiting_then_task_and_other_clients_unaffected(
    runtime: Runtime, client: Client
) -> None:
    ref = await runtime.create_task(behaviours.stepper, {"total": 2})
    leaving, staying = await client.subscribe(ref), await client.subscribe(ref)
    await runtime.start_task(ref)
    await leaving.until("start")
    await staying.until("start")
    waiting = asyncio.create_task(leaving.next(timeout=30), name="conformance:waiting-client")
    await eventually(lambda: runtime.stats().subscribers == 2, what="both clients to be registered")
    await eventually(
        lambda: suspended(waiting),
        what="the client to be parked waiting for its next event",
    )
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    await leaving.aclose()
    await eventually(
        lambda: runtime.stats().subscribers == 1, what="the cancelled client to be unregistered"
    )
    await runtime.write_fields(ref, allow=2)
    events = await staying.until()
    assert [e.type for e in events] == ["progress", "progress", "complete"], staying.trace()
    assert [e.id for e in staying.seen] == [1, 2, 3, 4], staying.trace()
    await status_is(runtime, ref, TaskStatus.SUCCESSFUL)


@pytest.mark.case("ASYNC-21")
async def test_children_when_they_send_concurrently_then_ids_distinct_increasing_none_lost(
    runtime: Runtime, client: Client
) -> None:
    children, each = 4, 25
    ref = await runtime.create_task(
        behaviours.concurrent_senders, {"children": children, "each": each}
    )
    streams = [await client.subscribe(ref) for _ in range(2)]
    await runtime.start_task(ref)
    for stream in streams:
        events = await stream.until()
        assert [e.id for e in events] == list(range(1, children * each + 2)), stream.trace()
        ticks = [e for e in events if e.type == "tick"]
        for index in range(children):
            seqs = [e.data["seq"] for e in ticks if e.data["child"] == index]
            assert seqs == list(range(each)), stream.trace()
        assert events[-1].type == "complete", stream.trace()
    assert [(e.id, e.type) for e in streams[0].seen] == [(e.id, e.type) for e in streams[1].seen]


@pytest.mark.case("ASYNC-22")
async def test_client_when_it_reads_nothing_then_task_completes_and_others_get_every_event(
    runtime: Runtime, client: Client
) -> None:
    count = 1200
    ref = await runtime.create_task(behaviours.yielding_burst, {"count": count})
    idle = await client.subscribe(ref)
    reader = await client.subscribe(ref)
    await runtime.start_task(ref)
    events = await reader.until(timeout=10)
    assert [e.id for e in events] == list(range(1, count + 2)), reader.trace()[-2000:]
    assert events[-1].type == "complete"
    await status_is(runtime, ref, TaskStatus.SUCCESSFUL)
    await idle.aclose()


@pytest.mark.case("ASYNC-23")
async def test_start_task_when_called_then_returns_while_the_work_still_runs(
    runtime: Runtime, client: Client
) -> None:
    ref = await runtime.create_task(behaviours.wait_for_flag, {"go": False})
    stream = await client.subscribe(ref)
    try:
        async with asyncio.timeout(5):
            started = await runtime.start_task(ref)
    except TimeoutError:
        pytest.fail("start_task did not return within 5s: it waits for the task's work")
    assert started is True
    assert (await runtime.get_state(ref)).status is TaskStatus.RUNNING
    assert (await stream.next()).type == "started", stream.trace()
    await runtime.write_fields(ref, go=True)
    assert [e.type for e in await stream.until()] == ["final", "complete"], stream.trace()


@pytest.mark.case("ASYNC-24")
@pytest.mark.requires(Capability.TIMEOUTS)
async def test_timed_out_task_when_cleaning_up_then_finally_runs_and_its_events_come_first(
    runtime: Runtime, client: Client
) -> None:
    ref = await runtime.create_task(behaviours.cleanup_on_stop, timeout=SHORT)
    stream = await client.subscribe(ref)
    await runtime.start_task(ref)
    events = await stream.until()
    assert [e.type for e in events] == ["working", "cleanup", "timeout"], stream.trace()
    state = await status_is(runtime, ref, TaskStatus.TIMED_OUT)
    assert state.fields.get("cleaned") is True, state


@pytest.mark.case("ASYNC-25")
@pytest.mark.requires(Capability.TIMEOUTS)
async def test_two_tasks_of_one_kind_when_timeouts_differ_then_each_stops_at_its_own(
    runtime: Runtime, client: Client
) -> None:
    shorter, longer = 0.15, 0.5
    quick = await runtime.create_task(behaviours.park, timeout=shorter)
    slow = await runtime.create_task(behaviours.park, timeout=longer)
    quick_stream, slow_stream = await client.subscribe(quick), await client.subscribe(slow)
    await runtime.start_task(slow)
    await runtime.start_task(quick)
    quick_end, slow_end = [(await s.until())[-1] for s in (quick_stream, slow_stream)]
    assert quick_end.type == "timeout" and names_limit(quick_end, shorter), quick_stream.trace()
    assert slow_end.type == "timeout" and names_limit(slow_end, longer), slow_stream.trace()
    quick_state = await status_is(runtime, quick, TaskStatus.TIMED_OUT)
    slow_state = await status_is(runtime, slow, TaskStatus.TIMED_OUT)
    assert ran_for(quick_state) >= shorter and ran_for(slow_state) >= longer, (
        quick_state,
        slow_state,
    )
    assert ended(quick_state) < ended(slow_state), (quick_state, slow_state)
