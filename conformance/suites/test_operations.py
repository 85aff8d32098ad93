"""Operations suite (OPS): who may act on a task, limits, metrics and probes.

Access control and limits are read on the guarded interface
(``Runtime.guarded_asgi_app``), with the credentials and limits the
implementation declares (``Implementation.credentials_for``,
``Implementation.limits``); the origin and host checks, the metrics and
the probes on the default one. Every interface is served by a real uvicorn
on 127.0.0.1. A refusal must come at once: each request has a deadline, so
a request left waiting fails the case rather than passing it late.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping

import httpx
import pytest
import pytest_asyncio
from httpx_sse import aconnect_sse

from conformance import behaviours, prometheus
from conformance.clients import ClientStream, HttpStatusError, SSEReader, serve_asgi
from conformance.contract import Capability, Implementation, Runtime, TaskRef, TaskStatus
from conformance.processes import ServerProcess
from conformance.requirements import UNSUPPORTED, skip_unsupported
from conformance.waiting import MARGIN, eventually, status_is

pytestmark = [pytest.mark.asyncio, pytest.mark.requires(Capability.HTTP)]

Spawn = Callable[..., Awaitable[ServerProcess]]

#: Seconds a refusal may take: it is an answer on arrival, not a wait.
ANSWER_DEADLINE = 5.0
#: A page on another site.
FOREIGN_ORIGIN = "https://attacker.example"
JSON = {"content-type": "application/json"}


# -- fixtures and helpers -----------------------------------------------------------


@pytest_asyncio.fixture
async def http(server_url: str) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the default interface."""
    async with _client(server_url) as client:
        yield client


@pytest_asyncio.fixture
async def guarded(impl: Implementation, runtime: Runtime) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the guarded interface, on a uvicorn of its own."""
    if not {Capability.AUTHORIZATION, Capability.RATE_LIMITS} & set(impl.capabilities):
        skip_unsupported(impl, [Capability.AUTHORIZATION])
    async with serve_asgi(runtime.guarded_asgi_app()) as url, _client(url) as client:
        yield client


@contextlib.asynccontextmanager
async def _client(base_url: str) -> AsyncIterator[httpx.AsyncClient]:
    # No pool cap: cases hold several streams open at once.
    async with httpx.AsyncClient(
        base_url=base_url,
        timeout=httpx.Timeout(ANSWER_DEADLINE, read=None),
        limits=httpx.Limits(max_connections=None, max_keepalive_connections=None),
    ) as client:
        yield client


def credentials(impl: Implementation, ref: TaskRef, action: str) -> Mapping[str, str]:
    """What allows ``action`` on ``ref``; none needed where only limits are guarded."""
    if Capability.AUTHORIZATION in impl.capabilities:
        return dict(impl.credentials_for(ref, action))
    return {}


class Refused(HttpStatusError):
    """A stream request answered with another status than 200, with its response's headers."""

    def __init__(self, status: int, body: str, headers: httpx.Headers) -> None:
        super().__init__(status, body)
        self.headers = headers


class Streams:
    """Streams opened with headers of the case's choosing; all closed when the case ends."""

    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http
        self._open: list[ClientStream] = []

    async def open(self, ref: TaskRef, headers: Mapping[str, str]) -> ClientStream:
        """A stream of ``ref``; :class:`HttpStatusError` if it is not answered 200."""
        stack = contextlib.AsyncExitStack()
        async with asyncio.timeout(ANSWER_DEADLINE):
            source = await stack.enter_async_context(
                aconnect_sse(self.http, "GET", ref.stream_path, headers=dict(headers))
            )
            response = source.response
            if response.status_code != 200:
                body = (await response.aread()).decode(errors="replace")
                await stack.aclose()
                raise Refused(response.status_code, body, response.headers)
        reader = SSEReader(source, stack)
        stream = ClientStream(ref, reader, reader.aclose)
        self._open.append(stream)
        return stream

    async def refused(self, ref: TaskRef, headers: Mapping[str, str]) -> Refused:
        """Open a stream that must be refused; the refusal."""
        try:
            stream = await self.open(ref, headers)
        except Refused as refusal:
            return refusal
        await stream.aclose()
        raise AssertionError(f"A stream of {ref} was accepted; a refusal was expected.")

    async def accepted(self, ref: TaskRef, headers: Mapping[str, str]) -> ClientStream | None:
        """A stream of ``ref`` if it is accepted now; None if it is refused (with 429)."""
        try:
            return await self.open(ref, headers)
        except Refused as refusal:
            assert refusal.status == 429, (refusal.status, refusal.body)
            return None

    async def aclose(self) -> None:
        for stream in self._open:
            await stream.aclose()


@pytest_asyncio.fixture
async def streams(guarded: httpx.AsyncClient) -> AsyncIterator[Streams]:
    opened = Streams(guarded)
    try:
        yield opened
    finally:
        await opened.aclose()


