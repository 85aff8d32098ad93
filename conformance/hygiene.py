"""Leak checks after every case: tasks, file descriptors, loop errors, the registry.

What a case leaves behind is part of its grade, and it is judged before the
teardown's ``Runtime.shutdown`` could sweep it away. After the case and its
clients have finished, the implementation must hold no subscriber; if no run
is live, it must hold no topic, and neither an asyncio task nor a file
descriptor more than it had once started. These are seen from outside
(``asyncio.all_tasks()``, ``psutil``), so an implementation whose ``stats()``
says nothing is held cannot hide one. After the shutdown it must hold no
running task or topic, no asyncio task it created may still be pending, and
the loop must not have reported a "Task exception was never retrieved" or
"Task was destroyed but it is pending!". "Coroutine ... was never awaited"
surfaces as a RuntimeWarning, which the suite's warning filter turns into an
error.

Descriptors are counted for the whole process: one a case's second runtime
keeps open after its shutdown counts against the case like any other (an
SQLite file stays open while another connection of the process locks it, so
runtimes of one process may have to share connections).
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psutil

from .contract import Runtime
from .waiting import WaitTimeout, eventually

#: Seconds a finished case's tasks get to settle before they count as leaked.
SETTLE_TIMEOUT = 3.0


class HygieneError(AssertionError):
    """A case left something behind."""


@contextmanager
def loop_errors() -> Iterator[list[str]]:
    """Collect what the running loop reports to its exception handler."""
    loop = asyncio.get_running_loop()
    reported: list[str] = []
    previous = loop.get_exception_handler()

    def collect(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        reported.append(
            f"{context.get('message')}: {exc!r}" if exc else str(context.get("message"))
        )

    loop.set_exception_handler(collect)
    try:
        yield reported
    finally:
        loop.set_exception_handler(previous)


async def no_subscribers(runtime: Runtime) -> None:
    """Wait until every client of the case is unregistered."""
    try:
        await eventually(
            lambda: runtime.stats().subscribers == 0,
            timeout=SETTLE_TIMEOUT,
            what="every subscriber to be unregistered after its client left",
        )
    except WaitTimeout as exc:
        raise HygieneError(f"{exc} Stats: {runtime.stats()}") from None


@dataclass(frozen=True)
class Baseline:
    """What a freshly started runtime holds: its own long-lived tasks and open files."""

    tasks: frozenset[asyncio.Task[Any]]
    fds: int

    @classmethod
    def now(cls) -> Baseline:
        return cls(frozenset(asyncio.all_tasks()), psutil.Process().num_fds())


def _describe_fds() -> str:
    process = psutil.Process()
    files = [f.path for f in process.open_files()]
    sockets = [f"{c.laddr}->{c.raddr or '-'} {c.status}" for c in process.net_connections()]
    return f"files {files}; sockets {sockets}"


async def idle_holds_nothing(runtime: Runtime, baseline: Baseline) -> None:
    """If no run is live, wait until no topic, task or descriptor is held beyond ``baseline``."""
    if runtime.stats().running_tasks:
        return  # live runs own tasks and topics; the checks after shutdown judge them
    current = asyncio.current_task()

    def extra_tasks() -> list[asyncio.Task[Any]]:
        return [
            t
            for t in asyncio.all_tasks()
            if t is not current and t not in baseline.tasks and not t.done()
        ]

    def settled() -> bool:
        return (
            runtime.stats().topics == 0
            and not extra_tasks()
            and psutil.Process().num_fds() <= baseline.fds
        )

    try:
        await eventually(settled, timeout=SETTLE_TIMEOUT, what="the idle runtime to let go")
    except WaitTimeout:
        tasks = ", ".join(sorted(t.get_name() for t in extra_tasks())) or "none"
        fds = psutil.Process().num_fds()
        raise HygieneError(
            f"With no run live, the runtime still holds: stats {runtime.stats()}; tasks "
            f"{tasks}; {fds} file descriptors where it started with {baseline.fds} "
            f"({_describe_fds()})"
        ) from None


async def nothing_held(runtime: Runtime) -> None:
    """After shutdown: no running task, subscriber or topic."""
    stats = runtime.stats()
    if stats.running_tasks or stats.subscribers or stats.topics:
        raise HygieneError(f"The runtime still holds state after shutdown: {stats}")


async def no_leaked_tasks(before: set[asyncio.Task[Any]]) -> None:
    """Wait until every task created since ``before`` is done."""
    current = asyncio.current_task()

    def pending() -> list[asyncio.Task[Any]]:
        return [
            t for t in asyncio.all_tasks() if t is not current and t not in before and not t.done()
        ]

    try:
        await eventually(
            lambda: not pending(), timeout=SETTLE_TIMEOUT, what="the case's tasks to end"
        )
    except WaitTimeout:
        names = ", ".join(sorted(t.get_name() for t in pending()))
        raise HygieneError(f"Tasks still pending after the case: {names}") from None


def collect_garbage() -> None:
    """Run the collector so that unawaited coroutines and lost tasks report now, in this case.

    What survives is then frozen (``gc.freeze``): it was no garbage at the
    end of its case, and the next case's collection need not walk it again.
    Walking a Django process's 80,000 objects after every case cost a
    quarter of the suite's CPU.
    """
    gc.collect()
    gc.freeze()
