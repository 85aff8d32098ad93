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
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import socket
import struct
from collections.abc import AsyncIterator, Iterable, Sequence
from functools import partial
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import pytest_asyncio

from conformance import behaviours
from conformance import race_behaviours as rb
from conformance.clients import Client, ClientStream, HttpClient, InProcessClient, format_trace
from conformance.contract import (
    FAREWELL_EVENT,
    Capability,
    Event,
    Implementation,
    Runtime,
    RuntimeStats,
    TaskRef,
    TaskState,
    TaskStatus,
)
from conformance.races import Race, at_loop_time, replayable, seeds, yields, yields_during
from conformance.waiting import MARGIN, eventually, finished, status_is

pytestmark = pytest.mark.asyncio

#: The status a run's terminal event stands for.
STATUS_OF = {
    "complete": TaskStatus.SUCCESSFUL,
    "error": TaskStatus.FAILED,
    "cancelled": TaskStatus.CANCELLED,
    "timeout": TaskStatus.TIMED_OUT,
}
#: Seconds of work in a run that a case means to end only by cancelling it.
#: Delays in a race are loop turns, and on a loaded machine a few thousand
#: turns outlast any short sleep; this outlasts every case's deadline.
UNTIL_CANCELLED = 600.0


@pytest.fixture
def race(race_seed: int) -> Race:
    return Race(race_seed)


@pytest_asyncio.fixture
async def inprocess(runtime: Runtime) -> AsyncIterator[InProcessClient]:
    """An in-process client beside the parametrized one (a watcher, a control)."""
    client = InProcessClient(runtime)
    try:
        yield client
    finally:
        await client.aclose()


# -- helpers ----------------------------------------------------------------------


def ids(stream: ClientStream) -> list[int]:
    return [e.id for e in stream.seen]


def consecutive(numbers: Sequence[int]) -> bool:
    return all(b == a + 1 for a, b in itertools.pairwise(numbers))


def terminals(stream: ClientStream) -> list[str]:
    return [e.type for e in stream.seen if e.is_terminal]


def traces(streams: Iterable[ClientStream], limit: int = 8) -> str:
    shown = list(streams)
    text = "\n".join(f"client {i} of {s.ref}:\n{s.trace()}" for i, s in enumerate(shown[:limit]))
    if len(shown) > limit:
        text += f"\n(and {len(shown) - limit} more clients)"
    return text


def raise_first(race: Race, results: Iterable[Any], what: str) -> None:
    """Fail with the first exception an operation of the race ended with."""
    for result in results:
        if isinstance(result, BaseException):
            raise AssertionError(f"{race}: {what} raised {result!r}") from result


async def read_to_end(stream: ClientStream, timeout: float = 10.0) -> ClientStream:
    """Read through the terminal event; fail unless the stream then ends."""
    await stream.until(timeout=timeout)
    await stream.expect_end()
    return stream


async def post_at(when: float, server: Any, path: str, **kwargs: Any) -> httpx.Response:
    """POST ``path`` to ``server`` once the loop's clock reaches ``when``."""
    await at_loop_time(when)
    return await server.request("POST", path, **kwargs)


async def subscribers_are(runtime: Runtime, count: int, race: Race) -> None:
    await eventually(
        lambda: runtime.stats().subscribers == count,
        what=f"{count} registered subscriber(s) ({race}; stats {runtime.stats()})",
    )


async def start_span(runtime: Runtime) -> int:
    """Loop turns a start of a READY task lasts here (median of three): a yardstick."""
    turns = []
    for _ in range(3):
        probe = await runtime.create_task(behaviours.steps, {"steps": 0})
        started, took = await yields_during(runtime.start_task(probe))
        assert started is True, f"the probe {probe} did not start"
        await finished(runtime, probe)
        turns.append(took)
    return max(sorted(turns)[1], 1)


async def cancel_span(runtime: Runtime) -> int:
    """Loop turns a cancel of a READY task lasts here (median of three)."""
    turns = []
    for _ in range(3):
        probe = await runtime.create_task(behaviours.steps, {"steps": 0})
        _, took = await yields_during(runtime.cancel_task(probe, "probe"))
        turns.append(took)
    return max(sorted(turns)[1], 1)


