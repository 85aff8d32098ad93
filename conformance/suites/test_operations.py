"""Operations suite (OPS): who may act on a task, limits, metrics and probes.

Access control and limits are read on the guarded interface
(``Runtime.guarded_asgi_app``), with the credentials and limits the
implementation declares (``Implementation.credentials_for``,
``Implementation.limits``); the origin and host checks, the metrics and
the probes on the default one. Every interface is served by a real uvicorn
on 127.0.0.1. A refusal must come at once: each request has a deadline
(:mod:`conformance.access`), so a request left waiting fails the case
rather than passing it late.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import httpx
import pytest

from conformance import behaviours
from conformance.access import (
    ANSWER_DEADLINE,
    accepted_stream,
    answer,
    cancel_refused,
    command,
    credentials,
    refused_stream,
    refused_with_reason,
    require_limit,
    retry_after,
    retry_refused,
    start_refused,
    stream_refused,
    until_refused,
)
from conformance.clients import HttpClient
from conformance.contract import Capability, Implementation, Runtime, TaskStatus
from conformance.metrics import Samples, scrape, value
from conformance.requirements import UNSUPPORTED
from conformance.servers import Spawn
from conformance.waiting import MARGIN, eventually, status_is
from conformance.wire import event_types

pytestmark = [pytest.mark.asyncio, pytest.mark.requires(Capability.HTTP)]

#: A page on another site.
FOREIGN_ORIGIN = "https://attacker.example"
JSON = {"content-type": "application/json"}


# -- OPS-1, OPS-2: credentials --------------------------------------------------------


@pytest.mark.case("OPS-1")
@pytest.mark.requires(Capability.AUTHORIZATION)
@pytest.mark.parametrize(
    "attempt",
    [
        stream_refused,
        start_refused,
        pytest.param(cancel_refused, marks=pytest.mark.requires(Capability.CANCEL)),
        pytest.param(retry_refused, marks=pytest.mark.requires(Capability.RETRY)),
    ],
    ids=["stream", "start", "cancel", "retry"],
)
async def test_guarded_when_no_credentials_then_401_or_403_with_reason_and_nothing_changes(
    impl: Implementation,
    runtime: Runtime,
    guarded: httpx.AsyncClient,
    attempt: Callable[..., Awaitable[httpx.Response]],
) -> None:
    response = await attempt(impl, runtime, guarded)
    refused_with_reason(response, {401, 403})
    assert response.headers.get("content-type", "").startswith("text/plain"), response.headers


@pytest.mark.case("OPS-2")
@pytest.mark.requires(Capability.AUTHORIZATION, Capability.CANCEL)
async def test_guarded_when_credentials_given_then_they_allow_their_action_on_their_task_only(
    impl: Implementation, runtime: Runtime, guarded: httpx.AsyncClient, streams: HttpClient
) -> None:
    ref = await runtime.create_task(behaviours.park)
    other = await runtime.create_task(behaviours.park)

    for wrong in (credentials(impl, other, "stream"), credentials(impl, ref, "start")):
        refused_with_reason(await refused_stream(streams, ref, wrong), {403})
    stream = await streams.subscribe(ref, headers=credentials(impl, ref, "stream"))

    for wrong in (credentials(impl, ref, "stream"), credentials(impl, other, "start")):
        refused_with_reason(await command(guarded, ref, "start", headers=wrong), {403})
    assert (await runtime.get_state(ref)).status is TaskStatus.READY
    started = await command(guarded, ref, "start", headers=credentials(impl, ref, "start"))
    assert started.status_code == 202, started.text
    await stream.until("start")

    for wrong in (credentials(impl, ref, "start"), credentials(impl, other, "cancel")):
        refused = await command(guarded, ref, "cancel", json={"reason": "no"}, headers=wrong)
        refused_with_reason(refused, {403})
    assert (await runtime.get_state(ref)).status is TaskStatus.RUNNING
    allowed = credentials(impl, ref, "cancel")
    cancelled = await command(guarded, ref, "cancel", json={"reason": "allowed"}, headers=allowed)
    assert (cancelled.status_code, cancelled.json()) == (200, {"cancelled": True}), cancelled.text
    events = await stream.until()
    assert [e.type for e in events] == ["cancelled"], stream.trace()
    assert events[0].data.get("reason") == "allowed", stream.trace()
    await status_is(runtime, ref, TaskStatus.CANCELLED)


# -- OPS-3..OPS-6: origins, CORS, hosts -------------------------------------------------


@pytest.mark.case("OPS-3")
@pytest.mark.parametrize("content_type", ["application/json", "text/plain"])
async def test_command_when_origin_is_another_site_then_403_and_nothing_changes(
    runtime: Runtime, http: httpx.AsyncClient, server_url: str, content_type: str
) -> None:
    # The default interface: every HTTP implementation, with or without a policy.
    ready = await runtime.create_task(behaviours.stepper, {"total": 1})
    foreign = {"origin": FOREIGN_ORIGIN, "content-type": content_type}
    refused_with_reason(await command(http, ready, "start", headers=foreign), {403})
    assert (await runtime.get_state(ready)).status is TaskStatus.READY

    own = {"origin": server_url, "content-type": "application/json"}
    started = await command(http, ready, "start", headers=own)
    assert started.status_code == 202, started.text
    await runtime.write_fields(ready, allow=1)
    await status_is(runtime, ready, TaskStatus.SUCCESSFUL)
    # No Origin at all (a command-line tool) with a JSON body is served too.
    other = await runtime.create_task(behaviours.stepper, {"total": 1})
    plain = await command(http, other, "start", headers=JSON, content=b"{}")
    assert plain.status_code == 202, plain.text
    await runtime.write_fields(other, allow=1)
    await status_is(runtime, other, TaskStatus.SUCCESSFUL)


@pytest.mark.case("OPS-3")
@pytest.mark.requires(Capability.AUTHORIZATION, Capability.CANCEL)
async def test_command_with_credentials_when_origin_is_another_site_then_403_all_the_same(
    impl: Implementation, runtime: Runtime, http: httpx.AsyncClient, guarded: httpx.AsyncClient
) -> None:
    running = await runtime.create_task(behaviours.park)
    await runtime.start_task(running)
    await status_is(runtime, running, TaskStatus.RUNNING)
    foreign = {"origin": FOREIGN_ORIGIN, "content-type": "application/json"}
    body = b'{"reason": "from another site"}'
    refused_with_reason(
        await command(http, running, "cancel", headers=foreign, content=body), {403}
    )
    # With credentials, on the guarded interface, another site is refused all the same.
    with_token = {**foreign, **credentials(impl, running, "cancel")}
    refused_with_reason(
        await command(guarded, running, "cancel", headers=with_token, content=body), {403}
    )
    # The refused cancels changed nothing: this one is the first, so it says True.
    cancelled = await command(http, running, "cancel", headers=JSON, content=body)
    assert (cancelled.status_code, cancelled.json()) == (200, {"cancelled": True}), cancelled.text
    await status_is(runtime, running, TaskStatus.CANCELLED)


@pytest.mark.case("OPS-4")
@pytest.mark.requires(Capability.AUTHORIZATION)
@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"],
    ids=["text", "form", "multipart"],
)
async def test_command_when_form_body_without_origin_or_credentials_then_403(
    runtime: Runtime, http: httpx.AsyncClient, content_type: str
) -> None:
    ref = await runtime.create_task(behaviours.stepper, {"total": 1})
    form = {"content-type": content_type}
    refused_with_reason(await command(http, ref, "start", headers=form, content=b"{}"), {403})
    assert (await runtime.get_state(ref)).status is TaskStatus.READY
    started = await command(http, ref, "start", headers=JSON, content=b"{}")
    assert started.status_code == 202, started.text
    await runtime.write_fields(ref, allow=1)
    await status_is(runtime, ref, TaskStatus.SUCCESSFUL)


@pytest.mark.case("OPS-5")
@pytest.mark.requires(Capability.AUTHORIZATION)
@pytest.mark.parametrize("action", ["start", "cancel"])
async def test_preflight_when_origin_not_allowed_then_no_allow_origin_for_it(
    runtime: Runtime, http: httpx.AsyncClient, action: str
) -> None:
    ref = await runtime.create_task(behaviours.stepper, {"total": 1})
    async with asyncio.timeout(ANSWER_DEADLINE):
        response = await http.options(
            f"/tasks/{ref.model}/{ref.id}/{action}",
            headers={
                "origin": FOREIGN_ORIGIN,
                "access-control-request-method": "POST",
                "access-control-request-headers": "content-type",
            },
        )
    assert response.status_code < 500, (response.status_code, response.text)
    allowed = response.headers.get("access-control-allow-origin")
    assert allowed not in (FOREIGN_ORIGIN, "*"), response.headers
    assert (await runtime.get_state(ref)).status is TaskStatus.READY


@pytest.mark.case("OPS-6")
@pytest.mark.requires(Capability.AUTHORIZATION)
async def test_request_when_host_not_served_then_400_and_own_host_served(
    runtime: Runtime, http: httpx.AsyncClient
) -> None:
    ref = await runtime.create_task(behaviours.stepper, {"total": 1})
    rebound = await command(http, ref, "start", headers={"host": "attacker.example"})
    refused_with_reason(rebound, {400})
    async with asyncio.timeout(ANSWER_DEADLINE):
        stream = await http.get(ref.stream_path, headers={"host": "attacker.example:80"})
    refused_with_reason(stream, {400})
    assert (await runtime.get_state(ref)).status is TaskStatus.READY
    started = await command(http, ref, "start")
    assert started.status_code == 202, started.text
    await runtime.write_fields(ref, allow=1)
    await status_is(runtime, ref, TaskStatus.SUCCESSFUL)


# -- OPS-7..OPS-9: limits ----------------------------------------------------------------


@pytest.mark.case("OPS-7")
@pytest.mark.requires(Capability.RATE_LIMITS)
async def test_streams_when_client_holds_its_limit_then_429_and_open_ones_carry_on(
    impl: Implementation, runtime: Runtime, streams: HttpClient
) -> None:
    limit = int(require_limit(impl, "streams_per_client"))
    burst = impl.limits.stream_burst
    if burst is not None and burst < limit + 2:
        pytest.skip(f"{UNSUPPORTED}: stream_burst {burst} is below the streams this case opens")
    # One task per stream, so that no task reaches a limit of its own.
    refs = [await runtime.create_task(behaviours.stepper, {"total": 1}) for _ in range(limit + 1)]
    held = [
        await streams.subscribe(ref, headers=credentials(impl, ref, "stream"))
        for ref in refs[:limit]
    ]
    for ref in refs:
        await runtime.start_task(ref)
    for stream in held:
        await stream.until("start")

    extra = refs[-1]
    refusal = await refused_stream(streams, extra, credentials(impl, extra, "stream"))
    refused_with_reason(refusal, {429})
    retry_after(refusal)

    for ref in refs:
        await runtime.write_fields(ref, allow=1)
    for stream in held:  # the open streams carried on, to their end
        events = await stream.until()
        assert events[-1].type == "complete", stream.trace()
    await held[0].aclose()
    accepted = await eventually(
        lambda: accepted_stream(streams, extra, credentials(impl, extra, "stream")),
        timeout=ANSWER_DEADLINE + MARGIN,
        what="a stream to be accepted once the client holds fewer",
    )
    assert (await accepted.until())[-1].type == "complete", accepted.trace()


@pytest.mark.case("OPS-8")
@pytest.mark.requires(Capability.RATE_LIMITS)
async def test_streams_when_task_has_its_limit_then_429_and_other_tasks_served(
    impl: Implementation, runtime: Runtime, streams: HttpClient
) -> None:
    limit = int(require_limit(impl, "subscribers_per_task"))
    per_client = impl.limits.streams_per_client
    if per_client is not None and per_client < limit + 1:
        pytest.skip(f"{UNSUPPORTED}: streams_per_client {per_client} is below subscribers + 1")
    ref = await runtime.create_task(behaviours.stepper, {"total": 1})
    other = await runtime.create_task(behaviours.stepper, {"total": 1})
    allowed = credentials(impl, ref, "stream")
    held = [await streams.subscribe(ref, headers=allowed) for _ in range(limit)]

    refusal = await refused_stream(streams, ref, allowed)
    refused_with_reason(refusal, {429})
    retry_after(refusal)
    beside = await streams.subscribe(other, headers=credentials(impl, other, "stream"))

    await held[0].aclose()
    joined = await eventually(
        lambda: accepted_stream(streams, ref, allowed),
        timeout=ANSWER_DEADLINE + MARGIN,
        what="a stream of the task to be accepted once it has fewer",
    )
    for task in (ref, other):
        await runtime.start_task(task)
        await runtime.write_fields(task, allow=1)
    for stream in (*held[1:], joined, beside):
        events = await stream.until()
        assert events[-1].type == "complete", stream.trace()


@pytest.mark.case("OPS-9")
@pytest.mark.requires(Capability.RATE_LIMITS)
async def test_commands_when_sent_past_the_rate_then_429_then_served_after_retry_after(
    impl: Implementation, runtime: Runtime, guarded: httpx.AsyncClient
) -> None:
    burst = int(require_limit(impl, "command_burst"))
    rate = float(require_limit(impl, "commands_per_second"))
    ref = await runtime.create_task(behaviours.stepper, {"total": 1})
    allowed = credentials(impl, ref, "start")

    served, refusal, _ = await until_refused(
        lambda: command(guarded, ref, "start", headers=allowed), burst, rate
    )
    # Each was served by the task's own route: the first started it.
    assert [r.status_code for r in served][:2] == [202, 409][: len(served)], served
    refused_with_reason(refusal, {429})
    wait = retry_after(refusal)

    async def served_again() -> bool:
        return (await command(guarded, ref, "start", headers=allowed)).status_code == 409

    await eventually(served_again, timeout=wait + MARGIN, what="a command served after Retry-After")
    await runtime.write_fields(ref, allow=1)
    await status_is(runtime, ref, TaskStatus.SUCCESSFUL)


@pytest.mark.case("OPS-9")
@pytest.mark.requires(Capability.RATE_LIMITS)
async def test_streams_when_opened_past_the_rate_then_429_then_served_after_retry_after(
    impl: Implementation, runtime: Runtime, guarded: httpx.AsyncClient
) -> None:
    burst = int(require_limit(impl, "stream_burst"))
    rate = float(require_limit(impl, "streams_per_second"))
    ref = await runtime.create_task(behaviours.steps, {"steps": 1})
    await runtime.start_task(ref)
    await status_is(runtime, ref, TaskStatus.SUCCESSFUL)
    allowed = credentials(impl, ref, "stream")

    async def whole_stream() -> httpx.Response:
        # A finished task's stream is its terminal event, then the end.
        async with asyncio.timeout(ANSWER_DEADLINE):
            async with guarded.stream("GET", ref.stream_path, headers=allowed) as response:
                await response.aread()
                return response

    served, refusal, _ = await until_refused(whole_stream, burst, rate)
    assert served and {r.status_code for r in served} == {200}, served
    assert "complete" in event_types(served[0].text), served[0].text
    refused_with_reason(refusal, {429})
    wait = retry_after(refusal)

    async def served_again() -> bool:
        return (await whole_stream()).status_code == 200

    await eventually(served_again, timeout=wait + MARGIN, what="a stream served after Retry-After")


# -- OPS-10, OPS-11: metrics --------------------------------------------------------------


@pytest.mark.case("OPS-10")
@pytest.mark.requires(Capability.METRICS)
async def test_metrics_when_scraped_then_prometheus_text_with_the_named_series(
    runtime: Runtime, http: httpx.AsyncClient
) -> None:
    ref = await runtime.create_task(behaviours.stepper, {"total": 1})
    samples = await scrape(http)
    for name in (
        "streaming_events_published_total",
        "streaming_events_delivered_total",
        "streaming_open_streams",
        "streaming_running_tasks",
        "streaming_cancellations_total",
    ):
        assert value(samples, name) >= 0
    assert value(samples, "streaming_tasks", kind=ref.model, status="READY") >= 1


@pytest.mark.case("OPS-11")
@pytest.mark.requires(Capability.METRICS)
async def test_metrics_when_events_reach_a_client_then_counters_and_gauges_move(
    runtime: Runtime, http: httpx.AsyncClient, streams_default: HttpClient
) -> None:
    ref = await runtime.create_task(behaviours.stepper, {"total": 2})
    before = await scrape(http)
    stream = await streams_default.subscribe(ref)
    await runtime.start_task(ref)
    await stream.until("start")

    during = await scrape(http)
    assert value(during, "streaming_open_streams") >= value(before, "streaming_open_streams") + 1
    assert value(during, "streaming_running_tasks") >= 1

    await runtime.write_fields(ref, allow=2)
    await stream.until()
    events = stream.seen
    assert [e.type for e in events] == ["start", "progress", "progress", "complete"], stream.trace()
    await stream.expect_end()
    await stream.aclose()

    async def settled() -> Samples | None:
        now = await scrape(http)
        idle = value(now, "streaming_open_streams") <= value(before, "streaming_open_streams")
        stopped = value(now, "streaming_running_tasks") <= value(before, "streaming_running_tasks")
        return now if idle and stopped else None

    after = await eventually(settled, what="the open streams and running tasks to fall back")
    for counter in ("streaming_events_published_total", "streaming_events_delivered_total"):
        grown = value(after, counter) - value(before, counter)
        assert grown >= len(events), f"{counter} grew by {grown}, {len(events)} events flowed"
    done = value(after, "streaming_tasks", kind=ref.model, status="SUCCESSFUL")
    assert done >= 1, "the finished task is not counted SUCCESSFUL"


@pytest.mark.case("OPS-11")
@pytest.mark.requires(Capability.METRICS, Capability.CANCEL)
async def test_metrics_when_a_task_is_cancelled_then_cancellations_grow_by_one(
    runtime: Runtime, http: httpx.AsyncClient, streams_default: HttpClient
) -> None:
    ref = await runtime.create_task(behaviours.park)
    stream = await streams_default.subscribe(ref)
    await runtime.start_task(ref)
    await stream.until("start")
    before = value(await scrape(http), "streaming_cancellations_total")
    cancelled = await command(http, ref, "cancel", json={"reason": "counted"})
    assert cancelled.json() == {"cancelled": True}, cancelled.text
    assert [e.type for e in await stream.until()] == ["cancelled"], stream.trace()
    await status_is(runtime, ref, TaskStatus.CANCELLED)
    after = value(await scrape(http), "streaming_cancellations_total")
    assert after == before + 1, (before, after)


# -- OPS-12: liveness and readiness -------------------------------------------------------


@pytest.mark.case("OPS-12")
@pytest.mark.requires(Capability.READINESS)
async def test_probes_when_draining_then_live_200_and_ready_503_with_reason(
    runtime: Runtime, http: httpx.AsyncClient
) -> None:
    for path in ("/live", "/ready"):
        response = await answer(http.get(path))
        assert response.status_code == 200, (path, response.text)
    await runtime.shutdown(1.0)
    live, ready = await answer(http.get("/live")), await answer(http.get("/ready"))
    assert live.status_code == 200, live.text
    refused_with_reason(ready, {503})


@pytest.mark.case("OPS-12")
@pytest.mark.requires(
    Capability.READINESS, Capability.PROCESS, Capability.PERSISTENCE, Capability.FAULT_INJECTION
)
@pytest.mark.timeout(120)
async def test_probes_when_database_unavailable_then_live_200_and_ready_503_until_back(
    impl: Implementation, runtime: Runtime, spawn_server: Spawn
) -> None:
    server = await spawn_server()

    async def answers(path: str, status: int) -> httpx.Response | None:
        response = await server.request("GET", path)
        return response if response.status_code == status else None

    assert await answers("/ready", 200), "not ready before the outage"
    async with impl.database_outage():
        unready = await eventually(
            lambda: answers("/ready", 503),
            timeout=30,
            what="/ready to answer 503 while the database is unavailable",
        )
        assert unready.text.strip(), "a 503 must say why"
        live = await server.request("GET", "/live")
        assert live.status_code == 200, live.text
    await eventually(
        lambda: answers("/ready", 200), timeout=30, what="/ready to answer 200 once it is back"
    )
