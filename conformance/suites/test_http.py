"""HTTP suite (HTTP): the SSE interface over a real socket.

A real uvicorn server on 127.0.0.1 serves the implementation's ASGI app;
these cases read the wire itself, not a parsed view of it, where the format
is the point.
"""

from __future__ import annotations

import asyncio
import json
import threading

import httpx
import pytest

from conformance import behaviours, hostile
from conformance.clients import HttpClient
from conformance.contract import (
    MAX_HEADER_BYTES,
    STREAM_RESET_EVENT,
    Capability,
    Implementation,
    Runtime,
    TaskStatus,
)
from conformance.servers import Spawn
from conformance.waiting import eventually, status_is
from conformance.wire import read_frames

pytestmark = [pytest.mark.asyncio, pytest.mark.requires(Capability.HTTP)]


@pytest.mark.case("HTTP-1")
async def test_health_when_server_accepts_work_then_200_ok(http: httpx.AsyncClient) -> None:
    response = await http.get("/health")
    assert (response.status_code, response.text.strip()) == (200, "OK")


@pytest.mark.case("HTTP-2")
async def test_stream_when_task_runs_then_wire_frames_have_event_data_json_and_id(
    runtime: Runtime, http: httpx.AsyncClient
) -> None:
    ref = await runtime.create_task(behaviours.steps, {"steps": 2, "message": "wire"})
    async with http.stream("GET", ref.stream_path) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        await runtime.start_task(ref)
        frames = await read_frames(response)
    assert [f.get("event") for f in frames] == ["start", "progress", "progress", "complete"], frames
    assert [f.get("id") for f in frames] == ["1", "2", "3", "4"], frames
    for frame in frames:
        payload = json.loads(frame["data"])
        assert isinstance(payload, dict), frame
        assert payload["_task_id"] in (ref.id, int(ref.id)), frame
        assert payload["_model"] == ref.model, frame
        assert payload["_timestamp"], frame
    assert json.loads(frames[0]["data"])["message"] == "wire"


@pytest.mark.case("HTTP-3")
@pytest.mark.parametrize(
    "path",
    ["/stream/NoSuchModel/1", "/stream/{model}/not-a-number", "/stream/{model}/987654321"],
    ids=["unknown-model", "non-integer-id", "unknown-id"],
)
async def test_stream_when_task_does_not_exist_then_404_with_reason(
    runtime: Runtime, http: httpx.AsyncClient, path: str
) -> None:
    ref = await runtime.create_task(behaviours.steps)
    response = await http.get(path.format(model=ref.model))
    assert response.status_code == 404, (response.status_code, response.text)
    assert response.text.strip(), "a 404 must say why"


@pytest.mark.case("HTTP-4")
async def test_stream_when_headers_received_then_client_misses_nothing_after(
    runtime: Runtime, sse: HttpClient
) -> None:
    ref = await runtime.create_task(behaviours.steps, {"steps": 2})
    streams = [await sse.subscribe(ref) for _ in range(10)]
    await runtime.start_task(ref)
    for stream in streams:
        events = await stream.until()
        assert [e.id for e in events] == [1, 2, 3, 4], stream.trace()


@pytest.mark.case("HTTP-5")
async def test_start_endpoint_when_ready_then_202_then_409_and_404_for_unknown(
    runtime: Runtime, http: httpx.AsyncClient, sse: HttpClient
) -> None:
    ref = await runtime.create_task(behaviours.stepper, {"total": 1})
    stream = await sse.subscribe(ref)
    first = await http.post(f"/tasks/{ref.model}/{ref.id}/start")
    assert first.status_code == 202, first.text
    await stream.until("start")
    again = await http.post(f"/tasks/{ref.model}/{ref.id}/start")
    assert again.status_code == 409 and again.text.strip(), again.text
    missing = await http.post(f"/tasks/{ref.model}/987654321/start")
    assert missing.status_code == 404 and missing.text.strip(), missing.text
    await runtime.write_fields(ref, allow=1)
    assert (await stream.until())[-1].type == "complete", stream.trace()


