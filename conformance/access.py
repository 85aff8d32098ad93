"""Who may act on a task, and how often: requests to a guarded interface, and their answers.

The operations cases (OPS) act with the credentials and within the limits an
implementation declares (``Implementation.credentials_for``,
``Implementation.limits``). A refusal must come at once: every request here
has a deadline, :data:`ANSWER_DEADLINE`, so a request left waiting fails the
case rather than passing it late. A refusal must also say why.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import httpx
import pytest

from . import behaviours
from .clients import ClientStream, HttpClient, HttpStatusError
from .contract import Capability, Implementation, Runtime, TaskRef, TaskStatus
from .requirements import UNSUPPORTED
from .waiting import status_is

T = TypeVar("T")

#: Seconds a refusal may take: it is an answer on arrival, not a wait.
ANSWER_DEADLINE = 5.0


async def answer(request: Awaitable[T]) -> T:
    """What ``request`` answers; fails the case unless it answers within :data:`ANSWER_DEADLINE`."""
    async with asyncio.timeout(ANSWER_DEADLINE):
        return await request


def credentials(impl: Implementation, ref: TaskRef, action: str) -> Mapping[str, str]:
    """What allows ``action`` on ``ref``; none needed where only limits are guarded."""
    if Capability.AUTHORIZATION in impl.capabilities:
        return dict(impl.credentials_for(ref, action))
    return {}


def require_limit(impl: Implementation, name: str) -> int | float:
    """The limit ``name`` the implementation declares; skips the case if it declares none."""
    value = getattr(impl.limits, name)
    if value is None:
        pytest.skip(f"{UNSUPPORTED}: {impl.name} declares no Limits.{name}")
    return value  # type: ignore[no-any-return]


async def command(
    http: httpx.AsyncClient, ref: TaskRef, action: str, **kwargs: Any
) -> httpx.Response:
    """``POST /tasks/<model>/<id>/<action>`` (start, cancel, retry), answered in time."""
    return await answer(http.post(f"/tasks/{ref.model}/{ref.id}/{action}", **kwargs))


def refused_with_reason(response: httpx.Response | HttpStatusError, statuses: set[int]) -> None:
    """Fail unless the request was answered with one of ``statuses`` and a reason."""
    status, body = (
        (response.status_code, response.text)
        if isinstance(response, httpx.Response)
        else (response.status, response.body)
    )
    assert status in statuses, (status, body)
    assert body.strip(), f"a {status} must say why"


def retry_after(response: httpx.Response | HttpStatusError) -> int:
    """The whole seconds of a 429's ``Retry-After``; fails unless there are some."""
    value = response.headers.get("retry-after", "")
    assert value.isdigit() and int(value) >= 1, f"Retry-After must be whole seconds: {value!r}"
    return int(value)


async def refused_stream(
    sse: HttpClient, ref: TaskRef, headers: Mapping[str, str]
) -> HttpStatusError:
    """Open a stream of ``ref`` that must be refused; the refusal."""
    try:
        stream = await sse.subscribe(ref, headers=headers)
    except HttpStatusError as refusal:
        return refusal
    await stream.aclose()
    raise AssertionError(f"A stream of {ref} was accepted; a refusal was expected.")


async def accepted_stream(
    sse: HttpClient, ref: TaskRef, headers: Mapping[str, str]
) -> ClientStream | None:
    """A stream of ``ref`` if it is accepted now; None if it is refused (with 429)."""
    try:
        return await sse.subscribe(ref, headers=headers)
    except HttpStatusError as refusal:
        assert refusal.status == 429, (refusal.status, refusal.body)
        return None


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


# -- OPS-1: each action tried without credentials ---------------------------------------
# Each returns the answer, after checking that the refused request changed nothing.


async def stream_refused(
    impl: Implementation, runtime: Runtime, guarded: httpx.AsyncClient
) -> httpx.Response:
    """``GET`` a stream; no subscriber may be registered."""
    ref = await runtime.create_task(behaviours.stepper, {"total": 1})
    response = await answer(guarded.get(ref.stream_path))
    assert runtime.stats().subscribers == 0, "a refused stream must not be registered"
    return response


async def start_refused(
    impl: Implementation, runtime: Runtime, guarded: httpx.AsyncClient
) -> httpx.Response:
    """Start a READY task; it must stay READY."""
    ref = await runtime.create_task(behaviours.stepper, {"total": 1})
    response = await command(guarded, ref, "start")
    assert (await runtime.get_state(ref)).status is TaskStatus.READY
    return response


async def cancel_refused(
    impl: Implementation, runtime: Runtime, guarded: httpx.AsyncClient
) -> httpx.Response:
    """Cancel a running task; it must run on."""
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
    """Retry a failed task; it must stay FAILED after one attempt."""
    ref = await runtime.create_task(behaviours.fail)
    await runtime.start_task(ref)
    await status_is(runtime, ref, TaskStatus.FAILED)
    response = await command(guarded, ref, "retry")
    state = await runtime.get_state(ref)
    assert (state.status, state.attempt) == (TaskStatus.FAILED, 1), state
    return response


__all__ = [
    "ANSWER_DEADLINE",
    "accepted_stream",
    "answer",
    "cancel_refused",
    "command",
    "credentials",
    "refused_stream",
    "refused_with_reason",
    "require_limit",
    "retry_after",
    "retry_refused",
    "start_refused",
    "stream_refused",
    "until_refused",
]
