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
from typing import TypeVar

T = TypeVar("T")

#: Seconds between two checks of a polled condition.
POLL_INTERVAL = 0.005


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
