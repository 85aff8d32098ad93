"""Multiple workers (MULTI): one deployment, several server processes.

The seed ran one process and kept its subscribers in a dict; behind a load
balancer, a client on another worker saw nothing, a cancel reaching the wrong
worker did nothing, and a worker's death left the others' clients waiting.
Every case here starts two or more real server processes of the
implementation (``spawn_server``), which share storage and events as workers
of one deployment, and watches them from real clients over 127.0.0.1: the
worker that runs a task and the one a client talks to are chosen on purpose
to differ.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from conformance import behaviours
from conformance.checks import seen_as
from conformance.clients import ClientStream, HttpClient, request
from conformance.contract import FAREWELL_EVENT, Capability, Implementation, Runtime, TaskStatus
from conformance.servers import Spawn, two_workers
from conformance.waiting import MARGIN, status_is, stored

pytestmark = [
    pytest.mark.asyncio,
    pytest.mark.requires(
        Capability.MULTI_WORKER, Capability.PROCESS, Capability.HTTP, Capability.PERSISTENCE
    ),
    pytest.mark.timeout(120),
]


@pytest.mark.case("MULTI-1")
async def test_client_of_another_worker_when_task_runs_then_same_events_ids_and_end(
    runtime: Runtime, spawn_server: Spawn
) -> None:
    runs_it, other = await two_workers(spawn_server)
    ref = await runtime.create_task(behaviours.stepper, {"total": 4})
    async with HttpClient(runs_it.url) as here, HttpClient(other.url) as there:
        local = await here.subscribe(ref)
        remote = await there.subscribe(ref)
        await runs_it.start_task(ref)
        await remote.until("start")
        await runtime.write_fields(ref, allow=4)
        await local.until("complete")
        await remote.until("complete", timeout=10)
        await remote.expect_end()
        local_events, remote_events = local.seen, remote.seen
    assert [e.id for e in remote_events] == list(range(1, 7)), remote.trace()
    assert seen_as(remote_events) == seen_as(local_events), (
        f"a client of another worker must see what the running worker's clients see\n"
        f"running worker's client:\n{local.trace()}\nother worker's client:\n{remote.trace()}"
    )


@pytest.mark.case("MULTI-1")
async def test_clients_of_another_worker_when_task_sends_a_burst_then_every_event_in_order(
    runtime: Runtime, spawn_server: Spawn
) -> None:
    # The other worker's clients must not depend on it keeping up with the
    # running worker: a burst sent back to back still reaches them whole.
    count = 3000
    runs_it, other = await two_workers(spawn_server)
    ref = await runtime.create_task(behaviours.burst, {"count": count})
    async with HttpClient(other.url) as there:
        streams = [await there.subscribe(ref) for _ in range(5)]
        await runs_it.start_task(ref)
        for stream in streams:
            events = await stream.until(timeout=60)
            assert [e.type for e in events] == ["tick"] * count + ["complete"], (
                f"{len(events)} events; the first that is not a tick: "
                f"{next((e for e in events if e.type != 'tick'), None)}"
            )
            assert [e.data["index"] for e in events[:-1]] == list(range(count))


@pytest.mark.case("MULTI-2")
async def test_late_client_of_another_worker_when_task_runs_then_latest_event_first(
    runtime: Runtime, spawn_server: Spawn
) -> None:
    runs_it, other = await two_workers(spawn_server)
    ref = await runtime.create_task(behaviours.stepper, {"total": 3, "allow": 2})
    async with HttpClient(runs_it.url) as here, HttpClient(other.url) as there:
        local = await here.subscribe(ref)
        await runs_it.start_task(ref)
        await behaviours.reached(runtime, ref, 2)
        latest = (await behaviours.through_step(local, 2))[-1]
        late = await there.subscribe(ref)
        first = await late.next(timeout=2)
        assert seen_as([first]) == seen_as([latest]), (
            f"a late client of another worker must get the latest event, {latest}, first\n"
            f"{late.trace()}"
        )
        await runtime.write_fields(ref, allow=3)
        rest = await late.until("complete", timeout=10)
        await late.expect_end()
    assert [e.id for e in rest] == [first.id + 1, first.id + 2], late.trace()
    assert [e.type for e in rest] == ["progress", "complete"], late.trace()


@pytest.mark.case("MULTI-3")
@pytest.mark.requires(Capability.CANCEL)
async def test_cancel_sent_to_another_worker_when_task_runs_then_stopped_and_all_told_once(
    runtime: Runtime, spawn_server: Spawn, impl: Implementation
) -> None:
    runs_it, other = await two_workers(spawn_server)
    ref = await runtime.create_task(behaviours.cleanup_probe)
    deadline = impl.timings.cancel_grace + MARGIN
    async with HttpClient(runs_it.url) as here, HttpClient(other.url) as there:
        streams = [await here.subscribe(ref), await there.subscribe(ref)]
        await runs_it.start_task(ref)
        for stream in streams:
            await stream.until("start")
        answer = await request(
            other.url,
            "POST",
            f"/tasks/{ref.model}/{ref.id}/cancel",
            json={"reason": "from the other worker"},
        )
        assert (answer.status_code, answer.json()) == (200, {"cancelled": True}), answer.text
        for stream in streams:
            events = await stream.until("cancelled", timeout=deadline)
            await stream.expect_end()
            assert [e.type for e in events].count("cancelled") == 1, stream.trace()
            assert events[-1].data.get("reason") == "from the other worker", stream.trace()
            assert "cleanup" in [e.type for e in events], stream.trace()
    state = await status_is(runtime, ref, TaskStatus.CANCELLED)
    assert state.fields.get("finally_ran") is True, state
    assert state.fields.get("released") is True, state


@pytest.mark.case("MULTI-3")
@pytest.mark.requires(Capability.CANCEL)
@pytest.mark.parametrize("then", ["fail", "return"])
async def test_cancel_answered_true_when_running_worker_then_ends_on_its_own_then_cancelled(
    runtime: Runtime, spawn_server: Spawn, impl: Implementation, tmp_path: Path, then: str
) -> None:
    # The running worker's loop is held (CPU-bound work) while another worker
    # answers the cancel; then the task fails or returns before that worker
    # hears of it. SPEC: a cancel returns true exactly when the task will end
    # CANCELLED, so its own ending must not win. Found by the soak (issue 27).
    runs_it, other = await two_workers(spawn_server)
    release = tmp_path / "release"
    ref = await runtime.create_task(
        behaviours.block_then_end, {"release": str(release), "then": then}
    )
    async with HttpClient(runs_it.url) as here, HttpClient(other.url) as there:
        streams = [await here.subscribe(ref), await there.subscribe(ref)]
        await runs_it.start_task(ref)
        try:
            await stored(runtime, ref, "blocking", until=lambda value: value is True)
            answer = await request(
                other.url,
                "POST",
                f"/tasks/{ref.model}/{ref.id}/cancel",
                json={"reason": "while it was busy"},
            )
        finally:
            release.touch()  # the workers run on this machine, so they see this file
        assert (answer.status_code, answer.json()) == (200, {"cancelled": True}), answer.text
        for stream in streams:
            events = await stream.until(timeout=impl.timings.cancel_grace + MARGIN)
            assert events[-1].type == "cancelled", (
                f"the cancel answered true, so the task must end cancelled\n{stream.trace()}"
            )
            assert events[-1].data.get("reason") == "while it was busy", stream.trace()
            await stream.expect_end()
    await status_is(runtime, ref, TaskStatus.CANCELLED)


@pytest.mark.case("MULTI-4")
@pytest.mark.requires(Capability.RESUME)
@pytest.mark.parametrize("when", ["running", "finished"])
async def test_client_resuming_on_another_worker_then_exactly_the_events_after_its_id(
    runtime: Runtime, spawn_server: Spawn, when: str
) -> None:
    runs_it, other = await two_workers(spawn_server)
    ref = await runtime.create_task(behaviours.stepper, {"total": 5, "allow": 2})
    async with HttpClient(runs_it.url) as here, HttpClient(other.url) as there:
        first = await here.subscribe(ref)
        await runs_it.start_task(ref)
        before = await behaviours.through_step(first, 2)  # start, step 1, step 2
        await first.aclose()
        if when == "finished":
            await runtime.write_fields(ref, allow=5)
            await status_is(runtime, ref, TaskStatus.SUCCESSFUL, timeout=10)
        resumed = await there.subscribe(ref, last_event_id=before[-1].id)
        if when == "running":
            await runtime.write_fields(ref, allow=5)
        rest = await resumed.until("complete", timeout=10)
        await resumed.expect_end()
    ids = [e.id for e in rest]
    assert ids == list(range(before[-1].id + 1, before[-1].id + 1 + len(ids))), resumed.trace()
    assert [e.type for e in rest] == ["progress"] * 3 + ["complete"], resumed.trace()
    assert [e.data.get("step") for e in rest[:-1]] == [3, 4, 5], resumed.trace()


@pytest.mark.case("MULTI-5")
@pytest.mark.requires(Capability.RECOVERY)
async def test_worker_when_killed_then_other_workers_clients_told_interrupted_others_carry_on(
    runtime: Runtime, spawn_server: Spawn, impl: Implementation
) -> None:
    doomed, survivor = await two_workers(spawn_server)
    lost = await runtime.create_task(behaviours.park)
    kept = await runtime.create_task(behaviours.stepper, {"total": 2})
    async with HttpClient(survivor.url) as there:
        of_lost = await there.subscribe(lost)
        of_kept = await there.subscribe(kept)
        await doomed.start_task(lost)
        await survivor.start_task(kept)
        await of_lost.until("start")
        await of_kept.until("start")
        doomed.send_signal(signal.SIGKILL)
        assert await doomed.wait_exit(10) == -signal.SIGKILL
        events = await of_lost.until(timeout=impl.timings.orphan_timeout + MARGIN)
        await of_lost.expect_end()
        assert events[-1].type == "interrupted", of_lost.trace()
        assert [e.type for e in events].count("interrupted") == 1, of_lost.trace()
        await runtime.write_fields(kept, allow=2)
        rest = await of_kept.until("complete", timeout=10)
        assert [e.type for e in rest] == ["progress", "progress", "complete"], of_kept.trace()
    await status_is(runtime, lost, TaskStatus.INTERRUPTED)
    await status_is(runtime, kept, TaskStatus.SUCCESSFUL)


@pytest.mark.case("MULTI-6")
@pytest.mark.requires(Capability.SIGNALS)
async def test_worker_when_draining_then_only_its_own_clients_get_farewell(
    runtime: Runtime, spawn_server: Spawn, impl: Implementation
) -> None:
    grace = 0.5
    draining, staying = await two_workers(spawn_server, grace=grace)
    parked = await runtime.create_task(behaviours.park)
    stepping = await runtime.create_task(behaviours.stepper, {"total": 2})
    async with HttpClient(draining.url) as here, HttpClient(staying.url) as there:
        own: ClientStream = await here.subscribe(parked)
        of_parked = await there.subscribe(parked)
        of_stepping = await there.subscribe(stepping)
        await draining.start_task(parked)
        await staying.start_task(stepping)
        for stream in (own, of_parked, of_stepping):
            await stream.until("start")
        draining.send_signal(signal.SIGTERM)
        farewell = await own.next(timeout=grace + MARGIN)
        assert farewell.type == FAREWELL_EVENT, own.trace()
        assert await draining.wait_exit(grace + MARGIN) == 0, draining.output()

        await runtime.write_fields(stepping, allow=2)
        rest = await of_stepping.until("complete", timeout=10)
        assert [e.type for e in rest] == ["progress", "progress", "complete"], (
            f"a client of a run on a worker that stays must carry on\n{of_stepping.trace()}"
        )
        ending = await of_parked.until(timeout=impl.timings.orphan_timeout + MARGIN)
        await of_parked.expect_end()
        assert [e.type for e in ending] == ["interrupted"], (
            f"a client on another worker must get the draining worker's run's terminal "
            f"event, not its farewell\n{of_parked.trace()}"
        )
