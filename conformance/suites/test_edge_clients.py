"""Edge cases from the clients' side (EDGE): clients that vanish or stop reading, odd input.

The other half of seed 001's faults (the first is in ``test_edge_cases.py``):
a client whose connection is reset or whose process is killed, one that
stops reading or reads slowly, a 10 MB event, data no encoding may bend,
malformed requests and request heads that never end. Each is made real on a
socket; the implementation must notice it within the deadlines it declares
(``Implementation.timings``) and carry on serving everyone else.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math

import httpx
import hypothesis
import pytest

from conformance import behaviours, hostile
from conformance.checks import types
from conformance.clients import Client, HttpClient, http_client
from conformance.contract import Capability, Implementation, Runtime, TaskStatus
from conformance.hostile import build_request, hostile_request, nested, status_of
from conformance.servers import Spawn, rss
from conformance.waiting import MARGIN, WaitTimeout, eventually, status_is
from conformance.wire import (
    killed_client,
    open_raw_stream,
    raw_frames,
    read_slowly,
    reset,
    server_side_connection,
)

pytestmark = pytest.mark.asyncio

MiB = 1024 * 1024

process_case = pytest.mark.requires(Capability.PROCESS, Capability.HTTP, Capability.PERSISTENCE)


# -- clients that vanish or stop reading -------------------------------------------------


@pytest.mark.case("EDGE-16")
@pytest.mark.requires(Capability.HTTP)
@pytest.mark.parametrize("how", ["reset", "killed"])
async def test_client_when_connection_reset_or_process_killed_then_unregistered_in_keepalive(
    runtime: Runtime, server_url: str, impl: Implementation, how: str
) -> None:
    ref = await runtime.create_task(behaviours.stepper, {"total": 1})
    async with HttpClient(server_url) as sse:
        staying = await sse.subscribe(ref)
        await runtime.start_task(ref)
        await staying.until("start")
        if how == "reset":
            _, writer = await open_raw_stream(server_url, ref)
            await eventually(lambda: runtime.stats().subscribers == 2, what="the client in")
            reset(writer)
        else:
            await killed_client(server_url, ref)
        await eventually(
            lambda: runtime.stats().subscribers == 1,
            timeout=impl.timings.keepalive + MARGIN,
            what="the vanished client to be unregistered",
        )
        await runtime.write_fields(ref, allow=1)
        assert types(await staying.until()) == ["progress", "complete"], staying.trace()


@pytest.mark.case("EDGE-17")
@pytest.mark.requires(Capability.HTTP)
@pytest.mark.timeout(120)
async def test_client_when_it_stops_reading_then_its_connection_is_closed_and_others_get_all(
    runtime: Runtime, server_url: str, impl: Implementation
) -> None:
    count = 1500
    ref = await runtime.create_task(behaviours.big_events, {"size": 16_000, "count": count})
    port = int(server_url.rsplit(":", 1)[1])
    _, stalled = await open_raw_stream(server_url, ref, receive_buffer=4096)
    client_port = stalled.get_extra_info("sockname")[1]
    try:
        async with HttpClient(server_url) as sse:
            reader = await sse.subscribe(ref)
            await eventually(lambda: runtime.stats().subscribers == 2, what="both clients in")
            await runtime.start_task(ref)
            events = await reader.until(timeout=60)
            indexes = [e.data["index"] for e in events if e.type == "big"]
            assert indexes == list(range(count)), f"{len(indexes)} of {count} events, in order?"
            assert events[-1].type == "complete", reader.trace()
        await eventually(
            lambda: not server_side_connection(port, client_port),
            timeout=impl.timings.write_deadline + MARGIN,
            what="the server to close the connection of the client that stopped reading",
        )
        await eventually(lambda: runtime.stats().subscribers == 0, what="it unregistered")
    finally:
        stalled.transport.abort()


@pytest.mark.case("EDGE-17")
@pytest.mark.requires(Capability.HTTP)
@pytest.mark.timeout(180)
async def test_client_when_reading_slowly_but_steadily_then_never_cut_off(
    runtime: Runtime, server_url: str, impl: Implementation
) -> None:
    # One event whose single write takes about three write deadlines to drain:
    # a deadline on the whole write, rather than on a write that stopped
    # moving, closes this client.
    size = 8 * 1024 * 1024
    ref = await runtime.create_task(behaviours.big_events, {"size": size})
    reader, writer = await open_raw_stream(server_url, ref, receive_buffer=4096)
    try:
        await runtime.start_task(ref)
        body = await read_slowly(
            reader, rate=size / (3 * impl.timings.write_deadline), until=b"event: complete"
        )
    finally:
        writer.transport.abort()
    frames = raw_frames(body, cut=True)
    big = next(frame for frame in frames if frame.get("event") == "big")
    assert behaviours.digest(json.loads(big["data"])["body"]) == behaviours.digest(
        behaviours.pattern(size)
    )


# -- big and odd payloads --------------------------------------------------------------


@pytest.mark.case("EDGE-18")
@pytest.mark.timeout(120)
async def test_ten_megabyte_event_when_sent_then_every_client_gets_it_intact(
    runtime: Runtime, client: Client
) -> None:
    size = 10 * 1024 * 1024
    ref = await runtime.create_task(behaviours.big_events, {"size": size})
    streams = [await client.subscribe(ref) for _ in range(3)]
    await runtime.start_task(ref)
    expected = behaviours.digest(behaviours.pattern(size))
    # All three read at once: a client left unread while another takes the
    # 10 MB in is a client that stopped reading, and EDGE-17 cuts it off.
    received = await asyncio.gather(*(stream.until(timeout=60) for stream in streams))
    for big, complete in received:
        assert (big.type, complete.type) == ("big", "complete")
        body = big.data["body"]
        assert len(body) == size and behaviours.digest(body) == expected, "the body was altered"
        assert complete.data.get("digest") == expected


@pytest.mark.case("EDGE-19")
async def test_odd_event_data_and_error_message_when_sent_then_arrive_intact(
    runtime: Runtime, client: Client
) -> None:
    odd = await runtime.create_task(behaviours.odd_payload)
    failing = await runtime.create_task(behaviours.raise_odd)
    streams = [await client.subscribe(odd), await client.subscribe(failing)]
    await runtime.start_task(odd)
    await runtime.start_task(failing)
    events = await streams[0].until()
    assert types(events) == ["odd", "complete"], streams[0].trace()
    assert dict(events[0].data) == dict(behaviours.ODD_DATA), streams[0].trace()
    error = (await streams[1].until())[-1]
    assert error.data.get("message") == behaviours.ODD_MESSAGE, streams[1].trace()
    state = await status_is(runtime, failing, TaskStatus.FAILED)
    assert "ValueError" in state.error, state


#: SPEC's ceiling on a declared budget of finished tasks' events (EDGE-20).
MAX_FINISHED_EVENTS = 64 * MiB


@pytest.mark.case("EDGE-20")
@pytest.mark.requires(Capability.PROCESS, Capability.HTTP, Capability.PERSISTENCE)
@pytest.mark.timeout(180)
async def test_server_when_many_tasks_with_big_events_finished_then_memory_is_bounded(
    impl: Implementation, runtime: Runtime, spawn_server: Spawn
) -> None:
    budget = impl.budgets.finished_events
    assert 0 < budget <= MAX_FINISHED_EVENTS, (
        f"{impl.name} declares finished_events={budget}; SPEC allows at most 64 MiB."
    )
    # Four times the budget, two 1 MiB events a task: what is kept past the
    # budget shows, while the memory of work in progress stays small.
    tasks = max(16, math.ceil(4 * budget / (2 * MiB)))
    bound = budget + 32 * MiB
    server = await spawn_server()

    async def run_one() -> None:
        ref = await runtime.create_task(behaviours.big_events, {"size": MiB, "count": 2})
        async with HttpClient(server.url) as sse:
            stream = await sse.subscribe(ref)  # a client, so the events are also encoded
            await server.start_task(ref)
            await stream.until(timeout=60)
        await status_is(runtime, ref, TaskStatus.SUCCESSFUL, timeout=60)

    await run_one()  # one-time costs: imports, caches, the first arenas
    before = rss(server)
    for _ in range(tasks):
        await run_one()
    grown = rss(server) - before
    print(f"EDGE-20: {grown / MiB:.1f} MiB after {tasks} tasks (bound {bound / MiB:g} MiB)")
    assert grown < bound, (
        f"resident memory grew by {grown / MiB:.0f} MiB after {tasks} tasks sent "
        f"{2 * tasks} MiB of events; the declared budget of {budget / MiB:g} MiB allows "
        f"{bound / MiB:g} MiB"
    )


# -- hostile input ----------------------------------------------------------------------


HOSTILE_EXAMPLES = 300


@pytest.mark.case("EDGE-21")
@pytest.mark.requires(Capability.PROCESS, Capability.HTTP, Capability.PERSISTENCE)
@pytest.mark.timeout(180)
async def test_server_when_sent_malformed_requests_then_never_5xx_nor_traceback(
    runtime: Runtime, spawn_server: Spawn
) -> None:
    server = await spawn_server()
    ref = await runtime.create_task(behaviours.steps, {"steps": 1})
    answered: list[tuple[int | None, bytes]] = []

    cancel = f"/tasks/{ref.model}/{ref.id}/cancel"

    @hypothesis.settings(
        max_examples=HOSTILE_EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(hypothesis.HealthCheck),
    )
    @hypothesis.given(hostile_request(ref.model, ref.id))
    # Each of these once answered 500 with a traceback; they stay in every run.
    @hypothesis.example(build_request("GET", ref.stream_path, [(b"Last-Event-ID", b"\x80")], b""))
    @hypothesis.example(build_request("GET", ref.stream_path, [(b"X-Any", b"\xff\xfe")], b""))
    @hypothesis.example(build_request("POST", cancel, [], nested(20_000)))
    @hypothesis.example(build_request("POST", cancel, [], b"[" * 50_000))
    def send(request: bytes) -> None:
        status = status_of(server.url, request)
        answered.append((status, request[:200]))
        assert status is None or status < 500, (status, request[:300])

    await asyncio.to_thread(send)
    assert sum(status is not None for status, _ in answered) > HOSTILE_EXAMPLES // 2, answered[:5]
    health = await server.request("GET", "/health")
    assert (health.status_code, health.text.strip()) == (200, "OK"), server.output()
    stderr = server.stderr.decode(errors="replace")
    assert "Traceback" not in stderr and "Exception in ASGI" not in stderr, server.output()


@pytest.mark.case("EDGE-22")
@pytest.mark.requires(Capability.HTTP)
async def test_task_id_when_not_canonical_decimal_then_404_and_no_task_reached(
    runtime: Runtime, server_url: str
) -> None:
    ref = await runtime.create_task(behaviours.steps, {"steps": 1})
    arabic = "".join(chr(0x660 + int(d)) for d in ref.id).encode()
    variants = [
        f"+{ref.id}",
        f"%20{ref.id}",
        f"{ref.id}%20",
        f"0{ref.id}",
        f"{ref.id}.0",
        f"{ref.id}_0" if len(ref.id) == 1 else f"{ref.id[0]}_{ref.id[1:]}",
        "".join(f"%{b:02X}" for b in arabic),
        "9" * 20,
        f"-{ref.id}",
    ]

    async def answer(http: httpx.AsyncClient, method: str, path: str) -> tuple[int, str]:
        """The status and text of a request; a stream that opened is not read (it may not end)."""
        try:
            async with asyncio.timeout(10), http.stream(method, path) as response:
                if response.headers.get("content-type", "").startswith("text/event-stream"):
                    return response.status_code, "(a stream of the task: it was reached)"
                return response.status_code, (await response.aread()).decode(errors="replace")
        except TimeoutError:
            return 0, "(no answer within 10 s)"

    wrong = []
    async with http_client(server_url) as http:
        for variant in variants:
            for method, path in (
                ("GET", f"/stream/{ref.model}/{variant}"),
                ("POST", f"/tasks/{ref.model}/{variant}/start"),
            ):
                status, text = await answer(http, method, path)
                if status != 404 or not text.strip():
                    wrong.append(f"{method} with id {variant!r}: {status} {text[:80]!r}")
    assert not wrong, (
        f"ids that are not canonical decimal must answer 404 with a reason and reach no task "
        f"(the task is {ref}):\n" + "\n".join(wrong)
    )
    assert (await runtime.get_state(ref)).status is TaskStatus.READY


#: Connections whose request heads never end, in EDGE-24: hundreds, as SPEC
#: says, and few enough for any machine's descriptor limit.
SLOW_CONNECTIONS = 200


@pytest.mark.case("EDGE-24")
@process_case
@pytest.mark.timeout(150)
async def test_connections_when_their_request_heads_never_end_then_others_served_and_they_closed(
    impl: Implementation, runtime: Runtime, spawn_server: Spawn
) -> None:
    header_timeout = impl.timings.header_timeout
    assert 0 < header_timeout <= 60, (
        f"{impl.name} declares header_timeout={header_timeout}; SPEC allows at most 60 s."
    )
    server = await spawn_server()
    ref = await runtime.create_task(behaviours.stepper, {"total": 2})
    before = await hostile.latencies(server.url, "/health", 30)
    # The trickling half sends a header line four times per timeout: a server
    # that times out only silence between reads would never close them.
    async with hostile.slow_connections(
        server.url, SLOW_CONNECTIONS, interval=header_timeout / 4
    ) as slow:
        during = await hostile.latencies(server.url, "/health", 30)
        async with HttpClient(server.url) as client:
            stream = await client.subscribe(ref)
            await server.start_task(ref)
            await stream.until("start")
            await runtime.write_fields(ref, allow=2)
            events = await stream.until()
        assert [e.type for e in events][-1] == "complete", stream.trace()
        held_up = hostile.slowdown(before, during)
        assert held_up is None, f"{held_up}, with {SLOW_CONNECTIONS} unfinished requests open"
        deadline = header_timeout + MARGIN
        loop = asyncio.get_running_loop()
        last_due = max(c.opened for c in slow) + deadline
        with contextlib.suppress(WaitTimeout):
            await eventually(
                lambda: all(c.closed is not None for c in slow),
                timeout=max(0.0, last_due - loop.time()),
                what="the server to close every unfinished request",
            )
        now = loop.time()
        late = [c for c in slow if (c.closed or now) - c.opened > deadline]
        open_still = sum(c.closed is None for c in slow)
        assert not late, (
            f"{len(late)} of {SLOW_CONNECTIONS} connections with unfinished request heads were "
            f"not closed within the declared header_timeout of {header_timeout:g}s "
            f"(+{MARGIN:g}s); {open_still} still open, "
            f"{sum(c.trickle for c in late)} of them sending a header line every "
            f"{header_timeout / 4:g}s"
        )
        answers = {c.answer[:12] for c in slow if c.answer}
        assert all(answer.startswith(b"HTTP/1.1 4") for answer in answers), answers
