"""Shutdown suite (SHUT): draining on a real signal, and in process.

The seed's server had no shutdown handler at all, so every deployment killed
its tasks mid-run; under uvicorn, peers hang at "Waiting for connections to
close" while SSE streams stay open. The process cases start the
implementation's real server, connect real clients over 127.0.0.1 and send
real signals; the in-process cases call ``Runtime.shutdown``.
"""

from __future__ import annotations

import asyncio
import json
import signal

import pytest

from conformance import behaviours
from conformance.checks import farewell_then_end
from conformance.clients import Client, HttpClient, http_client, request
from conformance.contract import (
    FAREWELL_EVENT,
    Behaviour,
    Capability,
    Runtime,
    RuntimeClosed,
    TaskStatus,
)
from conformance.servers import Spawn, draining, draining_server
from conformance.waiting import eventually, status_is
from conformance.wire import event_types, open_streams, raw_frames, sse_frames, stream_bodies

pytestmark = pytest.mark.asyncio

#: Seconds beyond the grace period a server may take to exit.
EXIT_MARGIN = 3.0

process_case = pytest.mark.requires(Capability.PROCESS, Capability.SIGNALS, Capability.HTTP)


# -- real processes, real signals ------------------------------------------------


@pytest.mark.case("SHUT-1")
@process_case
async def test_server_with_open_stream_when_sigterm_then_exits_zero_within_grace(
    runtime: Runtime, spawn_server: Spawn
) -> None:
    # An open SSE stream is what makes a plain uvicorn wait forever on shutdown.
    server = await spawn_server(grace=1)
    ref = await runtime.create_task(behaviours.park)
    async with HttpClient(server.url) as sse:
        stream = await sse.subscribe(ref)
        await server.start_task(ref)
        await stream.until("start")
        server.send_signal(signal.SIGTERM)
        assert await server.wait_exit(1 + EXIT_MARGIN) == 0, server.output()


@pytest.mark.case("SHUT-2")
@process_case
async def test_server_with_open_stream_when_sigint_then_exits_zero_within_grace(
    runtime: Runtime, spawn_server: Spawn
) -> None:
    # An open SSE stream is what makes a plain uvicorn wait forever on shutdown.
    server = await spawn_server(grace=1)
    ref = await runtime.create_task(behaviours.park)
    async with HttpClient(server.url) as sse:
        stream = await sse.subscribe(ref)
        await server.start_task(ref)
        await stream.until("start")
        server.send_signal(signal.SIGINT)
        assert await server.wait_exit(1 + EXIT_MARGIN) == 0, server.output()


@pytest.mark.case("SHUT-3")
@process_case
async def test_idle_server_when_sigterm_then_exits_within_one_second(
    runtime: Runtime, spawn_server: Spawn
) -> None:
    server = await spawn_server(grace=10)
    server.send_signal(signal.SIGTERM)
    assert await server.wait_exit(1.0) == 0, server.output()


@pytest.mark.case("SHUT-4")
@process_case
async def test_open_streams_when_sigterm_then_each_gets_farewell_with_last_id_then_ends(
    runtime: Runtime, spawn_server: Spawn
) -> None:
    server = await spawn_server(grace=0.5)
    ref = await runtime.create_task(behaviours.park)
    async with HttpClient(server.url) as sse:
        streams = [await sse.subscribe(ref) for _ in range(3)]
        await server.start_task(ref)
        for stream in streams:
            await stream.until("start")
        server.send_signal(signal.SIGTERM)
        for stream in streams:
            data = await farewell_then_end(stream)
            assert data.get("last_event_id") == stream.seen[-2].id == 1, stream.trace()
    assert await server.wait_exit(0.5 + EXIT_MARGIN) == 0, server.output()


