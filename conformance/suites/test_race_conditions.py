"""Race conditions suite (RACE): explored under seeds, not hoped for.

Every case runs under several seeds (:mod:`conformance.races`): a seed fixes
the order in which the case's concurrent operations start and how many
``sleep(0)`` yields precede each, so each seed is another interleaving and a
failure names the seed that replays it. Each case checks its invariant under
every interleaving, whichever operation wins: the assertions accept every
legal outcome of the race and nothing else.

Two-sided races (start and cancel, start and shutdown, cancel and
completion) run several rounds per seed, sweeping one operation across the
other's await points (``Race.sweep``), so every seed visits the narrow
windows rather than hoping to. Where one party is a deadline (a timeout),
the other is placed at seeded offsets around it on the loop's own clock.

Here operations race each other: starts, cancels, timeouts, shutdowns and
writes of fields. Clients racing the stream are in ``test_race_fanout.py``.
"""

from __future__ import annotations

import asyncio
from functools import partial

import pytest

from conformance import behaviours
from conformance.checks import one_terminal_matching_status, terminals, traces
from conformance.clients import Client, HttpClient, InProcessClient, http_client
from conformance.contract import (
    FAREWELL_EVENT,
    Capability,
    Implementation,
    Runtime,
    RuntimeStats,
    TaskStatus,
)
from conformance.races import (
    Race,
    at_loop_time,
    cancel_span,
    post_at,
    raise_first,
    replayable,
    seeds,
    start_span,
    yields,
    yields_during,
)
from conformance.servers import Spawn
from conformance.waiting import MARGIN, eventually, finished, status_is

pytestmark = pytest.mark.asyncio

#: Seconds of work in a run that a case means to end only by cancelling it.
#: Delays in a race are loop turns, and on a loaded machine a few thousand
#: turns outlast any short sleep; this outlasts every case's deadline.
UNTIL_CANCELLED = 600.0


# -- starts --------------------------------------------------------------------------------


@pytest.mark.case("RACE-4")
@seeds(5)
@replayable
async def test_starts_when_concurrent_in_one_runtime_then_exactly_one_true_and_one_run(
    runtime: Runtime, inprocess: InProcessClient, race: Race
) -> None:
    span = await start_span(runtime)
    ref = await runtime.create_task(behaviours.count_runs)
    stream = await inprocess.subscribe(ref)
    starts = race.randint(2, 6, what="starts")
    results = await race.interleave(
        *([partial(runtime.start_task, ref)] * starts), delays=race.spread(starts, span)
    )
    raise_first(race, results, "a start")
    assert [r is True for r in results].count(True) == 1 and results.count(False) == starts - 1, (
        f"{race}: of {starts} concurrent starts exactly one must return true, got {results}"
    )
    await stream.read_to_end()
    assert [e.type for e in stream.seen] == ["started", "complete"], (
        f"{race}: the task must run once.\n{stream.trace()}"
    )
    state = await status_is(runtime, ref, TaskStatus.SUCCESSFUL)
    assert len(behaviours.run_markers(state)) == 1, (
        f"{race}: the task must run once; it stored {state.fields}"
    )


@pytest.mark.case("RACE-5")
@pytest.mark.requires(Capability.PERSISTENCE)
@seeds(4)
@replayable
async def test_starts_when_concurrent_from_two_runtimes_then_exactly_one_true_and_one_run(
    impl: Implementation, runtime: Runtime, race: Race
) -> None:
    span = await start_span(runtime)
    other = await impl.start()
    try:
        ref = await runtime.create_task(behaviours.count_runs)
        each = race.randint(1, 3, what="starts per runtime")
        results = await race.interleave(
            *([partial(runtime.start_task, ref)] * each + [partial(other.start_task, ref)] * each),
            names=[f"here{i}" for i in range(each)] + [f"there{i}" for i in range(each)],
            delays=race.spread(2 * each, span),
        )
        raise_first(race, results, "a start")
        assert [r is True for r in results].count(True) == 1, (
            f"{race}: of the concurrent starts in two runtimes sharing the database exactly "
            f"one must return true, got {results} (first {each} here, the rest there)"
        )
        state = await status_is(runtime, ref, TaskStatus.SUCCESSFUL)
        assert len(behaviours.run_markers(state)) == 1, (
            f"{race}: the task must run once across both runtimes; it stored {state.fields}"
        )
        await eventually(
            lambda: runtime.stats().running_tasks == other.stats().running_tasks == 0,
            what="both runtimes to finish the run",
        )
    finally:
        await other.shutdown(2.0)
    assert other.stats() == RuntimeStats(0, 0, 0), f"the other runtime holds {other.stats()}"


