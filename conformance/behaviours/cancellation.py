"""Tasks that wait until they are stopped, and what they do when they are.

Each parks on a future nothing completes (:func:`park_forever`), so only a
cancellation (a cancel, a timeout, a shutdown) moves it on: what a case
observes is the stop, never a race with the task's own progress. Each sends
its first event inside the region it protects: once a client has seen it, a
cancel cannot land before the handler or the ``finally`` is in place. The
exception, :func:`block_then_end`, ends on its own while its worker cannot
hear a cancel: the race a cancel answered true must still win.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

from ..contract import TaskContext
from .fields import wait_for_field

# Strong references to shielded work that outlives its run: the loop keeps
# only weak references to tasks (see the asyncio.create_task docs).
_SHIELDED: set[asyncio.Task[None]] = set()


async def park_forever() -> None:
    """Wait on a future nothing completes: only cancellation moves a parked task on."""
    await asyncio.get_running_loop().create_future()


async def park(ctx: TaskContext) -> None:
    """Send ``start``, then wait until stopped (a cancel, a timeout or a shutdown)."""
    await ctx.send_event("start", {})
    await park_forever()


@contextlib.asynccontextmanager
async def _resource(ctx: TaskContext) -> AsyncIterator[None]:
    try:
        yield
    finally:
        await ctx.write_fields(released=True)


async def cleanup_probe(ctx: TaskContext) -> None:
    """Parked inside ``async with`` and ``try``; on cancel, report what ran and send ``cleanup``."""
    async with _resource(ctx):
        try:
            await ctx.send_event("start", {})
            await park_forever()
        except asyncio.CancelledError:
            task = asyncio.current_task()
            await ctx.write_fields(cancelling=task.cancelling() if task else -1)
            raise
        finally:
            await ctx.send_event("cleanup", {})
            await ctx.write_fields(finally_ran=True)


async def cleanup_on_stop(ctx: TaskContext) -> None:
    """Send ``working``, wait until stopped; ``finally``, send ``cleanup``, store ``cleaned``."""
    try:
        await ctx.send_event("working", {})
        await park_forever()
    finally:
        await ctx.send_event("cleanup", {})
        await ctx.write_fields(cleaned=True)


async def cleanup_writes_on_cancel(ctx: TaskContext) -> None:
    """Send ``parked``; when cancelled, store ``cleaned`` (a database write) and re-raise."""
    try:
        await ctx.send_event("parked", {})
        await park_forever()
    except asyncio.CancelledError:
        await ctx.write_fields(cleaned=True)
        raise


async def slow_cleanup(ctx: TaskContext) -> None:
    """Parked; stopped, its cleanup takes ``fields["cleanup"]`` seconds, then stores ``cleaned``."""
    await ctx.send_event("start", {})
    try:
        await park_forever()
    finally:
        await asyncio.sleep(float(ctx.fields.get("cleanup", 0.3)))  # simulated cleanup work
        await ctx.write_fields(cleaned=True)


async def cleanup_raises(ctx: TaskContext) -> None:
    """Parked; its cleanup raises ValueError when it is cancelled."""
    try:
        await ctx.send_event("start", {})
        await park_forever()
    finally:
        raise ValueError("cleanup failed")


async def report_cancelling(ctx: TaskContext) -> None:
    """Park; when cancelled, send ``cancel-seen`` with ``current_task().cancelling()``."""
    try:
        await ctx.send_event("parked", {})
        await park_forever()
    except asyncio.CancelledError:
        task = asyncio.current_task()
        cancelling = task.cancelling() if task is not None else -1
        await ctx.send_event("cancel-seen", {"cancelling": cancelling})
        raise


def _hold_the_loop(release: Path, limit: float) -> None:
    """Wait, without yielding to the loop, until ``release`` exists or ``limit`` passes."""
    deadline = time.monotonic() + limit
    while not release.exists() and time.monotonic() < deadline:
        time.sleep(0.005)


async def block_then_end(ctx: TaskContext) -> Any:
    """Store ``blocking``, then hold the event loop until ``fields['release']`` names a file.

    It blocks the loop synchronously, as CPU-bound work does, so its worker
    hears nothing (no cancel, no heartbeat) until the case creates the file.
    Then it ends on its own, as ``fields['then']`` says: ``"fail"`` raises
    ValueError, ``"return"`` returns ``{"ended": "on its own"}``. It stops
    blocking after ``fields['limit']`` seconds (10) whatever happens, so a
    failing case cannot leave a worker stuck.
    """
    release = Path(ctx.fields["release"])
    await ctx.send_event("blocking", {})
    await ctx.write_fields(blocking=True)
    _hold_the_loop(release, float(ctx.fields.get("limit", 10.0)))
    if ctx.fields.get("then") == "fail":
        raise ValueError("failed on its own")
    return {"ended": "on its own"}


async def swallow_once(ctx: TaskContext) -> None:
    """A misbehaving task: it swallows the first cancellation and carries on waiting."""
    swallowed = 0
    while True:
        try:
            if not swallowed:
                await ctx.send_event("start", {})
            await park_forever()
        except asyncio.CancelledError:
            if swallowed:
                raise
            swallowed += 1
            await ctx.write_fields(swallowed=swallowed)


async def swallow_always(ctx: TaskContext) -> None:
    """A task that ignores every cancellation; only its process ending stops it."""
    await ctx.send_event("start", {})
    while True:
        try:
            await park_forever()
        except asyncio.CancelledError:
            continue


async def children(ctx: TaskContext) -> None:
    """Start parked children in a TaskGroup (``fields["children"]``); each records its cancel."""
    count = int(ctx.fields.get("children", 3))
    started = asyncio.Event()
    waiting = 0

    async def child(index: int) -> None:
        nonlocal waiting
        waiting += 1
        if waiting == count:
            started.set()
        try:
            await park_forever()
        except asyncio.CancelledError:
            await ctx.write_fields(**{f"child_{index}": "cancelled"})
            raise

    async with asyncio.TaskGroup() as group:
        for index in range(count):
            group.create_task(child(index), name=f"conformance-child-{index}")
        await started.wait()
        await ctx.send_event("children-started", {"children": count})


async def fetch(ctx: TaskContext) -> Mapping[str, Any]:
    """GET ``fields['url']``, send ``connected`` on the headers, read the body."""
    from ..clients import http_client

    async with http_client(timeout=30) as http:
        async with http.stream("GET", ctx.fields["url"]) as response:
            await ctx.send_event("connected", {"status": response.status_code})
            received = 0
            async for chunk in response.aiter_bytes():
                received += len(chunk)
    return {"bytes": received}


async def shielded_work(ctx: TaskContext) -> None:
    """Await ``asyncio.shield`` around work that waits for field ``finish``.

    The work sends ``shielding`` first: by then the task is parked on the
    shield. It stores ``shielded_done`` when it ends, and gives up after
    ``fields['limit']`` seconds so that a failing case cannot leave it behind.
    The task sends ``shield-cancelled`` when the CancelledError reaches it at
    the shield.
    """
    limit = float(ctx.fields.get("limit", 10.0))

    async def work() -> None:
        await ctx.send_event("shielding", {})
        async with asyncio.timeout(limit):
            await wait_for_field(ctx, lambda f: bool(f.get("finish")))
        await ctx.write_fields(shielded_done=True)

    inner = asyncio.create_task(work(), name=f"conformance:shielded:{ctx.task_id}")
    _SHIELDED.add(inner)
    inner.add_done_callback(_SHIELDED.discard)
    try:
        await asyncio.shield(inner)
    except asyncio.CancelledError:
        await ctx.send_event("shield-cancelled", {"work_done": inner.done()})
        raise
    await ctx.send_event("shield-returned", {})