@pytest.mark.case("HTTP-6")
async def test_client_when_connection_closes_then_server_unregisters_it_and_task_runs_on(
    runtime: Runtime, sse: HttpClient
) -> None:
    ref = await runtime.create_task(behaviours.stepper, {"total": 1})
    stream = await sse.subscribe(ref)
    await runtime.start_task(ref)
    await stream.until("start")
    assert runtime.stats().subscribers == 1
    await stream.aclose()
    await eventually(
        lambda: runtime.stats().subscribers == 0, what="the server to notice the client left"
    )
    assert (await runtime.get_state(ref)).status is TaskStatus.RUNNING
    await runtime.write_fields(ref, allow=1)
    await status_is(runtime, ref, TaskStatus.SUCCESSFUL)


@pytest.mark.case("HTTP-7")
@pytest.mark.requires(Capability.RESUME)
async def test_reconnect_when_last_event_id_sent_then_missed_events_replayed_in_order(
    runtime: Runtime, sse: HttpClient
) -> None:
    ref = await runtime.create_task(behaviours.stepper, {"total": 4})
    first = await sse.subscribe(ref)
    await runtime.start_task(ref)
    await runtime.write_fields(ref, allow=1)
    seen = await first.until("progress")
    assert [e.id for e in seen] == [1, 2], first.trace()
    await first.aclose()
    await eventually(lambda: runtime.stats().subscribers == 0, what="the client to leave")

    await runtime.write_fields(ref, allow=3)
    await behaviours.reached(runtime, ref, 3)  # steps 2 and 3 sent unwatched
    resumed = await sse.subscribe(ref, last_event_id=2)
    replay = [await resumed.next(), await resumed.next()]
    assert [(e.id, e.data.get("step")) for e in replay] == [(3, 2), (4, 3)], resumed.trace()
    await runtime.write_fields(ref, allow=4)
    rest = await resumed.until()
    assert [e.id for e in rest] == [5, 6], resumed.trace()


@pytest.mark.case("HTTP-7")
@pytest.mark.requires(Capability.RESUME)
async def test_reconnect_when_many_events_missed_then_what_is_kept_and_reset_only_for_gaps(
    runtime: Runtime, sse: HttpClient
) -> None:
    # More events than a small history keeps, so some may be gone: then, and
    # only then, a stream-reset must come first.
    ref = await runtime.create_task(behaviours.burst, {"count": 5000})
    await runtime.start_task(ref)
    # SPEC states no throughput: the run may take its time (it is the replay that is judged).
    await status_is(runtime, ref, TaskStatus.SUCCESSFUL, timeout=60)
    resumed = await sse.subscribe(ref, last_event_id=1)
    first = await resumed.next()
    if first.type == STREAM_RESET_EVENT:
        oldest = first.data.get("oldest_available_id")
        assert isinstance(oldest, int) and oldest > 2, resumed.trace()
        rest = await resumed.until()
        assert rest[0].id == oldest, resumed.trace()
    else:
        assert first.id == 2, f"nothing announced gone: 2 comes first\n{resumed.trace()}"
        rest = [first, *await resumed.until()]
    ids = [e.id for e in rest]
    assert ids == list(range(ids[0], ids[0] + len(ids))), resumed.trace()
    assert rest[-1].type == "complete" and rest[-1].id == 5001, resumed.trace()


@pytest.mark.case("HTTP-8")
@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("GET", "/no/such/path", {404}),
        ("POST", "/stream/{model}/{id}", {404, 405}),
        ("GET", "/tasks/{model}/{id}/start", {404, 405}),
        ("DELETE", "/health", {404, 405}),
    ],
    ids=["unknown-path", "post-to-stream", "get-to-start", "delete-health"],
)
async def test_undefined_request_when_sent_then_404_or_405_with_reason(
    runtime: Runtime, http: httpx.AsyncClient, method: str, path: str, allowed: set[int]
) -> None:
    ref = await runtime.create_task(behaviours.steps)
    # Streamed: a server that answers with an event stream instead fails at
    # its status line, rather than keeping the case reading an endless body.
    async with http.stream(method, path.format(model=ref.model, id=ref.id)) as response:
        assert response.status_code in allowed, (
            response.status_code,
            response.headers.get("content-type"),
        )
        async with asyncio.timeout(10):
            reason = (await response.aread()).decode(errors="replace")
    assert reason.strip(), "the error must say why"


