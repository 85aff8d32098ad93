"""Race conditions of fan-out (RACE): clients racing the stream, explored under seeds.

Clients join, read and leave while events flow, while the task ends or is
cancelled, while their connection is reset and under load. As in
``test_race_conditions.py``, each case runs under several seeds
(:mod:`conformance.races`), each seed another interleaving of the clients'
await points with the task's, and each checks its invariant under every
interleaving: every client gets consecutive ids from its join, the terminal
event once, and only its own task's events.
"""

from __future__ import annotations

import asyncio
from functools import partial

import pytest

from conformance import behaviours
from conformance.checks import consecutive, ids, terminals
from conformance.clients import Client, ClientStream, HttpClient, InProcessClient, format_trace
from conformance.contract import Capability, Runtime, TaskRef, TaskStatus
from conformance.races import (
    HighWater,
    Race,
    Storm,
    raise_first,
    replayable,
    seeds,
    storm_size,
    yields,
)
from conformance.waiting import finished, status_is, subscribers_are
from conformance.wire import connect_and_reset

pytestmark = pytest.mark.asyncio


# -- clients joining and leaving while the task runs or ends -------------------------------


@pytest.mark.case("RACE-1")
@seeds(3)
@replayable
async def test_hundred_clients_when_joining_and_leaving_while_events_flow_then_each_gets_a_run(
    runtime: Runtime, client: Client, inprocess: InProcessClient, race: Race
) -> None:
    clients = 100
    ref = await runtime.create_task(behaviours.ticker, {"interval": 0.002})
    watcher = await inprocess.subscribe(ref)
    assert await runtime.start_task(ref)
    mark = HighWater()
    await mark.saw(await watcher.next())
    arrivals = [race.rng.randint(1, 30) for _ in range(clients)]
    reads = [race.rng.randint(1, 15) for _ in range(clients)]
    gaps = race.draws(clients, 6)

    async def watch() -> None:
        while not (event := await watcher.next()).is_terminal:
            await mark.saw(event)

    async def visit(index: int) -> tuple[int, ClientStream]:
        await mark.reached(arrivals[index])
        await yields(gaps[index])
        floor = mark.value
        stream = await client.subscribe(ref)
        try:
            for _ in range(reads[index]):
                event = await stream.next()
                await mark.saw(event)
                if event.is_terminal:
                    break
        finally:
            await stream.aclose()
        return floor, stream

    watching = asyncio.create_task(watch(), name="race-1-watcher")
    try:
        visits = await race.interleave(*(partial(visit, i) for i in range(clients)), max_yields=6)
        raise_first(race, visits, "a client")
        await subscribers_are(runtime, 1, context=race)  # only the watcher is left
    finally:
        await runtime.write_fields(ref, stop=True)
        await watching
    for index, (floor, stream) in enumerate(visits):
        seen = ids(stream.seen)
        assert seen and seen[0] >= max(floor, 1), (
            f"{race}: client {index} joined after event {floor} was sent, so it must start at "
            f"the latest event at its join (id >= {floor}).\n{stream.trace()}"
        )
        assert consecutive(seen), (
            f"{race}: client {index} must receive consecutive ids from its join, nothing "
            f"missed or repeated.\n{stream.trace()}"
        )
    assert ids(watcher.seen) == list(range(1, len(watcher.seen) + 1)), (
        f"{race}: the watcher must see every event.\n{watcher.trace()}"
    )
    assert watcher.seen[-1].type == "complete", watcher.trace()
    await subscribers_are(runtime, 0, context=race)


@pytest.mark.case("RACE-2")
@seeds(4)
@replayable
async def test_client_when_subscribing_while_task_completes_then_gets_terminal_event_once(
    runtime: Runtime, client: Client, race: Race
) -> None:
    count = race.randint(0, 20, what="events")
    ref = await runtime.create_task(behaviours.burst, {"count": count})
    watcher = await client.subscribe(ref)
    storm = Storm(client, ref, race.draws(storm_size(client), 8))
    results = await race.interleave(
        partial(runtime.start_task, ref),
        partial(storm.watch, watcher),
        storm.run,
        names=["start", "watch", "storm"],
    )
    outcomes = await storm.results()
    raise_first(race, results, "an operation")
    raise_first(race, outcomes, "a client of the storm")
    for stream in [watcher, *storm.streams]:
        assert terminals(stream.seen) == ["complete"] and stream.seen[-1].id == count + 1, (
            f"{race}: a client that subscribes while the task completes must receive its "
            f"terminal event (#{count + 1} complete) exactly once, as its last.\n{stream.trace()}"
        )