@pytest.mark.case("RACE-6")
@pytest.mark.requires(Capability.PROCESS, Capability.HTTP, Capability.PERSISTENCE)
@pytest.mark.timeout(120)
@seeds(2)
@replayable
async def test_starts_when_posted_to_two_server_processes_then_exactly_one_202(
    runtime: Runtime, spawn_server: Spawn, race: Race
) -> None:
    first = await spawn_server(grace=2)
    second = await spawn_server(grace=2)
    async with http_client() as http:
        # Several tasks per pair of processes: each is raced under its own part of the seed.
        for _ in range(3):
            ref = await runtime.create_task(behaviours.count_runs)
            path = f"/tasks/{ref.model}/{ref.id}/start"
            each = race.randint(1, 2, what="posts per server")
            responses = await race.interleave(
                *[partial(http.post, first.url + path) for _ in range(each)],
                *[partial(http.post, second.url + path) for _ in range(each)],
                max_yields=6,
            )
            raise_first(race, responses, "a POST")
            codes = [r.status_code for r in responses]
            assert sorted(codes) == [202] + [409] * (2 * each - 1), (
                f"{race}: of concurrent starts posted to two server processes sharing the "
                f"database exactly one must answer 202 and the rest 409, got {codes} (first "
                f"{each} to one server).\n{first.output()}\n{second.output()}"
            )
            state = await finished(runtime, ref, timeout=10)
            assert (
                state.status is TaskStatus.SUCCESSFUL and len(behaviours.run_markers(state)) == 1
            ), f"{race}: the task must run once, in one process; stored {state}"


# -- stored fields -------------------------------------------------------------------------


@pytest.mark.case("RACE-7")
@pytest.mark.requires(Capability.PERSISTENCE)
@seeds(4)
@replayable
async def test_field_updates_when_concurrent_from_outside_then_none_is_lost(
    runtime: Runtime, race: Race
) -> None:
    ref = await runtime.create_task(behaviours.steps, {"steps": 1})
    writers = race.randint(5, 15, what="writers")
    results = await race.interleave(
        *(partial(runtime.write_fields, ref, **{f"case_{i}": i}) for i in range(writers)),
        max_yields=6,
    )
    raise_first(race, results, "an update")
    fields = (await runtime.get_state(ref)).fields
    lost = [f"case_{i}" for i in range(writers) if fields.get(f"case_{i}") != i]
    assert not lost and fields.get("steps") == 1, (
        f"{race}: concurrent updates of different fields must all be kept; lost {lost} "
        f"(stored {dict(fields)})"
    )


@pytest.mark.case("RACE-8")
@pytest.mark.requires(Capability.PERSISTENCE)
@seeds(4)
@replayable
async def test_fields_when_task_and_outside_write_at_once_then_all_are_kept(
    runtime: Runtime, inprocess: InProcessClient, race: Race
) -> None:
    writes = race.randint(5, 10, what="writes each")
    ref = await runtime.create_task(behaviours.field_writer, {"writes": writes, "seed": race.seed})
    stream = await inprocess.subscribe(ref)
    assert await runtime.start_task(ref)
    await stream.until("start")
    results = await race.interleave(
        *(partial(runtime.write_fields, ref, **{f"case_{i}": i}) for i in range(writes)),
        max_yields=6,
    )
    raise_first(race, results, "an update")
    await stream.read_to_end()
    fields = (await status_is(runtime, ref, TaskStatus.SUCCESSFUL)).fields
    lost = [
        f"{who}_{i}"
        for who in ("task", "case")
        for i in range(writes)
        if f"{who}_{i}" not in fields
    ]
    assert not lost, (
        f"{race}: fields the task wrote and fields written from outside at the same time "
        f"must all be kept; lost {lost} (stored {dict(fields)})"
    )