# -- HTTP-9, HTTP-10: what a server must refuse at its edge -------------------------------


@pytest.mark.case("HTTP-9")
async def test_websocket_handshake_when_sent_to_the_app_then_4xx_and_no_error_logged(
    runtime: Runtime, server_url: str
) -> None:
    ref = await runtime.create_task(behaviours.steps, {"steps": 1})
    with hostile.logged_errors() as errors:
        answers = await hostile.handshakes(server_url, ref)
    assert hostile.refused_with_4xx(answers), (
        f"each handshake must be refused with a 4xx: {answers}"
    )
    logged = [f"{r.name} {r.levelname}: {r.getMessage()}" for r in errors]
    assert not logged, f"WebSocket handshakes were logged as errors: {logged[:3]}"


@pytest.mark.case("HTTP-9")
@pytest.mark.requires(Capability.PROCESS, Capability.PERSISTENCE)
async def test_websocket_handshake_when_sent_to_a_server_process_then_4xx_and_no_error_logged(
    runtime: Runtime, spawn_server: Spawn
) -> None:
    server = await spawn_server()
    ref = await runtime.create_task(behaviours.steps, {"steps": 1})
    answers = {}
    for _ in range(5):  # a log line per handshake adds up: the finding was 385 KB for 500
        answers = await hostile.handshakes(server.url, ref)
        assert hostile.refused_with_4xx(answers), (
            f"each handshake must be refused with a 4xx: {answers}"
        )
    health = await server.request("GET", "/health")
    assert health.status_code == 200, server.output()
    stderr = server.stderr.decode(errors="replace")
    errors = [line for line in stderr.splitlines() if "ERROR" in line or "Traceback" in line]
    assert not errors, f"WebSocket handshakes were logged as errors:\n{server.output()}"


@pytest.mark.case("HTTP-10")
@pytest.mark.requires(Capability.PROCESS)
@pytest.mark.timeout(120)
async def test_request_head_when_over_the_declared_limit_then_refused_and_others_not_held_up(
    impl: Implementation, spawn_server: Spawn
) -> None:
    limit = impl.max_header_bytes
    assert 0 < limit <= MAX_HEADER_BYTES, (
        f"{impl.name} declares max_header_bytes={limit}; SPEC allows at most {MAX_HEADER_BYTES}."
    )
    server = await spawn_server()
    within = await asyncio.to_thread(hostile.request_with_header, server.url, "/health", limit // 4)
    assert within == 200, f"a head of a quarter of the limit ({limit // 4} bytes) got {within}"
    over = await asyncio.to_thread(hostile.request_with_header, server.url, "/health", limit + 4096)
    assert over is None or 400 <= over < 500, (
        f"a head 4 KiB over the declared {limit} bytes got {over}: it must be refused"
    )
    before = await hostile.latencies(server.url, "/health", 30)
    # Several connections at once could take the server's buffers and the kernel's
    # for a head each: the cap is what "little more than the limit" allows.
    cap = limit + 16 * 1024 * 1024
    stop = threading.Event()
    floods = [
        asyncio.create_task(asyncio.to_thread(hostile.flood_heads, server.url, stop, cap=cap))
        for _ in range(2)
    ]
    try:
        during = await hostile.latencies(server.url, "/health", 30)
    finally:
        stop.set()
        results = await asyncio.gather(*floods)
    sent = [n for flood in results for n in flood.sent]
    unrefused = sum(flood.unrefused for flood in results)
    assert sent, "the attack made no connection"
    assert unrefused == 0, (
        f"{unrefused} of {len(sent)} connections sent {cap} bytes of one request head "
        f"unrefused; the declared limit is {limit} bytes"
    )
    statuses = [status for flood in results for status in flood.statuses]
    assert all(400 <= status < 500 for status in statuses), f"answered with {statuses}"
    held_up = hostile.slowdown(before, during)
    assert held_up is None, f"{held_up}, while {len(sent)} endless heads were sent"
    health = await server.request("GET", "/health")
    assert health.status_code == 200, server.output()