async def command(
    http: httpx.AsyncClient, ref: TaskRef, action: str, **kwargs: object
) -> httpx.Response:
    async with asyncio.timeout(ANSWER_DEADLINE):
        return await http.post(f"/tasks/{ref.model}/{ref.id}/{action}", **kwargs)  # type: ignore[arg-type]


def refused_with_reason(response: httpx.Response | HttpStatusError, statuses: set[int]) -> None:
    status, body = (
        (response.status_code, response.text)
        if isinstance(response, httpx.Response)
        else (response.status, response.body)
    )
    assert status in statuses, (status, body)
    assert body.strip(), f"a {status} must say why"


def retry_after(response: httpx.Response | Refused) -> int:
    """The whole seconds of a 429's ``Retry-After``; fails unless there are some."""
    value = response.headers.get("retry-after", "")
    assert value.isdigit() and int(value) >= 1, f"Retry-After must be whole seconds: {value!r}"
    return int(value)


def require_limit(impl: Implementation, name: str) -> int | float:
    value = getattr(impl.limits, name)
    if value is None:
        pytest.skip(f"{UNSUPPORTED}: {impl.name} declares no Limits.{name}")
    return value  # type: ignore[no-any-return]


# -- OPS-1, OPS-2: credentials --------------------------------------------------------


async def stream_refused(
    impl: Implementation, runtime: Runtime, guarded: httpx.AsyncClient
) -> httpx.Response:
    ref = await runtime.create_task(behaviours.stepper, {"total": 1})
    async with asyncio.timeout(ANSWER_DEADLINE):
        response = await guarded.get(ref.stream_path)
    assert runtime.stats().subscribers == 0, "a refused stream must not be registered"
    return response


async def start_refused(
    impl: Implementation, runtime: Runtime, guarded: httpx.AsyncClient
) -> httpx.Response:
    ref = await runtime.create_task(behaviours.stepper, {"total": 1})
    response = await command(guarded, ref, "start")
    assert (await runtime.get_state(ref)).status is TaskStatus.READY
    return response


async def cancel_refused(
    impl: Implementation, runtime: Runtime, guarded: httpx.AsyncClient
) -> httpx.Response:
    ref = await runtime.create_task(behaviours.park)
    await runtime.start_task(ref)
    await status_is(runtime, ref, TaskStatus.RUNNING)
    response = await command(guarded, ref, "cancel", json={"reason": "nobody asked"})
    # Unchanged: a cancel of the run now is the first, so it still answers True.
    assert await runtime.cancel_task(ref, "cleanup"), "the refused cancel cancelled the task"
    return response


async def retry_refused(
    impl: Implementation, runtime: Runtime, guarded: httpx.AsyncClient
) -> httpx.Response:
    ref = await runtime.create_task(behaviours.fail)
    await runtime.start_task(ref)
    await status_is(runtime, ref, TaskStatus.FAILED)
    response = await command(guarded, ref, "retry")
    state = await runtime.get_state(ref)
    assert (state.status, state.attempt) == (TaskStatus.FAILED, 1), state
    return response


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
    impl: Implementation, runtime: Runtime, guarded: httpx.AsyncClient, streams: Streams
) -> None:
    ref = await runtime.create_task(behaviours.park)
    other = await runtime.create_task(behaviours.park)

    for wrong in (credentials(impl, other, "stream"), credentials(impl, ref, "start")):
        refused_with_reason(await streams.refused(ref, wrong), {403})
    stream = await streams.open(ref, credentials(impl, ref, "stream"))

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
    impl: Implementation, runtime: Runtime, streams: Streams
) -> None:
    limit = int(require_limit(impl, "streams_per_client"))
    burst = impl.limits.stream_burst
    if burst is not None and burst < limit + 2:
        pytest.skip(f"{UNSUPPORTED}: stream_burst {burst} is below the streams this case opens")
    # One task per stream, so that no task reaches a limit of its own.
    refs = [await runtime.create_task(behaviours.stepper, {"total": 1}) for _ in range(limit + 1)]
    held = [await streams.open(ref, credentials(impl, ref, "stream")) for ref in refs[:limit]]
    for ref in refs:
        await runtime.start_task(ref)
    for stream in held:
        await stream.until("start")

    extra = refs[-1]
    refusal = await streams.refused(extra, credentials(impl, extra, "stream"))
    refused_with_reason(refusal, {429})
    retry_after(refusal)

    for ref in refs:
        await runtime.write_fields(ref, allow=1)
    for stream in held:  # the open streams carried on, to their end
        events = await stream.until()
        assert events[-1].type == "complete", stream.trace()
    await held[0].aclose()
    accepted = await eventually(
        lambda: streams.accepted(extra, credentials(impl, extra, "stream")),
        timeout=ANSWER_DEADLINE + MARGIN,
        what="a stream to be accepted once the client holds fewer",
    )
    assert (await accepted.until())[-1].type == "complete", accepted.trace()