@pytest.mark.case("SHUT-5")
@process_case
@pytest.mark.timeout(120)
async def test_thousand_streams_when_sigterm_then_all_get_farewell_and_exit_zero(
    runtime: Runtime, spawn_server: Spawn
) -> None:
    server = await spawn_server(grace=2)
    ref = await runtime.create_task(behaviours.park)
    # Kept alive: each stream ends only when the draining server closes its connection.
    readers = await open_streams(server.url, ref, 1000, keep_alive=True, to_end=True)
    server.send_signal(signal.SIGTERM)
    bodies = await stream_bodies(readers, timeout=2 + EXIT_MARGIN + 10)
    told = sum(any(f.get("event") == "shutdown" for f in raw_frames(body)) for body in bodies)
    assert told == 1000, f"{told} of 1000 streams received the farewell"
    assert await server.wait_exit(2 + EXIT_MARGIN) == 0, server.output()


@pytest.mark.case("SHUT-6")
@process_case
async def test_task_when_it_finishes_within_grace_then_completes_and_clients_get_complete(
    runtime: Runtime, spawn_server: Spawn
) -> None:
    server = await spawn_server(grace=20)
    ref = await runtime.create_task(behaviours.stepper, {"total": 2})
    async with HttpClient(server.url) as sse:
        stream = await sse.subscribe(ref)
        await server.start_task(ref)
        await stream.until("start")
        server.send_signal(signal.SIGTERM)
        await draining(server)
        await runtime.write_fields(ref, allow=2)
        events = await stream.until()
        assert events[-1].type == "complete", stream.trace()
        await stream.expect_end()
    assert await server.wait_exit(20 + EXIT_MARGIN) == 0, server.output()
    assert (await runtime.get_state(ref)).status is TaskStatus.SUCCESSFUL


@pytest.mark.case("SHUT-7")
@process_case
async def test_task_when_still_running_after_grace_then_interrupted_not_running(
    runtime: Runtime, spawn_server: Spawn
) -> None:
    server = await spawn_server(grace=0.5)
    ref = await runtime.create_task(behaviours.park)
    await server.start_task(ref)
    await status_is(runtime, ref, TaskStatus.RUNNING)
    server.send_signal(signal.SIGTERM)
    assert await server.wait_exit(0.5 + EXIT_MARGIN) == 0, server.output()
    assert (await runtime.get_state(ref)).status is TaskStatus.INTERRUPTED


@pytest.mark.case("SHUT-8")
@process_case
async def test_health_when_draining_then_503(runtime: Runtime, spawn_server: Spawn) -> None:
    server = await draining_server(runtime, spawn_server)
    response = await request(server.url, "GET", "/health")
    assert response.status_code == 503, response.text
    server.send_signal(signal.SIGTERM)
    await server.wait_exit(EXIT_MARGIN)


@pytest.mark.case("SHUT-9")
@process_case
async def test_new_stream_when_draining_then_503_with_reason(
    runtime: Runtime, spawn_server: Spawn
) -> None:
    server = await draining_server(runtime, spawn_server)
    ref = await runtime.create_task(behaviours.steps)
    response = await request(server.url, "GET", ref.stream_path)
    assert response.status_code == 503 and response.text.strip(), response.text
    server.send_signal(signal.SIGTERM)
    await server.wait_exit(EXIT_MARGIN)


@pytest.mark.case("SHUT-10")
@process_case
async def test_start_when_draining_then_503_and_task_stays_ready(
    runtime: Runtime, spawn_server: Spawn
) -> None:
    server = await draining_server(runtime, spawn_server)
    ref = await runtime.create_task(behaviours.steps)
    response = await request(server.url, "POST", f"/tasks/{ref.model}/{ref.id}/start")
    assert response.status_code == 503, response.text
    assert (await runtime.get_state(ref)).status is TaskStatus.READY
    server.send_signal(signal.SIGTERM)
    await server.wait_exit(EXIT_MARGIN)


@pytest.mark.case("SHUT-11")
@process_case
@pytest.mark.parametrize(
    "behaviour", [behaviours.park, behaviours.swallow_always], ids=["parked", "ignores-cancel"]
)
async def test_second_signal_when_draining_then_exits_at_once_with_status_zero(
    runtime: Runtime, spawn_server: Spawn, behaviour: Behaviour
) -> None:
    server = await draining_server(runtime, spawn_server, behaviour)
    server.send_signal(signal.SIGTERM)
    assert await server.wait_exit(3.0) == 0, server.output()