@pytest.mark.case("RACE-10")
@seeds(4)
@replayable
async def test_events_when_clients_leave_while_sent_then_others_get_all_and_send_raises_nothing(
    runtime: Runtime, client: Client, race: Race
) -> None:
    count = race.randint(150, 300, what="events")
    ref = await runtime.create_task(behaviours.burst, {"count": count})
    staying = [await client.subscribe(ref) for _ in range(3)]
    leaving = [await client.subscribe(ref) for _ in range(5)]
    reads = [race.rng.randint(1, count) for _ in leaving]
    gaps = race.draws(len(leaving), 4)

    async def leave(index: int) -> None:
        for _ in range(reads[index]):
            await leaving[index].next()
        await yields(gaps[index])
        await leaving[index].aclose()

    assert await runtime.start_task(ref)
    results = await race.interleave(
        *(s.read_to_end for s in staying),
        *(partial(leave, i) for i in range(len(leaving))),
        names=[f"stay{i}" for i in range(len(staying))]
        + [f"leave{i}" for i in range(len(leaving))],
    )
    raise_first(race, results, "a client")
    expected = list(range(1, count + 2))
    for stream in staying:
        assert ids(stream.seen) == expected and terminals(stream.seen) == ["complete"], (
            f"{race}: a client that stays must receive every event, 1..{count + 1}, while "
            f"others leave.\n{stream.trace()}"
        )
    state = await finished(runtime, ref)
    assert state.status is TaskStatus.SUCCESSFUL, (
        f"{race}: sending while clients leave must raise nothing; the task ended {state}"
    )
    await subscribers_are(runtime, 0, context=race)


@pytest.mark.case("RACE-12")
@pytest.mark.requires(Capability.CANCEL)
@pytest.mark.parametrize("phase", ["ready", "running"])
@seeds(3)
@replayable
async def test_client_when_subscribing_while_task_is_cancelled_then_one_cancelled_event(
    runtime: Runtime, client: Client, race: Race, phase: str
) -> None:
    ref = await runtime.create_task(behaviours.park)
    watcher = await client.subscribe(ref)
    if phase == "running":
        assert await runtime.start_task(ref)
        await watcher.until("start")
    storm = Storm(client, ref, race.draws(storm_size(client), 8))
    results = await race.interleave(
        partial(runtime.cancel_task, ref, "racing subscribe"),
        partial(storm.watch, watcher),
        storm.run,
        names=["cancel", "watch", "storm"],
    )
    outcomes = await storm.results()
    raise_first(race, results, "an operation")
    raise_first(race, outcomes, "a client of the storm")
    assert results[0] is True, f"{race}: cancelling a {phase} task must return true"
    for stream in [watcher, *storm.streams]:
        assert terminals(stream.seen) == ["cancelled"], (
            f"{race}: a client that subscribes while the task is cancelled must receive exactly "
            f"one cancelled event, as its last.\n{stream.trace()}"
        )


@pytest.mark.case("RACE-18")
@seeds(4)
@replayable
async def test_client_when_leaving_during_final_fan_out_then_fan_out_ends_and_it_is_unregistered(
    runtime: Runtime, client: Client, race: Race
) -> None:
    count = race.randint(2, 10, what="events")
    ref = await runtime.create_task(behaviours.burst, {"count": count})
    staying = [await client.subscribe(ref) for _ in range(3)]
    leaving = [await client.subscribe(ref) for _ in range(6)]
    reads = [race.rng.randint(max(0, count - 2), count + 1) for _ in leaving]
    gaps = race.draws(len(leaving), 6)

    async def leave(index: int) -> None:
        stream = leaving[index]
        for _ in range(reads[index]):
            await stream.next()
        await yields(gaps[index])
        await stream.aclose()

    assert await runtime.start_task(ref)
    results = await race.interleave(
        *(s.read_to_end for s in staying),
        *(partial(leave, i) for i in range(len(leaving))),
    )
    raise_first(race, results, "a client")
    expected = list(range(1, count + 2))
    for stream in staying:
        assert ids(stream.seen) == expected and terminals(stream.seen) == ["complete"], (
            f"{race}: clients leaving during the final fan-out must not break it: every other "
            f"client receives the final event once.\n{stream.trace()}"
        )
    for stream in leaving:
        assert ids(stream.seen) == list(range(1, len(stream.seen) + 1)), f"{race}: {stream.trace()}"
    await status_is(runtime, ref, TaskStatus.SUCCESSFUL)
    await subscribers_are(runtime, 0, context=race)


