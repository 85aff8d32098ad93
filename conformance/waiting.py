"""Wait for a condition under a deadline, never for a fixed time.

A case that needs "the server has unregistered the client" or "the task is
RUNNING" waits for exactly that with :func:`eventually`; a case that needs an
event waits on the stream (``ClientStream.next``). Both fail with a message
saying what was awaited, and for streams, the events seen so far.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from .contract import Runtime, TaskRef, TaskState, TaskStatus

T = TypeVar("T")

#: Seconds between two checks of a polled condition.
POLL_INTERVAL = 0.005
#: Seconds a case allows beyond a deadline the implementation declares
#: (``Implementation.timings``), for a loaded machine.
MARGIN = 5.0


class WaitTimeout(AssertionError):
    """The awaited condition did not hold before the deadline."""


async def eventually(
    condition: Callable[[], T | Awaitable[T]],
    *,
    timeout: float = 5.0,
    what: str = "the condition",
) -> T:
    """Return the first truthy value of ``condition()``, checked until ``timeout`` seconds pass."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last: T | None = None
    while True:
        value = condition()
        last = await value if inspect.isawaitable(value) else value
        if last:
            return last
        if loop.time() >= deadline:
            raise WaitTimeout(
                f"Timed out after {timeout:g}s waiting for {what} (last value: {last!r})."
            )
        await asyncio.sleep(POLL_INTERVAL)


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
