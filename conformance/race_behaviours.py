"""Behaviours for the race cases (RACE): module-level, so a server process can import them.

Like :mod:`conformance.behaviours`, each reads its parameters from the task's
fields. Those that a race could make run twice, or lose a write of, record
what they did under field names only they use (a run's own marker, the
writer's own keys): merging fields keeps every distinct key, so the stored
state alone shows a second run or a lost update, whichever process ran the
task.
"""

from __future__ import annotations

import asyncio
import os
import random
import uuid
from collections.abc import Mapping
from typing import Any

from .contract import TaskContext

#: Field-name prefix of the marker each run of :func:`count_runs` stores.
RUN_MARKER = "run_"


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


async def tagged_burst(ctx: TaskContext) -> Mapping[str, Any]:
    """``fields['count']`` ``tick`` events back to back, each carrying ``fields['tag']``."""
    count = int(ctx.fields.get("count", 100))
    tag = str(ctx.fields.get("tag", ctx.task_id))
    for index in range(count):
        await ctx.send_event("tick", {"tag": tag, "index": index})
    return {"tag": tag, "count": count}


async def count_runs(ctx: TaskContext) -> Mapping[str, Any]:
    """Store a marker of this run under a key of its own, send ``started``, return.

    Two runs of one task leave two ``run_*`` keys, however they interleave.
    """
    marker = f"{RUN_MARKER}{uuid.uuid4().hex}"
    await ctx.write_fields(**{marker: os.getpid()})
    await ctx.send_event("started", {"marker": marker})
    return {"marker": marker}


async def field_writer(ctx: TaskContext) -> Mapping[str, Any]:
    """Send ``start``, then store ``task_0`` .. ``task_<n-1>`` one write at a time.

    ``fields['writes']`` is n; ``fields['seed']`` seeds how many ``sleep(0)``
    yields (up to ``fields['max_yields']``) precede each write, so the task's
    writes interleave with the case's differently under each seed.
    """
    count = int(ctx.fields.get("writes", 10))
    rng = random.Random(int(ctx.fields.get("seed", 0)))
    max_yields = int(ctx.fields.get("max_yields", 3))
    await ctx.send_event("start", {"writes": count})
    for index in range(count):
        for _ in range(rng.randint(0, max_yields)):
            await asyncio.sleep(0)
        await ctx.write_fields(**{f"task_{index}": index})
    return {"writes": count}


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
