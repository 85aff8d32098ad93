"""What the soak's tasks do: module-level behaviours any worker process can import.

Each reads its parameters from its fields, as :mod:`conformance.behaviours`
does; unlike those, none waits on the harness: a soak's tasks run on their
own clock, so that work goes on while faults come and go.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from typing import Any

from ..contract import TaskContext

__all__ = ["failing", "large", "steady", "stubborn"]


async def steady(ctx: TaskContext) -> Mapping[str, Any]:
    """``fields["count"]`` ``progress`` events, ``fields["interval"]`` s apart, then return."""
    count = int(ctx.fields.get("count", 10))
    interval = float(ctx.fields.get("interval", 0.1))
    for step in range(1, count + 1):
        await ctx.send_event("progress", {"step": step, "of": count})
        await asyncio.sleep(interval)  # simulated work
    return {"steps": count}


async def failing(ctx: TaskContext) -> None:
    """A few ``progress`` events, then ``ValueError``."""
    count = int(ctx.fields.get("count", 3))
    for step in range(1, count + 1):
        await ctx.send_event("progress", {"step": step})
        await asyncio.sleep(float(ctx.fields.get("interval", 0.1)))  # simulated work
    raise ValueError(f"soak task failed after {count} steps, on purpose")


async def stubborn(ctx: TaskContext) -> None:
    """Ticks until stopped; the first cancellation it swallows and ticks on, for a while.

    Ignoring a cancel is what CANCEL-9 is about: the implementation must stop
    it anyway after its grace. A second cancellation ends it.
    """
    interval = float(ctx.fields.get("interval", 0.2))
    swallowed = False
    step = 0
    while True:
        try:
            step += 1
            await ctx.send_event("tick", {"step": step, "swallowed": swallowed})
            await asyncio.sleep(interval)  # simulated work
        except asyncio.CancelledError:
            if swallowed:
                raise
            swallowed = True
            # A task this rude also may not get to say so.
            with contextlib.suppress(Exception):
                await ctx.send_event("ignoring", {"step": step})


async def large(ctx: TaskContext) -> Mapping[str, Any]:
    """``fields['count']`` events of ``fields['size']`` bytes each."""
    count = int(ctx.fields.get("count", 3))
    size = int(ctx.fields.get("size", 256 * 1024))
    for step in range(1, count + 1):
        await ctx.send_event("chunk", {"step": step, "body": "x" * size})
        await asyncio.sleep(float(ctx.fields.get("interval", 0.2)))  # simulated work
    return {"bytes": count * size}
