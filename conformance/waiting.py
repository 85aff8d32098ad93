"""Wait for a condition under a deadline, never for a fixed time.

A case that needs "the server has unregistered the client" or "the task is
RUNNING" waits for exactly that with :func:`eventually`; a case that needs an
event waits on the stream (``ClientStream.next``). Both fail with a message
saying what was awaited, and for streams, the events seen so far.
:func:`wait_until` is :func:`eventually` for code without an event loop (the
reference's tests of real processes, dev.py).

Standard library only: dev.py imports this before anything is installed.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, overload

from .contract import Runtime, TaskRef, TaskState, TaskStatus

T = TypeVar("T")

#: Seconds between two checks of a polled condition.
POLL_INTERVAL = 0.005
#: Seconds a case allows beyond a deadline the implementation declares
#: (``Implementation.timings``), for a loaded machine.
MARGIN = 5.0


class WaitTimeout(AssertionError):
    """The awaited condition did not hold before the deadline."""


@overload
async def eventually(
    condition: Callable[[], Awaitable[T | None]], *, timeout: float = ..., what: str = ...
) -> T: ...
@overload
async def eventually(
    condition: Callable[[], T | None], *, timeout: float = ..., what: str = ...
) -> T: ...
async def eventually(
    condition: Callable[[], object],
    *,
    timeout: float = 5.0,
    what: str = "the condition",
) -> object:
    """Return the first truthy value of ``condition()``, checked until ``timeout`` seconds pass.

    ``condition`` may be a plain function or a coroutine function; a value of
    ``None`` (or anything falsy) means "not yet".
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last: object = None
    while True:
        value = condition()
        last = await value if inspect.isawaitable(value) else value
        if last:
            return last
        if loop.time() >= deadline:
            raise WaitTimeout(_timed_out(timeout, what, last))
        await asyncio.sleep(POLL_INTERVAL)


def wait_until(
    condition: Callable[[], T], *, timeout: float = 5.0, what: str = "the condition"
) -> T:
    """Return the first truthy value of ``condition()``, checked until ``timeout`` seconds pass.

    :func:`eventually`'s twin for code without an event loop: it blocks the
    calling thread between checks.
    """
    deadline = time.monotonic() + timeout
    while True:
        last = condition()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise WaitTimeout(_timed_out(timeout, what, last))
        time.sleep(POLL_INTERVAL)  # the poll interval, not a synchronisation point


def suspended(task: asyncio.Task[Any]) -> bool:
    """Whether ``task`` has run and now waits at an ``await`` (for an event, a lock...)."""
    coro = task.get_coro()
    return inspect.iscoroutine(coro) and inspect.getcoroutinestate(coro) == inspect.CORO_SUSPENDED


def _timed_out(timeout: float, what: str, last: object) -> str:
    return f"Timed out after {timeout:g}s waiting for {what} (last value: {last!r})."


async def status_is(
    runtime: Runtime, ref: TaskRef, status: TaskStatus, *, timeout: float = 5.0
) -> TaskState:
    """Wait until the task's persisted status is ``status``; return that state."""
    seen: list[TaskStatus] = []

    async def check() -> TaskState | None:
        state = await runtime.get_state(ref)
        seen[:] = [state.status]
        return state if state.status is status else None

    try:
        return await eventually(check, timeout=timeout, what=f"{ref} to be {status}")
    except WaitTimeout as exc:
        raise WaitTimeout(f"{exc} It was {seen[0] if seen else 'never read'}.") from None


async def finished(runtime: Runtime, ref: TaskRef, *, timeout: float = 5.0) -> TaskState:
    """Wait until the task has recorded how its run ended; return that state."""

    async def check() -> TaskState | None:
        state = await runtime.get_state(ref)
        return state if state.status.is_finished else None

    return await eventually(check, timeout=timeout, what=f"{ref} to record how its run ended")


async def stored(
    runtime: Runtime,
    ref: TaskRef,
    name: str,
    *,
    until: Callable[[Any], bool] = lambda value: value is not None,
    timeout: float = 5.0,
) -> Any:
    """Wait until the task's stored field ``name`` satisfies ``until``; return its value."""

    async def check() -> tuple[Any] | None:
        value = (await runtime.get_state(ref)).fields.get(name)
        return (value,) if until(value) else None

    found = await eventually(check, timeout=timeout, what=f"{ref} to store {name!r}")
    return found[0]


async def readable(runtime: Runtime, ref: TaskRef, *, timeout: float = 5.0) -> TaskState:
    """``ref``'s state, once ``runtime`` reads its storage again.

    A runtime that lived through a storage outage may refuse calls for a
    moment after it (a circuit breaker's cool-down): what a case asserts is
    that its calls succeed again, within the deadline.
    """

    async def read() -> TaskState | None:
        try:
            return await runtime.get_state(ref)
        except Exception:  # any error: not readable yet
            return None

    return await eventually(read, timeout=timeout, what=f"{ref}'s state to be readable again")


async def nothing_running(runtime: Runtime, *, timeout: float = 5.0) -> None:
    """Wait until ``runtime`` runs no task."""
    await eventually(
        lambda: runtime.stats().running_tasks == 0, timeout=timeout, what="no task running"
    )


async def subscribers_are(runtime: Runtime, count: int, *, context: object = "") -> None:
    """Wait until ``runtime`` has ``count`` registered subscribers; ``context`` names the case."""
    await eventually(
        lambda: runtime.stats().subscribers == count,
        what=f"{count} registered subscriber(s) ({context}; stats {runtime.stats()})",
    )