@pytest.mark.case("RACE-9")
@pytest.mark.requires(Capability.CANCEL, Capability.PERSISTENCE)
@pytest.mark.parametrize("phase", ["ready", "running"])
@seeds(3)
@replayable
async def test_cancel_when_concurrent_with_field_updates_then_cancelled_and_fields_kept(
    runtime: Runtime, inprocess: InProcessClient, race: Race, phase: str
) -> None:
    ref = await runtime.create_task(behaviours.cleanup_probe)
    stream = await inprocess.subscribe(ref)
    if phase == "running":
        assert await runtime.start_task(ref)
        await stream.until("start")
    updates = race.randint(3, 8, what="updates")
    results = await race.interleave(
        partial(runtime.cancel_task, ref, "racing updates"),
        *(partial(runtime.write_fields, ref, **{f"case_{i}": i}) for i in range(updates)),
        names=["cancel", *(f"update{i}" for i in range(updates))],
        max_yields=6,
    )
    raise_first(race, results, "an operation")
    assert results[0] is True, f"{race}: cancelling a {phase} task must return true"
    await stream.read_to_end()
    assert terminals(stream.seen) == ["cancelled"], f"{race}: {stream.trace()}"
    fields = (await status_is(runtime, ref, TaskStatus.CANCELLED)).fields
    expected = {f"case_{i}": i for i in range(updates)}
    if phase == "running":
        expected |= {"finally_ran": True, "released": True}  # the task's own cleanup writes
    lost = {k: v for k, v in expected.items() if fields.get(k) != v}
    assert not lost, (
        f"{race}: a cancel concurrent with field updates must keep both the CANCELLED status "
        f"and every field; lost {lost} (stored {dict(fields)})"
    )


# -- cancels, timeouts and shutdowns racing the run ----------------------------------------