@pytest.mark.case("SHUT-12")
@process_case
async def test_stored_tasks_when_server_shuts_down_then_nothing_is_lost(
    runtime: Runtime, spawn_server: Spawn
) -> None:
    done = await runtime.create_task(behaviours.steps, {"steps": 1})
    failed = await runtime.create_task(behaviours.fail)
    ready = await runtime.create_task(behaviours.steps)
    server = await spawn_server(grace=2)
    for ref in (done, failed):
        await server.start_task(ref)
    await status_is(runtime, done, TaskStatus.SUCCESSFUL)
    await status_is(runtime, failed, TaskStatus.FAILED)
    server.send_signal(signal.SIGTERM)
    assert await server.wait_exit(2 + EXIT_MARGIN) == 0, server.output()
    statuses = [(await runtime.get_state(ref)).status for ref in (done, failed, ready)]
    assert statuses == [TaskStatus.SUCCESSFUL, TaskStatus.FAILED, TaskStatus.READY]


@pytest.mark.case("SHUT-13")
@process_case
async def test_server_when_it_shuts_down_busy_then_stderr_has_no_warning_or_traceback(
    runtime: Runtime, spawn_server: Spawn
) -> None:
    server = await spawn_server(grace=0.5, env={"PYTHONWARNINGS": "always"})
    parked = await runtime.create_task(behaviours.cleanup_probe)
    finished = await runtime.create_task(behaviours.steps, {"steps": 2})
    async with HttpClient(server.url) as sse:
        streams = [await sse.subscribe(parked), await sse.subscribe(finished)]
        await server.start_task(parked)
        await server.start_task(finished)
        await streams[0].until("start")
        await streams[1].until()
        server.send_signal(signal.SIGTERM)
        await farewell_then_end(streams[0])
    assert await server.wait_exit(0.5 + EXIT_MARGIN) == 0, server.output()
    stderr = server.stderr.decode(errors="replace")
    for symptom in (
        "Traceback",
        "Task was destroyed but it is pending",
        "was never awaited",
        "ResourceWarning",
        "nclosed",
        "Task exception was never retrieved",
    ):
        assert symptom not in stderr, f"{symptom!r} in the server's stderr:\n{stderr}"


@pytest.mark.case("SHUT-22")
@process_case
async def test_interrupted_task_when_server_shuts_down_then_its_cleanup_ran(
    runtime: Runtime, spawn_server: Spawn
) -> None:
    server = await spawn_server(grace=0.2)
    ref = await runtime.create_task(behaviours.cleanup_probe)
    async with HttpClient(server.url) as sse:
        stream = await sse.subscribe(ref)
        await server.start_task(ref)
        await stream.until("start")
        server.send_signal(signal.SIGTERM)
        await stream.until("shutdown")
        assert [e.type for e in stream.seen] == ["start", "cleanup", "shutdown"], stream.trace()
    assert await server.wait_exit(0.2 + EXIT_MARGIN) == 0, server.output()
    state = await runtime.get_state(ref)
    assert state.status is TaskStatus.INTERRUPTED, state
    assert state.fields.get("finally_ran") is True and state.fields.get("released"), state


# -- in process ------------------------------------------------------------------


@pytest.mark.case("SHUT-15")
async def test_subscribers_when_runtime_shuts_down_then_each_gets_farewell_and_ends(
    runtime: Runtime, client: Client
) -> None:
    ref = await runtime.create_task(behaviours.park)
    streams = [await client.subscribe(ref) for _ in range(3)]
    await runtime.start_task(ref)
    for stream in streams:
        await stream.until("start")
    await runtime.shutdown(0.1)
    for stream in streams:
        data = await farewell_then_end(stream)
        assert data.get("last_event_id") == 1, stream.trace()


