"""The event loop seen from inside a case: callbacks that block it, tasks left pending.

The cases run on the implementation's loop, so what a blocking call or a
forgotten task does to it is seen here, not guessed from outside; so is
an implementation's run under an eager task factory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from .requirements import UNSUPPORTED
from .waiting import WaitTimeout, eventually

#: ASYNC-13's limit: asyncio debug mode reports callbacks that take longer.
SLOW_CALLBACK = 0.1


def waited_for_cpu() -> float | None:
    """Seconds this thread has spent runnable but off the CPU (Linux schedstat), else None."""
    try:
        with open("/proc/thread-self/schedstat", "rb") as stats:
            return int(stats.read().split()[1]) / 1e9
    except (OSError, ValueError, IndexError):
        return None


class SlowCallbacks(logging.Handler):
    """The slow callbacks asyncio's debug mode reports, less the time the CPU was elsewhere.

    On a loaded machine the OS may keep the loop's thread waiting for a CPU
    in the middle of a quick callback; that is not the callback blocking the
    loop. A tick every few milliseconds notes how long the thread has waited
    so far; when asyncio reports a slow callback (right after it ran), the
    wait since the last tick, which began before the callback did, is taken
    off its duration. Without schedstat (not Linux) nothing is taken off.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(logging.WARNING)
        self.loop = loop
        self.blocking: list[str] = []
        self._mark = waited_for_cpu()
        self._timer = loop.call_later(0.005, self._tick)

    def _tick(self) -> None:
        self._mark = waited_for_cpu()
        self._timer = self.loop.call_later(0.005, self._tick)

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if record.name != "asyncio" or not message.startswith("Executing"):
            return
        args = record.args if isinstance(record.args, tuple) else ()
        took = float(args[-1]) if args and isinstance(args[-1], (int, float)) else SLOW_CALLBACK
        now, mark = waited_for_cpu(), self._mark
        off_cpu = now - mark if now is not None and mark is not None else 0.0
        if took - off_cpu >= SLOW_CALLBACK:
            self.blocking.append(f"{message} ({off_cpu:.3f}s of it waiting for a CPU)")

    def close(self) -> None:
        self._timer.cancel()
        super().close()


def pending_since(before: set[asyncio.Task[Any]]) -> list[asyncio.Task[Any]]:
    """The tasks made since ``before`` was taken that have not finished (but this one)."""
    current = asyncio.current_task()
    return [t for t in asyncio.all_tasks() if t not in before and t is not current and not t.done()]


async def no_task_pending_since(before: set[asyncio.Task[Any]], what: str) -> None:
    """Wait until every task made since ``before`` is done; fail naming those that are not."""
    try:
        await eventually(lambda: not pending_since(before), timeout=3, what=what)
    except WaitTimeout as exc:
        names = ", ".join(sorted(t.get_name() for t in pending_since(before)))
        raise AssertionError(f"{exc} Still pending: {names}") from None


@contextlib.contextmanager
def eager_tasks() -> Iterator[None]:
    """Run the block with ``asyncio.eager_task_factory`` installed (Python 3.12+, else skip)."""
    if sys.version_info < (3, 12):
        pytest.skip(f"{UNSUPPORTED}: asyncio.eager_task_factory needs Python 3.12+")
    loop = asyncio.get_running_loop()
    previous = loop.get_task_factory()
    loop.set_task_factory(asyncio.eager_task_factory)
    try:
        yield
    finally:
        loop.set_task_factory(previous)


__all__ = [
    "SLOW_CALLBACK",
    "SlowCallbacks",
    "eager_tasks",
    "no_task_pending_since",
    "pending_since",
    "waited_for_cpu",
]