def storm_size(client: Client) -> int:
    """The most clients a storm starts: HTTP ones each hold a connection of a bounded pool."""
    return 300 if client.mode == "inprocess" else 60


def run_markers(state: TaskState) -> list[str]:
    return sorted(k for k in state.fields if k.startswith(rb.RUN_MARKER))


def one_terminal_matching_status(
    race: Race, streams: Sequence[ClientStream], state: TaskState
) -> str:
    """Every client saw exactly one terminal event, last, all the same, matching ``state``."""
    for stream in streams:
        assert len(terminals(stream)) == 1 and stream.seen[-1].is_terminal, (
            f"{race}: each client must receive exactly one terminal event, as its last.\n"
            f"{stream.trace()}"
        )
    kinds = {stream.seen[-1].type for stream in streams}
    assert len(kinds) == 1, f"{race}: every client must get the same terminal event.\n" + traces(
        streams
    )
    (kind,) = kinds
    assert STATUS_OF[kind] is state.status, (
        f"{race}: clients were told {kind!r} but the stored status is {state.status}.\n"
        + traces(streams)
    )
    return kind


class HighWater:
    """The highest event id any client has seen: a floor under the latest event sent."""

    def __init__(self) -> None:
        self.value = 0
        self._changed = asyncio.Condition()

    async def saw(self, event: Event) -> None:
        if event.id > self.value:
            self.value = event.id
            async with self._changed:
                self._changed.notify_all()

    async def reached(self, event_id: int, timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(lambda: self.value >= event_id)


class Storm:
    """Clients that join one after another, seeded turns apart, each read to its end.

    A join does not wait for the one before it to be registered: subscribes
    overlap, so some are under way at every await point of the task's ending.
    The storm lasts until :attr:`ended` is set (the watcher saw the terminal
    event) and ``extra`` more clients have joined, so its clients span the
    ending: before, during and after. The number of gaps caps it.
    """

    def __init__(self, client: Client, ref: TaskRef, gaps: Sequence[int], extra: int = 3) -> None:
        self.client = client
        self.ref = ref
        self.gaps = gaps
        self.extra = extra
        self.ended = asyncio.Event()
        self.streams: list[ClientStream] = []
        self._joins: list[asyncio.Task[ClientStream]] = []

    async def watch(self, watcher: ClientStream) -> None:
        try:
            await read_to_end(watcher)
        finally:
            self.ended.set()

    async def run(self) -> None:
        after = 0
        for index, gap in enumerate(self.gaps):
            await yields(gap)
            self._joins.append(asyncio.create_task(self._join(), name=f"storm-{index}"))
            if self.ended.is_set():
                after += 1
                if after >= self.extra:
                    return

    async def _join(self) -> ClientStream:
        stream = await self.client.subscribe(self.ref)
        self.streams.append(stream)
        return await read_to_end(stream)

    async def results(self) -> list[Any]:
        return await asyncio.gather(*self._joins, return_exceptions=True)


async def connect_and_reset(base_url: str, ref: TaskRef, frames: int) -> int:
    """GET the stream on a raw socket, read ``frames`` SSE frames, then reset the connection."""
    url = urlsplit(base_url)
    host, port = url.hostname or "127.0.0.1", url.port or 80
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(
            f"GET {ref.stream_path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
            "Accept: text/event-stream\r\n\r\n".encode()
        )
        await writer.drain()
        async with asyncio.timeout(5):
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200"), head
            body = b""
            # Each frame ends with a blank line; chunked framing never adds "\n\n".
            while body.count(b"\n\n") < frames:
                chunk = await reader.read(65536)
                assert chunk, f"the stream ended after {body!r}"
                body += chunk
    finally:
        # SO_LINGER (on, 0 s): close() sends RST, not FIN; the server sees a reset.
        writer.get_extra_info("socket").setsockopt(
            socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
        )
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    return body.count(b"\n\n")


# -- subscribing while things happen --------------------------------------------------------


@pytest.mark.case("RACE-1")
@seeds(3)
@replayable
async def test_hundred_clients_when_joining_and_leaving_while_events_flow_then_each_gets_a_run(
    runtime: Runtime, client: Client, inprocess: InProcessClient, race: Race
) -> None:
    clients = 100
    ref = await runtime.create_task(rb.ticker, {"interval": 0.002})
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
        await subscribers_are(runtime, 1, race)  # only the watcher is left
    finally:
        await runtime.write_fields(ref, stop=True)
        await watching
    for index, (floor, stream) in enumerate(visits):
        seen = ids(stream)
        assert seen and seen[0] >= max(floor, 1), (
            f"{race}: client {index} joined after event {floor} was sent, so it must start at "
            f"the latest event at its join (id >= {floor}).\n{stream.trace()}"
        )
        assert consecutive(seen), (
            f"{race}: client {index} must receive consecutive ids from its join, nothing "
            f"missed or repeated.\n{stream.trace()}"
        )
    assert ids(watcher) == list(range(1, len(watcher.seen) + 1)), (
        f"{race}: the watcher must see every event.\n{watcher.trace()}"
    )
    assert watcher.seen[-1].type == "complete", watcher.trace()
    await subscribers_are(runtime, 0, race)


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
        assert terminals(stream) == ["complete"] and stream.seen[-1].id == count + 1, (
            f"{race}: a client that subscribes while the task completes must receive its "
            f"terminal event (#{count + 1} complete) exactly once, as its last.\n{stream.trace()}"
        )


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
    _, span = await yields_during(read_to_end(watcher))  # a whole run, in loop turns
    for lag in race.spread(4, span + span // 4):
        race.note(f"cancel {lag} turns after start (a run lasts {span})")
        ref = await runtime.create_task(behaviours.burst, {"count": count})
        streams = [await client.subscribe(ref) for _ in range(3)]
        assert await runtime.start_task(ref)
        await yields(lag)
        cancelled = await runtime.cancel_task(ref, reason="racing completion")
        for stream in streams:
            await read_to_end(stream)
        kind = one_terminal_matching_status(race, streams, await finished(runtime, ref))
        assert cancelled is (kind == "cancelled"), (
            f"{race}: cancel_task returned {cancelled}, but clients were told {kind!r}: it must "
            f"return true exactly when the task ends cancelled.\n{traces(streams)}"
        )


@pytest.mark.case("RACE-4")
@seeds(5)
@replayable
async def test_starts_when_concurrent_in_one_runtime_then_exactly_one_true_and_one_run(
    runtime: Runtime, inprocess: InProcessClient, race: Race
) -> None:
    span = await start_span(runtime)
    ref = await runtime.create_task(rb.count_runs)
    stream = await inprocess.subscribe(ref)
    starts = race.randint(2, 6, what="starts")
    results = await race.interleave(
        *([partial(runtime.start_task, ref)] * starts), delays=race.spread(starts, span)
    )
    raise_first(race, results, "a start")
    assert [r is True for r in results].count(True) == 1 and results.count(False) == starts - 1, (
        f"{race}: of {starts} concurrent starts exactly one must return true, got {results}"
    )
    await read_to_end(stream)
    assert [e.type for e in stream.seen] == ["started", "complete"], (
        f"{race}: the task must run once.\n{stream.trace()}"
    )
    state = await status_is(runtime, ref, TaskStatus.SUCCESSFUL)
    assert len(run_markers(state)) == 1, f"{race}: the task must run once; it stored {state.fields}"


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
        ref = await runtime.create_task(rb.count_runs)
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
        assert len(run_markers(state)) == 1, (
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
    runtime: Runtime, spawn_server: Any, race: Race
) -> None:
    first = await spawn_server(grace=2)
    second = await spawn_server(grace=2)
    async with httpx.AsyncClient(timeout=10) as http:
        # Several tasks per pair of processes: each is raced under its own part of the seed.
        for _ in range(3):
            ref = await runtime.create_task(rb.count_runs)
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
            state = await eventually(
                lambda ref=ref: _finished_or_none(runtime, ref),
                timeout=10,
                what=f"{ref} to finish in a server process",
            )
            assert state.status is TaskStatus.SUCCESSFUL and len(run_markers(state)) == 1, (
                f"{race}: the task must run once, in one process; stored {state}"
            )


async def _finished_or_none(runtime: Runtime, ref: TaskRef) -> TaskState | None:
    state = await runtime.get_state(ref)
    return state if state.status.is_finished else None


# -- stored fields ------------------------------------------------------------------------


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
    ref = await runtime.create_task(rb.field_writer, {"writes": writes, "seed": race.seed})
    stream = await inprocess.subscribe(ref)
    assert await runtime.start_task(ref)
    await stream.until("start")
    results = await race.interleave(
        *(partial(runtime.write_fields, ref, **{f"case_{i}": i}) for i in range(writes)),
        max_yields=6,
    )
    raise_first(race, results, "an update")
    await read_to_end(stream)
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
    await read_to_end(stream)
    assert terminals(stream) == ["cancelled"], f"{race}: {stream.trace()}"
    fields = (await status_is(runtime, ref, TaskStatus.CANCELLED)).fields
    expected = {f"case_{i}": i for i in range(updates)}
    if phase == "running":
        expected |= {"finally_ran": True, "released": True}  # the task's own cleanup writes
    lost = {k: v for k, v in expected.items() if fields.get(k) != v}
    assert not lost, (
        f"{race}: a cancel concurrent with field updates must keep both the CANCELLED status "
        f"and every field; lost {lost} (stored {dict(fields)})"
    )


# -- fan-out ------------------------------------------------------------------------------


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
        *(partial(read_to_end, s) for s in staying),
        *(partial(leave, i) for i in range(len(leaving))),
        names=[f"stay{i}" for i in range(len(staying))]
        + [f"leave{i}" for i in range(len(leaving))],
    )
    raise_first(race, results, "a client")
    expected = list(range(1, count + 2))
    for stream in staying:
        assert ids(stream) == expected and terminals(stream) == ["complete"], (
            f"{race}: a client that stays must receive every event, 1..{count + 1}, while "
            f"others leave.\n{stream.trace()}"
        )
    state = await finished(runtime, ref)
    assert state.status is TaskStatus.SUCCESSFUL, (
        f"{race}: sending while clients leave must raise nothing; the task ended {state}"
    )
    await subscribers_are(runtime, 0, race)


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
        assert terminals(stream) == ["cancelled"], (
            f"{race}: a client that subscribes while the task is cancelled must receive exactly "
            f"one cancelled event, as its last.\n{stream.trace()}"
        )


@pytest.mark.case("RACE-13")
@pytest.mark.requires(Capability.HTTP)
@seeds(3)
@replayable
async def test_client_when_connection_reset_mid_stream_then_dropped_and_others_unaffected(
    runtime: Runtime, server_url: str, inprocess: InProcessClient, race: Race
) -> None:
    ref = await runtime.create_task(rb.ticker, {"interval": 0.003})
    sse = HttpClient(server_url)
    try:
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
        await subscribers_are(runtime, len(others), race)
        await runtime.write_fields(ref, stop=True)
        for stream in others:
            await read_to_end(stream)
            assert ids(stream) == list(range(1, len(stream.seen) + 1)), (
                f"{race}: the other clients must receive every event while a client's "
                f"connection is reset.\n{stream.trace()}"
            )
            assert terminals(stream) == ["complete"], f"{race}: {stream.trace()}"
    finally:
        await sse.aclose()


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
    sse = HttpClient(server_url)
    try:
        makers = [inprocess] * 20 + [sse] * 3
        subscribed = await race.interleave(*(partial(c.subscribe, ref) for c in makers))
        raise_first(race, subscribed, "a subscribe")
        streams: list[ClientStream] = subscribed
        assert await runtime.start_task(ref)
        results = await race.interleave(*(partial(read_to_end, s, 30) for s in streams))
        raise_first(race, results, "a client")
    finally:
        await sse.aclose()
    expected = list(range(1, count + 2))
    for index, stream in enumerate(streams):
        ok = ids(stream) == expected and [e.data.get("index") for e in stream.seen[:-1]] == list(
            range(count)
        )
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
        await runtime.create_task(rb.tagged_burst, {"count": n, "tag": f"task-{i}"})
        for i, n in enumerate(counts)
    ]

    async def watch(ref: TaskRef) -> ClientStream:
        return await read_to_end(await client.subscribe(ref))

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
        assert not foreign and consecutive(ids(stream)), (
            f"{race}: a client of {ref} must receive only its task's events ({tag}), with "
            f"consecutive ids; foreign: {foreign}.\n{stream.trace()}"
        )
        assert stream.seen[-1].id == counts[index // 2] + 1, f"{race}: {stream.trace()}"


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
            await read_to_end(stream)
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
        ref = await runtime.create_task(rb.work_for, {"work": work}, timeout=work + offset)
        streams = [await client.subscribe(ref) for _ in range(2)]
        assert await runtime.start_task(ref)
        for stream in streams:
            await read_to_end(stream)
        kind = one_terminal_matching_status(race, streams, await finished(runtime, ref))
        assert kind in ("complete", "timeout"), f"{race}: {traces(streams)}"


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
        *(partial(read_to_end, s) for s in staying),
        *(partial(leave, i) for i in range(len(leaving))),
    )
    raise_first(race, results, "a client")
    for stream in staying:
        assert ids(stream) == list(range(1, count + 2)) and terminals(stream) == ["complete"], (
            f"{race}: clients leaving during the final fan-out must not break it: every other "
            f"client receives the final event once.\n{stream.trace()}"
        )
    for stream in leaving:
        assert ids(stream) == list(range(1, len(stream.seen) + 1)), f"{race}: {stream.trace()}"
    await status_is(runtime, ref, TaskStatus.SUCCESSFUL)
    await subscribers_are(runtime, 0, race)


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
        ref = await runtime.create_task(rb.work_then_mark, {"work": UNTIL_CANCELLED})
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
            await read_to_end(stream)
            assert terminals(stream) == ["cancelled"], (
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
    impl: Implementation, runtime: Runtime, spawn_server: Any, race: Race
) -> None:
    starts, cancels = await spawn_server(grace=2), await spawn_server(grace=2)
    clients = [HttpClient(starts.url), HttpClient(cancels.url)]
    deadline = impl.timings.cancel_grace + MARGIN
    try:
        # The cancel is posted to one worker at seeded offsets (seconds) from
        # the start posted to the other: before the start's claim, during it,
        # after it. Whichever worker writes the row first, the cancel of a
        # READY or RUNNING task wins.
        for offset in race.offsets(6, -0.005, 0.02):
            race.note(f"cancel {offset * 1000:+.1f} ms from the start")
            ref = await runtime.create_task(rb.work_then_mark, {"work": UNTIL_CANCELLED})
            streams = [await client.subscribe(ref) for client in clients]
            base = f"/tasks/{ref.model}/{ref.id}"
            at = asyncio.get_running_loop().time() + 0.01
            results = await asyncio.gather(
                post_at(at, starts, f"{base}/start"),
                post_at(at + offset, cancels, f"{base}/cancel", json={"reason": "raced"}),
                return_exceptions=True,
            )
            raise_first(race, results, "a request")
            started, cancelled = results
            assert started.status_code in (202, 409), (started.status_code, started.text)
            assert (cancelled.status_code, cancelled.json()) == (200, {"cancelled": True}), (
                f"{race}: a cancel of a READY task posted to one worker while another "
                f"starts it must answer cancelled true (the start answered "
                f"{started.status_code}); it answered {cancelled.status_code} "
                f"{cancelled.text}"
            )
            for stream in streams:
                await read_to_end(stream, timeout=deadline)
                assert terminals(stream) == ["cancelled"], (
                    f"{race}: every client on every worker must receive exactly one "
                    f"cancelled event (the start answered {started.status_code}).\n"
                    f"{stream.trace()}"
                )
            state = await status_is(runtime, ref, TaskStatus.CANCELLED, timeout=deadline)
            assert not state.fields.get("work_done"), f"{race}: cancelled, yet its work completed"
    finally:
        for client in clients:
            await client.aclose()


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
            ref = await other.create_task(rb.work_for, {"work": work})
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
        ref = await runtime.create_task(rb.work_then_mark, {"work": work})
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
            await read_to_end(stream)
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