@pytest.mark.case("SHUT-16")
async def test_runtime_shutdown_when_tasks_run_then_finishers_complete_rest_interrupted(
    runtime: Runtime, client: Client
) -> None:
    finisher = await runtime.create_task(behaviours.stepper, {"total": 1})
    stuck = await runtime.create_task(behaviours.park)
    finisher_stream = await client.subscribe(finisher)
    for ref in (finisher, stuck):
        await runtime.start_task(ref)
    await finisher_stream.until("start")
    shutting = asyncio.create_task(runtime.shutdown(1.0))
    await runtime.write_fields(finisher, allow=1)
    assert (await finisher_stream.until())[-1].type == "complete", finisher_stream.trace()
    await shutting
    assert (await runtime.get_state(finisher)).status is TaskStatus.SUCCESSFUL
    assert (await runtime.get_state(stuck)).status is TaskStatus.INTERRUPTED
    stats = runtime.stats()
    assert (stats.running_tasks, stats.topics) == (0, 0), stats


@pytest.mark.case("SHUT-17")
async def test_runtime_shutdown_when_called_concurrently_then_each_returns_once_the_first_is_done(
    runtime: Runtime, client: Client
) -> None:
    ref = await runtime.create_task(behaviours.slow_cleanup, {"cleanup": 0.3})
    stream = await client.subscribe(ref)
    await runtime.start_task(ref)
    await stream.until("start")
    calls = [asyncio.create_task(runtime.shutdown(0.05)) for _ in range(3)]
    await asyncio.wait(calls, return_when=asyncio.FIRST_COMPLETED)
    # Whichever call returned first, the drain is over: the cleanup ran, the run
    # is recorded, its client was told.
    state = await runtime.get_state(ref)
    assert state.status is TaskStatus.INTERRUPTED and state.fields.get("cleaned"), state
    assert runtime.stats().running_tasks == 0, runtime.stats()
    # And no later call is needed to tell them: the farewell is already on its way.
    await stream.until(FAREWELL_EVENT)
    await stream.expect_end()
    await asyncio.gather(*calls)


@pytest.mark.case("SHUT-18")
async def test_start_when_runtime_shut_down_then_refused_and_task_stays_ready(
    runtime: Runtime,
) -> None:
    ref = await runtime.create_task(behaviours.steps)
    await runtime.shutdown(0.1)
    try:
        started = await runtime.start_task(ref)
    except RuntimeClosed:  # the one exception the contract names for this refusal
        started = False
    assert started is False
    assert (await runtime.get_state(ref)).status is TaskStatus.READY


@pytest.mark.case("SHUT-19")
async def test_idle_runtime_when_shut_down_then_returns_within_one_second(
    runtime: Runtime,
) -> None:
    async with asyncio.timeout(1.0):
        await runtime.shutdown(10.0)


@pytest.mark.case("SHUT-20")
async def test_clients_of_unstarted_task_when_shutdown_then_get_farewell(
    runtime: Runtime, client: Client
) -> None:
    ref = await runtime.create_task(behaviours.steps)
    stream = await client.subscribe(ref)
    await eventually(lambda: runtime.stats().subscribers == 1, what="the client registered")
    await runtime.shutdown(0.1)
    data = await farewell_then_end(stream)
    assert data.get("last_event_id") == 0, stream.trace()


@pytest.mark.case("SHUT-21")
@pytest.mark.requires(Capability.HTTP)
async def test_farewell_when_sent_over_http_then_positive_retry_and_id_of_the_last_event(
    runtime: Runtime, server_url: str
) -> None:
    ref = await runtime.create_task(behaviours.park)
    async with http_client(server_url) as http:
        async with http.stream("GET", ref.stream_path) as response:
            await runtime.start_task(ref)
            lines = response.aiter_lines()
            read: list[str] = []
            async for line in lines:
                read.append(line)
                if line == "" and "start" in event_types("\n".join(read) + "\n"):
                    break
            shutting = asyncio.create_task(runtime.shutdown(0.1))
            tail = [line async for line in lines]
            await shutting
    # The fields in any order, as a client reads them (the id line may come first).
    frames = sse_frames("\n".join(tail) + "\n")
    farewell = next((f for f in frames if f.get("event") == "shutdown"), None)
    assert farewell is not None, tail
    assert farewell.get("retry", "").isdigit() and int(farewell["retry"]) > 0, farewell
    assert json.loads(farewell["data"])["last_event_id"] == 1, farewell
    assert farewell.get("id") == "1", farewell