@pytest.mark.case("RACE-3")
@pytest.mark.requires(Capability.CANCEL)
@seeds(4)
@replayable
async def test_cancel_when_racing_completion_then_one_terminal_event_matching_status(
    runtime: Runtime, client: Client, race: Race
) -> None:
    count = race.randint(0, 8, what="events")
    probe = await runtime.create_task(behaviours.burst, {"count": count})
    watcher = await client.subscribe(probe)
    assert await runtime.start_task(probe)
    _, span = await yields_during(watcher.read_to_end())  # a whole run, in loop turns
    for lag in race.spread(4, span + span // 4):
        race.note(f"cancel {lag} turns after start (a run lasts {span})")
        ref = await runtime.create_task(behaviours.burst, {"count": count})
        streams = [await client.subscribe(ref) for _ in range(3)]
        assert await runtime.start_task(ref)
        await yields(lag)
        cancelled = await runtime.cancel_task(ref, reason="racing completion")
        for stream in streams:
            await stream.read_to_end()
        kind = one_terminal_matching_status(race, streams, await finished(runtime, ref))
        assert cancelled is (kind == "cancelled"), (
            f"{race}: cancel_task returned {cancelled}, but clients were told {kind!r}: it must "
            f"return true exactly when the task ends cancelled.\n{traces(streams)}"
        )


@pytest.mark.case("RACE-11")
@pytest.mark.parametrize("work", ["quick", "parked"])
@seeds(3)
@replayable
async def test_shutdown_when_concurrent_with_start_then_task_never_left_running(
    impl: Implementation, runtime: Runtime, race: Race, work: str
) -> None:
    behaviour = behaviours.steps if work == "quick" else behaviours.park
    spans = {"start": await start_span(runtime), "shutdown": 8}
    # A runtime shuts down once: each round races a fresh one on the same database.
    for first, lag in race.sweep(spans, 3):
        race.note(f"{first} first, the other {lag} turns later")
        other = await impl.start()
        client = InProcessClient(other)
        try:
            ref = await other.create_task(behaviour, {"steps": 2})
            stream = await client.subscribe(ref)
            started, stopped = await race.interleave(
                partial(other.start_task, ref),
                partial(other.shutdown, 0.05),
                names=["start", "shutdown"],
                delays=[0, lag] if first == "start" else [lag, 0],
            )
            raise_first(race, [stopped], "shutdown")
            state = await other.get_state(ref)
            refused = started is not True  # False, or the exception that refused it
            allowed = (
                {TaskStatus.READY} if refused else {TaskStatus.SUCCESSFUL, TaskStatus.INTERRUPTED}
            )
            assert state.status in allowed, (
                f"{race}: after shutdown concurrent with a start that returned {started!r}, "
                f"the task must be {' or '.join(sorted(allowed))}, never RUNNING; it is "
                f"{state.status}"
            )
            assert other.stats().running_tasks == 0, f"{race}: shutdown left {other.stats()}"
            await stream.until(FAREWELL_EVENT, "complete", "cancelled", "error", "timeout")
            await stream.expect_end()
            told = "complete" if state.status is TaskStatus.SUCCESSFUL else FAREWELL_EVENT
            assert stream.seen[-1].type == told, (
                f"{race}: a waiting client must be told how it ended ({told}).\n{stream.trace()}"
            )
        finally:
            await client.aclose()
            await other.shutdown(0.05)
        assert other.stats() == RuntimeStats(0, 0, 0), f"{race}: the runtime holds {other.stats()}"


@pytest.mark.case("RACE-16")
@pytest.mark.requires(Capability.CANCEL, Capability.TIMEOUTS)
@seeds(3)
@replayable
async def test_timeout_when_racing_cancel_then_one_terminal_event_matching_status(
    runtime: Runtime, client: Client, race: Race
) -> None:
    limit = 0.03
    for offset in race.offsets(5, -0.003, 0.003):
        race.note(f"cancel {offset * 1000:+.2f} ms from the timeout")
        ref = await runtime.create_task(behaviours.park, timeout=limit)
        streams = [await client.subscribe(ref) for _ in range(2)]
        assert await runtime.start_task(ref)
        await at_loop_time(asyncio.get_running_loop().time() + limit + offset)
        cancelled = await runtime.cancel_task(ref, reason="racing the timeout")
        for stream in streams:
            await stream.read_to_end()
        kind = one_terminal_matching_status(race, streams, await finished(runtime, ref))
        assert kind in ("cancelled", "timeout"), f"{race}: {traces(streams)}"
        assert cancelled is (kind == "cancelled"), (
            f"{race}: cancel_task returned {cancelled} but clients were told {kind!r}: it must "
            f"return true exactly when the task ends cancelled.\n{traces(streams)}"
        )


@pytest.mark.case("RACE-17")
@pytest.mark.requires(Capability.TIMEOUTS)
@seeds(3)
@replayable
async def test_timeout_when_racing_completion_then_one_terminal_event_matching_status(
    runtime: Runtime, client: Client, race: Race
) -> None:
    work = 0.03
    for offset in race.offsets(5, -0.003, 0.003):
        race.note(f"timeout {offset * 1000:+.2f} ms from the end of the work")
        ref = await runtime.create_task(behaviours.work_for, {"work": work}, timeout=work + offset)
        streams = [await client.subscribe(ref) for _ in range(2)]
        assert await runtime.start_task(ref)
        for stream in streams:
            await stream.read_to_end()
        kind = one_terminal_matching_status(race, streams, await finished(runtime, ref))
        assert kind in ("complete", "timeout"), f"{race}: {traces(streams)}"


@pytest.mark.case("RACE-19")
@pytest.mark.requires(Capability.CANCEL)
@seeds(3)
@replayable
async def test_cancel_when_racing_start_of_ready_task_then_cancelled_once_and_work_never_done(
    runtime: Runtime, client: Client, race: Race
) -> None:
    spans = {"start": await start_span(runtime), "cancel": await cancel_span(runtime)}
    for first, lag in race.sweep(spans, 6):
        race.note(f"{first} first, the other {lag} turns later")
        ref = await runtime.create_task(behaviours.work_then_mark, {"work": UNTIL_CANCELLED})
        streams = [await client.subscribe(ref) for _ in range(2)]
        started, cancelled = await race.interleave(
            partial(runtime.start_task, ref),
            partial(runtime.cancel_task, ref, "racing start"),
            names=["start", "cancel"],
            delays=[0, lag] if first == "start" else [lag, 0],
        )
        raise_first(race, [started, cancelled], "an operation")
        assert cancelled is True, (
            f"{race}: cancelling a READY task while it is being started must return true "
            f"(start returned {started})"
        )
        for stream in streams:
            await stream.read_to_end()
            assert terminals(stream.seen) == ["cancelled"], (
                f"{race}: every client must receive exactly one cancelled event (start "
                f"returned {started}).\n{stream.trace()}"
            )
        await status_is(runtime, ref, TaskStatus.CANCELLED)
        await eventually(lambda: runtime.stats().running_tasks == 0, what="the run to end")
        state = await runtime.get_state(ref)
        assert state.status is TaskStatus.CANCELLED and not state.fields.get("work_done"), (
            f"{race}: a task cancelled while starting must end CANCELLED with its work never "
            f"completed (start returned {started}); stored {state}"
        )


@pytest.mark.case("RACE-19")
@pytest.mark.requires(
    Capability.CANCEL,
    Capability.MULTI_WORKER,
    Capability.PROCESS,
    Capability.HTTP,
    Capability.PERSISTENCE,
)
@pytest.mark.timeout(120)
@seeds(2)
@replayable
async def test_cancel_when_racing_a_start_on_another_worker_then_cancelled_and_told_everywhere(
    impl: Implementation, runtime: Runtime, spawn_server: Spawn, race: Race
) -> None:
    starts, cancels = await spawn_server(grace=2), await spawn_server(grace=2)
    deadline = impl.timings.cancel_grace + MARGIN
    async with HttpClient(starts.url) as here, HttpClient(cancels.url) as there:
        clients = [here, there]
        # The cancel is posted to one worker at seeded offsets (seconds) from
        # the start posted to the other: before the start's claim, during it,
        # after it. Whichever worker writes the row first, the cancel of a
        # READY or RUNNING task wins.
        for offset in race.offsets(6, -0.005, 0.02):
            race.note(f"cancel {offset * 1000:+.1f} ms from the start")
            ref = await runtime.create_task(behaviours.work_then_mark, {"work": UNTIL_CANCELLED})
            streams = [await client.subscribe(ref) for client in clients]
            base = f"/tasks/{ref.model}/{ref.id}"
            at = asyncio.get_running_loop().time() + 0.01
            results = await asyncio.gather(
                post_at(at, starts, f"{base}/start"),
                post_at(at + offset, cancels, f"{base}/cancel", json={"reason": "raced"}),
                return_exceptions=True,
            )
            started, cancelled = raise_first(race, results, "a request")
            assert started.status_code in (202, 409), (started.status_code, started.text)
            assert (cancelled.status_code, cancelled.json()) == (200, {"cancelled": True}), (
                f"{race}: a cancel of a READY task posted to one worker while another "
                f"starts it must answer cancelled true (the start answered "
                f"{started.status_code}); it answered {cancelled.status_code} "
                f"{cancelled.text}"
            )
            for stream in streams:
                await stream.read_to_end(timeout=deadline)
                assert terminals(stream.seen) == ["cancelled"], (
                    f"{race}: every client on every worker must receive exactly one "
                    f"cancelled event (the start answered {started.status_code}).\n"
                    f"{stream.trace()}"
                )
            state = await status_is(runtime, ref, TaskStatus.CANCELLED, timeout=deadline)
            assert not state.fields.get("work_done"), f"{race}: cancelled, yet its work completed"


@pytest.mark.case("RACE-20")
@seeds(3)
@replayable
async def test_shutdown_when_racing_the_end_of_a_run_then_never_running_and_clients_told_which(
    impl: Implementation, runtime: Runtime, race: Race
) -> None:
    work = 0.05
    # The grace period ends within a few milliseconds of the task's own end,
    # on either side: the two timers race, and so do the outcome's write and
    # the shutdown that stops whatever is still running.
    for grace in race.offsets(4, work - 0.01, work + 0.01):
        race.note(f"grace {grace:.4f}s for {work}s of work")
        other = await impl.start()
        client = InProcessClient(other)
        try:
            ref = await other.create_task(behaviours.work_for, {"work": work})
            streams = [await client.subscribe(ref) for _ in range(2)]
            assert await other.start_task(ref)
            await other.shutdown(grace)
            state = await other.get_state(ref)
            assert state.status in (TaskStatus.SUCCESSFUL, TaskStatus.INTERRUPTED), (
                f"{race}: a run ending as shutdown stops it must be recorded SUCCESSFUL or "
                f"INTERRUPTED, never left {state.status}"
            )
            told = set()
            for stream in streams:
                await stream.until("complete", FAREWELL_EVENT)
                await stream.expect_end()
                told.add(stream.seen[-1].type)
            expected = "complete" if state.status is TaskStatus.SUCCESSFUL else FAREWELL_EVENT
            assert told == {expected}, (
                f"{race}: the task is {state.status}, so every client must end with "
                f"{expected!r}.\n" + traces(streams)
            )
        finally:
            await client.aclose()
            await other.shutdown(0.05)
        assert other.stats() == RuntimeStats(0, 0, 0), f"{race}: the runtime holds {other.stats()}"


@pytest.mark.case("RACE-21")
@pytest.mark.requires(Capability.CANCEL)
@seeds(3)
@replayable
async def test_starts_and_cancels_when_many_callers_at_once_then_one_consistent_outcome(
    runtime: Runtime, client: Client, race: Race
) -> None:
    spans = max(await start_span(runtime), await cancel_span(runtime))
    for round_ in range(4):
        callers = race.randint(3, 5, what=f"round {round_}: callers")
        # At least one start; cancels as the seed falls, none in some rounds.
        kinds = ["start"] + [race.rng.choice(["start", "cancel"]) for _ in range(callers - 1)]
        race.note(" ".join(kinds))
        # With a cancel among the callers, the run lasts until it is cancelled,
        # however long the interleaving takes; without one, it ends soon.
        work = UNTIL_CANCELLED if "cancel" in kinds else 0.05
        ref = await runtime.create_task(behaviours.work_then_mark, {"work": work})
        streams = [await client.subscribe(ref) for _ in range(2)]
        operations = [
            partial(runtime.start_task, ref)
            if kind == "start"
            else partial(runtime.cancel_task, ref)
            for kind in kinds
        ]
        results = await race.interleave(
            *operations, names=kinds, delays=race.spread(len(kinds), spans)
        )
        raise_first(race, results, "a start or cancel")
        started = [r for k, r in zip(kinds, results, strict=True) if k == "start" and r is True]
        cancelled = [r for k, r in zip(kinds, results, strict=True) if k == "cancel" and r is True]
        assert len(started) <= 1, f"{race}: {len(started)} starts of one task returned true"
        for stream in streams:
            await stream.read_to_end()
        state = await finished(runtime, ref)
        kind = one_terminal_matching_status(race, streams, state)
        # The work lasts until cancelled: each cancel found the task READY or RUNNING.
        if "cancel" in kinds:
            assert state.status is TaskStatus.CANCELLED and cancelled, (
                f"{race}: {kinds} returned {results}: a cancel of a READY or RUNNING task "
                f"must win, yet the task is {state.status}"
            )
            assert not state.fields.get("work_done"), f"{race}: cancelled, yet its work completed"
        else:
            assert started and kind == "complete", f"{race}: {kinds} -> {results}: {state}"
        await eventually(lambda: runtime.stats().running_tasks == 0, what="the run to end")
