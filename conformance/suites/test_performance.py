"""Performance suite (PERF): bounds and scaling, measured from outside, never wall-clock times.

Seed 001 proposes "many concurrent tasks, many clients per task, event order
under load, memory after 1,000 tasks". Each case here states a bound that
holds on a loaded machine too: counts of what clients receive, a real server
process's resident memory and CPU time read through ``psutil``, and ratios
between two runs of the same work. How fast is the benchmark's question
(``python -m conformance bench``), answered against a baseline in one run.
"""

from __future__ import annotations

import asyncio
import itertools

import pytest

from conformance import behaviours
from conformance.clients import Client
from conformance.contract import Capability, Runtime, TaskStatus
from conformance.servers import Spawn, cpu_for, rss
from conformance.waiting import finished
from conformance.wire import close_streams, frame_ids, open_streams, raw_frames, stream_bodies

pytestmark = pytest.mark.asyncio

process_case = pytest.mark.requires(Capability.PROCESS, Capability.HTTP, Capability.PERSISTENCE)

MB = 1024 * 1024
#: What doubling the work may cost at most: twice, plus room for noise; a cost
#: that grows with the square of clients or events would show four times.
LINEAR = 3.0


@pytest.mark.case("PERF-1")
@pytest.mark.timeout(180)
async def test_hundred_tasks_when_started_at_once_then_all_complete_in_order(
    runtime: Runtime, client: Client
) -> None:
    refs = [await runtime.create_task(behaviours.steps, {"steps": 5}) for _ in range(100)]
    streams = [await client.subscribe(ref) for ref in refs]
    started = await asyncio.gather(*(runtime.start_task(ref) for ref in refs))
    assert all(started), started
    for stream in streams:
        events = await stream.until(timeout=60)
        assert [e.type for e in events] == ["start", *["progress"] * 5, "complete"], stream.trace()
        assert [e.id for e in events] == list(range(1, 8)), stream.trace()
    for ref in refs:
        assert (await finished(runtime, ref)).status is TaskStatus.SUCCESSFUL


@pytest.mark.case("PERF-2")
@process_case
@pytest.mark.timeout(180)
async def test_thousand_clients_of_one_task_when_it_runs_then_each_gets_every_event_in_order(
    runtime: Runtime, spawn_server: Spawn
) -> None:
    server = await spawn_server()
    count = 50
    ref = await runtime.create_task(behaviours.burst, {"count": count})
    readers = await open_streams(server.url, ref, 1000)
    await server.start_task(ref)
    received = await stream_bodies(readers, timeout=120)
    expected = list(range(1, count + 2))
    wrong = [n for n, body in enumerate(received) if frame_ids(body) != expected]
    assert not wrong, f"{len(wrong)} of 1000 clients missed or reordered events: {wrong[:5]}"
    last = raw_frames(received[0])[-1]
    assert last.get("event") == "complete", last


@pytest.mark.case("PERF-3")
@process_case
@pytest.mark.timeout(180)
async def test_ten_thousand_events_when_sent_back_to_back_then_each_client_gets_all_in_order(
    runtime: Runtime, spawn_server: Spawn
) -> None:
    server = await spawn_server()
    count = 10_000
    ref = await runtime.create_task(behaviours.burst, {"count": count})
    readers = await open_streams(server.url, ref, 10)
    await server.start_task(ref)
    received = await stream_bodies(readers, timeout=120)
    for number, body in enumerate(received):
        ids = frame_ids(body)
        assert ids == list(range(1, count + 2)), (
            f"client {number} got {len(ids)} events of {count + 1}; first gap after "
            f"{next((a for a, b in itertools.pairwise(ids) if b != a + 1), None)}"
        )


@pytest.mark.case("PERF-4")
@process_case
@pytest.mark.timeout(300)
async def test_server_when_many_tasks_ran_then_memory_grew_less_than_the_bound(
    runtime: Runtime, spawn_server: Spawn
) -> None:
    server = await spawn_server()

    async def run_batch(size: int) -> None:
        refs = [await runtime.create_task(behaviours.steps, {"steps": 2}) for _ in range(size)]
        await asyncio.gather(*(server.start_task(ref) for ref in refs))
        for ref in refs:
            state = await finished(runtime, ref, timeout=60)
            assert state.status is TaskStatus.SUCCESSFUL, state

    await run_batch(50)  # warm up: imports, caches, pools
    before = rss(server)
    for _ in range(8):
        await run_batch(50)
    grown = rss(server) - before
    print(f"PERF-4: {grown / MB:.1f} MB after 400 tasks")
    # 30 KiB a task: what a run, its topic or its client, kept for ever, costs.
    assert grown < 12 * MB, f"resident memory grew by {grown / MB:.1f} MB over 400 tasks"


@pytest.mark.case("PERF-5")
@process_case
@pytest.mark.timeout(180)
async def test_server_when_a_thousand_idle_streams_are_open_then_each_costs_less_than_the_bound(
    runtime: Runtime, spawn_server: Spawn
) -> None:
    server = await spawn_server()
    ref = await runtime.create_task(behaviours.park)
    await server.start_task(ref)
    await close_streams(await open_streams(server.url, ref, 200))  # warm up: buffers, pools
    before = rss(server)
    readers = await open_streams(server.url, ref, 1000)
    try:
        per_stream = (rss(server) - before) / 1000
    finally:
        await close_streams(readers)
    print(f"PERF-5: {per_stream / 1024:.1f} KB per idle stream")
    assert per_stream < 64 * 1024, f"{per_stream / 1024:.1f} KB of resident memory per idle stream"


@pytest.mark.case("PERF-6")
@process_case
@pytest.mark.timeout(300)
async def test_server_cpu_when_clients_or_events_double_then_it_about_doubles(
    runtime: Runtime, spawn_server: Spawn
) -> None:
    server = await spawn_server()
    await cpu_for(server, runtime, clients=50, events=200)  # warm up
    # The smallest of three runs of each, taken in turns: another process on
    # the machine only adds CPU time (cache misses, switches), and whatever
    # load comes and goes falls on all three kinds alike.
    shapes = {"base": (100, 1000), "more_clients": (200, 1000), "more_events": (100, 2000)}
    spent: dict[str, list[float]] = {name: [] for name in shapes}
    for _ in range(3):
        for name, (clients, events) in shapes.items():
            spent[name].append(await cpu_for(server, runtime, clients=clients, events=events))
    base, more_clients, more_events = (min(spent[name]) for name in shapes)
    assert more_clients < LINEAR * base, f"{more_clients:.3f}s for 2x clients vs {base:.3f}s"
    assert more_events < LINEAR * base, f"{more_events:.3f}s for 2x events vs {base:.3f}s"