@pytest.mark.case("OPS-8")
@pytest.mark.requires(Capability.RATE_LIMITS)
async def test_streams_when_task_has_its_limit_then_429_and_other_tasks_served(
    impl: Implementation, runtime: Runtime, streams: Streams
) -> None:
    limit = int(require_limit(impl, "subscribers_per_task"))
    per_client = impl.limits.streams_per_client
    if per_client is not None and per_client < limit + 1:
        pytest.skip(f"{UNSUPPORTED}: streams_per_client {per_client} is below subscribers + 1")
    ref = await runtime.create_task(behaviours.stepper, {"total": 1})
    other = await runtime.create_task(behaviours.stepper, {"total": 1})
    allowed = credentials(impl, ref, "stream")
    held = [await streams.open(ref, allowed) for _ in range(limit)]

    refusal = await streams.refused(ref, allowed)
    refused_with_reason(refusal, {429})
    retry_after(refusal)
    beside = await streams.open(other, credentials(impl, other, "stream"))

    await held[0].aclose()
    joined = await eventually(
        lambda: streams.accepted(ref, allowed),
        timeout=ANSWER_DEADLINE + MARGIN,
        what="a stream of the task to be accepted once it has fewer",
    )
    for task in (ref, other):
        await runtime.start_task(task)
        await runtime.write_fields(task, allow=1)
    for stream in (*held[1:], joined, beside):
        events = await stream.until()
        assert events[-1].type == "complete", stream.trace()


async def until_refused(
    send: Callable[[], Awaitable[httpx.Response]], burst: int, rate: float
) -> tuple[list[httpx.Response], httpx.Response, float]:
    """Send until one is refused; the ones served, the refusal, and the seconds it took."""
    loop = asyncio.get_running_loop()
    began = loop.time()
    served: list[httpx.Response] = []
    # A client that spends tokens faster than they refill runs out: after at
    # most burst + rate * elapsed requests, plus the one refused.
    while True:
        response = await send()
        elapsed = loop.time() - began
        if response.status_code == 429:
            return served, response, elapsed
        served.append(response)
        assert len(served) <= burst + math.ceil(rate * elapsed) + 1, (
            f"{len(served)} served in {elapsed:.2f}s: past a burst of {burst} and {rate:g}/s"
        )


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
    assert "event: complete" in served[0].text, served[0].text
    refused_with_reason(refusal, {429})
    wait = retry_after(refusal)

    async def served_again() -> bool:
        return (await whole_stream()).status_code == 200

    await eventually(served_again, timeout=wait + MARGIN, what="a stream served after Retry-After")


# -- OPS-10, OPS-11: metrics --------------------------------------------------------------

Samples = prometheus.Samples


async def scrape(http: httpx.AsyncClient) -> Samples:
    async with asyncio.timeout(ANSWER_DEADLINE):
        response = await http.get("/metrics")
    assert response.status_code == 200, response.text
    kind = response.headers.get("content-type", "")
    assert kind.startswith(("text/plain", "application/openmetrics-text")), kind
    return prometheus.parse(response.text)


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels``; fails if none."""
    found = [v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= ls]
    assert found, (
        f"no sample {name}{labels or ''} in the metrics: {sorted({n for n, _ in samples})}"
    )
    return sum(found)


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
    runtime: Runtime, http: httpx.AsyncClient, streams_default: Streams
) -> None:
    ref = await runtime.create_task(behaviours.stepper, {"total": 2})
    before = await scrape(http)
    stream = await streams_default.open(ref, {})
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
    runtime: Runtime, http: httpx.AsyncClient, streams_default: Streams
) -> None:
    ref = await runtime.create_task(behaviours.park)
    stream = await streams_default.open(ref, {})
    await runtime.start_task(ref)
    await stream.until("start")
    before = value(await scrape(http), "streaming_cancellations_total")
    cancelled = await command(http, ref, "cancel", json={"reason": "counted"})
    assert cancelled.json() == {"cancelled": True}, cancelled.text
    assert [e.type for e in await stream.until()] == ["cancelled"], stream.trace()
    await status_is(runtime, ref, TaskStatus.CANCELLED)
    after = value(await scrape(http), "streaming_cancellations_total")
    assert after == before + 1, (before, after)


@pytest_asyncio.fixture
async def streams_default(http: httpx.AsyncClient) -> AsyncIterator[Streams]:
    opened = Streams(http)
    try:
        yield opened
    finally:
        await opened.aclose()


# -- OPS-12: liveness and readiness -------------------------------------------------------


async def probe(get: Callable[[str], Awaitable[httpx.Response]], path: str) -> httpx.Response:
    async with asyncio.timeout(ANSWER_DEADLINE):
        return await get(path)


@pytest.mark.case("OPS-12")
@pytest.mark.requires(Capability.READINESS)
async def test_probes_when_draining_then_live_200_and_ready_503_with_reason(
    runtime: Runtime, http: httpx.AsyncClient
) -> None:
    for path in ("/live", "/ready"):
        response = await probe(http.get, path)
        assert response.status_code == 200, (path, response.text)
    await runtime.shutdown(1.0)
    live, ready = await probe(http.get, "/live"), await probe(http.get, "/ready")
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