# -- clients under load --------------------------------------------------------------------


@pytest.mark.case("RACE-13")
@pytest.mark.requires(Capability.HTTP)
@seeds(3)
@replayable
async def test_client_when_connection_reset_mid_stream_then_dropped_and_others_unaffected(
    runtime: Runtime, server_url: str, inprocess: InProcessClient, race: Race
) -> None:
    ref = await runtime.create_task(behaviours.ticker, {"interval": 0.003})
    async with HttpClient(server_url) as sse:
        others = [
            await sse.subscribe(ref),
            await sse.subscribe(ref),
            await inprocess.subscribe(ref),
        ]
        resets = race.randint(1, 3, what="resets")
        frames = [race.rng.randint(0, 3) for _ in range(resets)]
        assert await runtime.start_task(ref)
        results = await race.interleave(
            *(partial(connect_and_reset, server_url, ref, n) for n in frames),
            *(partial(o.next) for o in others),
            max_yields=6,
        )
        raise_first(race, results, "a client")
        await subscribers_are(runtime, len(others), context=race)
        await runtime.write_fields(ref, stop=True)
        for stream in others:
            await stream.read_to_end()
            assert ids(stream.seen) == list(range(1, len(stream.seen) + 1)), (
                f"{race}: the other clients must receive every event while a client's "
                f"connection is reset.\n{stream.trace()}"
            )
            assert terminals(stream.seen) == ["complete"], f"{race}: {stream.trace()}"


@pytest.mark.case("RACE-14")
@pytest.mark.requires(Capability.HTTP)
@pytest.mark.timeout(120)
@seeds(2)
@replayable
async def test_ten_thousand_events_when_many_clients_then_each_receives_every_event_in_order(
    runtime: Runtime, server_url: str, inprocess: InProcessClient, race: Race
) -> None:
    count = 10_000
    ref = await runtime.create_task(behaviours.burst, {"count": count})
    async with HttpClient(server_url) as sse:
        makers = [inprocess] * 20 + [sse] * 3
        subscribed = await race.interleave(*(partial(c.subscribe, ref) for c in makers))
        raise_first(race, subscribed, "a subscribe")
        streams: list[ClientStream] = subscribed
        assert await runtime.start_task(ref)
        results = await race.interleave(*(partial(s.read_to_end, 30) for s in streams))
        raise_first(race, results, "a client")
    expected = list(range(1, count + 2))
    for index, stream in enumerate(streams):
        ok = ids(stream.seen) == expected and [
            e.data.get("index") for e in stream.seen[:-1]
        ] == list(range(count))
        assert ok and stream.seen[-1].type == "complete", (
            f"{race}: under load every client must receive all {count} events, in order, then "
            f"complete; client {index} ({'http' if index >= 20 else 'in-process'}) got "
            f"{len(stream.seen)}, ending:\n{format_trace(stream.seen[-5:])}"
        )


@pytest.mark.case("RACE-15")
@seeds(3)
@replayable
async def test_tasks_when_running_side_by_side_then_each_client_gets_only_its_own_events(
    runtime: Runtime, client: Client, race: Race
) -> None:
    counts = [race.rng.randint(20, 80) for _ in range(4)]
    refs = [
        await runtime.create_task(behaviours.tagged_burst, {"count": n, "tag": f"task-{i}"})
        for i, n in enumerate(counts)
    ]

    async def watch(ref: TaskRef) -> ClientStream:
        return await (await client.subscribe(ref)).read_to_end()

    watches = [partial(watch, ref) for ref in refs for _ in range(2)]
    starts = [partial(runtime.start_task, ref) for ref in refs]
    results = await race.interleave(*watches, *starts, max_yields=6)
    raise_first(race, results, "an operation")
    streams: list[ClientStream] = results[: len(watches)]
    for index, stream in enumerate(streams):
        ref, tag = refs[index // 2], f"task-{index // 2}"
        foreign = [
            e
            for e in stream.seen
            if (e.task_id, e.model) != (ref.id, ref.model) or e.data.get("tag", tag) != tag
        ]
        assert not foreign and consecutive(ids(stream.seen)), (
            f"{race}: a client of {ref} must receive only its task's events ({tag}), with "
            f"consecutive ids; foreign: {foreign}.\n{stream.trace()}"
        )
        assert stream.seen[-1].id == counts[index // 2] + 1, f"{race}: {stream.trace()}"
