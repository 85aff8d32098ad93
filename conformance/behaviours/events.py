"""Tasks that send events and end: at a pace of their own, the case's, or back to back.

The paced ones wait for the case through their fields (:func:`stepper`,
:func:`wait_for_flag`, :func:`ticker`), so "a client joins between step 2
and 3" is a state the case sets, not a guess about timing. Sleeps here stand
for work between two events.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..contract import Event, Runtime, TaskContext, TaskRef
from ..waiting import stored
from .fields import wait_for_field

if TYPE_CHECKING:
    from ..clients import ClientStream


async def steps(ctx: TaskContext) -> Mapping[str, Any]:
    """``start``, ``fields['steps']`` (default 3) ``progress`` events, then return."""
    total = int(ctx.fields.get("steps", 3))
    delay = float(ctx.fields.get("delay", 0))
    await ctx.send_event("start", {"message": ctx.fields.get("message", ""), "total_steps": total})
    for step in range(1, total + 1):
        if delay:
            await asyncio.sleep(delay)  # simulated work
        await ctx.send_event("progress", {"step": step, "total_steps": total})
    return {"total_steps": total}


async def stepper(ctx: TaskContext) -> Mapping[str, Any]:
    """Send ``progress`` N once the case sets field ``allow`` to at least N; end at ``total``.

    The case paces the task exactly. After each event the task stores
    ``reached`` (0 after ``start``), so a case can see its progress with no
    client subscribed (:func:`reached`).
    """
    total = int(ctx.fields.get("total", 3))
    await ctx.send_event("start", {"total_steps": total})
    await ctx.write_fields(reached=0)
    for step in range(1, total + 1):
        await wait_for_field(ctx, lambda f, step=step: int(f.get("allow", 0)) >= step)
        await ctx.send_event("progress", {"step": step})
        await ctx.write_fields(reached=step)
    return {"total_steps": total}


async def reached(runtime: Runtime, ref: TaskRef, step: int) -> None:
    """Wait until a :func:`stepper` task has stored ``reached >= step``."""
    await stored(
        runtime, ref, "reached", until=lambda value: value is not None and int(value) >= step
    )


async def through_step(stream: ClientStream, step: int) -> list[Event]:
    """Read a :func:`stepper` task's stream up to ``progress`` ``step``; all it has seen."""
    while True:
        event = await stream.next()
        if event.type == "progress" and event.data.get("step") == step:
            return list(stream.seen)


async def wait_for_flag(ctx: TaskContext) -> Mapping[str, Any]:
    """The guide's ContinueTask: ``started``, wait until field ``go`` is true, ``final``."""
    await ctx.send_event("started", {"go": bool(ctx.fields.get("go"))})
    await wait_for_field(ctx, lambda f: bool(f.get("go")))
    await ctx.send_event("final", {"go": True})
    return {"waited": True}


async def ticker(ctx: TaskContext) -> Mapping[str, Any]:
    """``tick`` events ``fields['interval']`` seconds apart until the case sets field ``stop``.

    Events keep flowing for as long as the case needs them to, and the case,
    not a clock, says when they end.
    """
    interval = float(ctx.fields.get("interval", 0.003))
    fields = ctx.fields
    index = 0
    while not fields.get("stop"):
        await ctx.send_event("tick", {"index": index})
        index += 1
        await asyncio.sleep(interval)  # simulated work between two events
        fields = await ctx.read_fields()
    return {"ticks": index}


async def trickle(ctx: TaskContext) -> Mapping[str, Any]:
    """Send ``fields['count']`` events ``fields['interval']`` seconds apart (simulated work)."""
    count = int(ctx.fields.get("count", 20))
    interval = float(ctx.fields.get("interval", 0.002))
    for index in range(count):
        await ctx.send_event("tick", {"index": index})
        await asyncio.sleep(interval)  # simulated work between events
    return {"count": count}


async def burst(ctx: TaskContext) -> Mapping[str, Any]:
    """Send ``fields['count']`` events back to back, no pause."""
    count = int(ctx.fields.get("count", 100))
    for index in range(count):
        await ctx.send_event("tick", {"index": index})
    return {"count": count}


async def tagged_burst(ctx: TaskContext) -> Mapping[str, Any]:
    """``fields['count']`` ``tick`` events back to back, each carrying ``fields['tag']``."""
    count = int(ctx.fields.get("count", 100))
    tag = str(ctx.fields.get("tag", ctx.task_id))
    for index in range(count):
        await ctx.send_event("tick", {"tag": tag, "index": index})
    return {"tag": tag, "count": count}


async def yielding_burst(ctx: TaskContext) -> Mapping[str, Any]:
    """Send ``fields['count']`` events, yielding to the loop after each one."""
    count = int(ctx.fields.get("count", 100))
    for index in range(count):
        await ctx.send_event("tick", {"index": index})
        await asyncio.sleep(0)  # a turn for the readers, not a wait
    return {"count": count}


async def concurrent_senders(ctx: TaskContext) -> Mapping[str, Any]:
    """``fields['children']`` TaskGroup children each send ``fields['each']`` events at once."""
    children = int(ctx.fields.get("children", 4))
    each = int(ctx.fields.get("each", 25))

    async def child(index: int) -> None:
        for seq in range(each):
            await ctx.send_event("tick", {"child": index, "seq": seq})
            await asyncio.sleep(0)  # interleave with the other children

    async with asyncio.TaskGroup() as group:
        for index in range(children):
            group.create_task(child(index))
    return {"sent": children * each}
