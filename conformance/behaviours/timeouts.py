"""Tasks with a clock in them: their own ``asyncio.timeout``, or work that takes a while.

A task's own timeout is not the implementation's: one that expires inside the
task is the task's failure, or its business if it catches it. Work that takes
``fields['work']`` seconds races a timeout or a cancel, and stores nothing
unless it finishes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from ..contract import TaskContext
from .cancellation import park_forever


async def own_timeout_expires(ctx: TaskContext) -> None:
    """Let the task's own ``asyncio.timeout(fields['own'])`` expire, uncaught."""
    await ctx.send_event("inside", {"own": float(ctx.fields.get("own", 0.05))})
    async with asyncio.timeout(float(ctx.fields.get("own", 0.05))):
        await park_forever()


async def own_timeout_caught(ctx: TaskContext) -> Mapping[str, Any]:
    """Catch the expiry of its own ``asyncio.timeout``, send ``caught``, run on, return."""
    try:
        async with asyncio.timeout(float(ctx.fields.get("own", 0.05))):
            await park_forever()
    except TimeoutError:
        await ctx.send_event("caught", {"error_type": "TimeoutError"})
    await ctx.send_event("after", {})
    return {"ran_on": True}


async def inside_long_timeout(ctx: TaskContext) -> None:
    """Wait inside its own long ``asyncio.timeout`` block; report the CancelledError it gets there.

    ``inside`` says it is in the block; ``stopped-inside`` that the cancellation
    (a cancel, or the implementation's timeout) reached it there.
    """
    async with asyncio.timeout(float(ctx.fields.get("own", 30.0))):
        try:
            await ctx.send_event("inside", {})
            await park_forever()
        except asyncio.CancelledError:
            await ctx.send_event("stopped-inside", {})
            raise


async def work_for(ctx: TaskContext) -> Mapping[str, Any]:
    """Send ``start``, work ``fields['work']`` seconds, return: for racing a timeout."""
    work = float(ctx.fields.get("work", 0.05))
    await ctx.send_event("start", {"work": work})
    await asyncio.sleep(work)  # simulated work
    return {"worked": work}


async def work_then_mark(ctx: TaskContext) -> Mapping[str, Any]:
    """Send ``start``, work ``fields['work']`` seconds, store ``work_done``, return.

    A run that is stopped in time never stores ``work_done``.
    """
    work = float(ctx.fields.get("work", 0.2))
    await ctx.send_event("start", {"work": work})
    await asyncio.sleep(work)  # simulated work
    await ctx.write_fields(work_done=True)
    return {"worked": work}
