"""Tasks whose stored fields are the point: written from both sides, runs, faults, reports.

They write fields while the case does, count their runs, survive storage
faults, and report what they see of their asyncio task and context. Those
that a race could make run twice, or lose a write of, record what they did
under field names only they use (a run's own marker, the writer's own keys):
merging fields keeps every distinct key, so the stored state alone shows a
second run or a lost update, whichever process ran the task. Those that
probe storage catch what a failing storage call raises: surviving that is
what they show.
"""

from __future__ import annotations

import asyncio
import contextvars
import os
import random
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from ..contract import TaskContext, TaskState
from ..waiting import POLL_INTERVAL

#: Field-name prefix of the marker each run of :func:`count_runs` stores.
RUN_MARKER = "run_"

#: Set by a case before ``start_task``; :func:`report_context` says what it sees.
CALLER_VALUE: contextvars.ContextVar[str] = contextvars.ContextVar("conformance_caller_value")


async def wait_for_field(
    ctx: TaskContext, ready: Callable[..., bool], *, interval: float = 0.005
) -> None:
    """Poll the task's stored fields until ``ready(fields)`` holds."""
    fields = ctx.fields
    while not ready(fields):
        await asyncio.sleep(interval)  # poll interval: the task waits on its stored state
        fields = await ctx.read_fields()


async def write_fields(ctx: TaskContext) -> Mapping[str, Any]:
    """Once field ``go`` is true, write ``fields['count']`` fields ``task_<n>``, one at a time."""
    await ctx.send_event("start", {})
    fields = ctx.fields
    while not fields.get("go"):
        await asyncio.sleep(POLL_INTERVAL)  # poll interval: the task waits on its stored state
        fields = await ctx.read_fields()
    count = int(fields["count"])
    for index in range(count):
        await ctx.write_fields(**{f"task_{index}": index})
    return {"written": count}


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


async def count_runs(ctx: TaskContext) -> Mapping[str, Any]:
    """Store a marker of this run under a key of its own, send ``started``, return.

    Two runs of one task leave two ``run_*`` keys, however they interleave.
    """
    marker = f"{RUN_MARKER}{uuid.uuid4().hex}"
    await ctx.write_fields(**{marker: os.getpid()})
    await ctx.send_event("started", {"marker": marker})
    return {"marker": marker}


def run_markers(state: TaskState) -> list[str]:
    """The markers the runs of a :func:`count_runs` task stored: one per run."""
    return sorted(key for key in state.fields if key.startswith(RUN_MARKER))


async def storage_probe(ctx: TaskContext) -> Mapping[str, Any]:
    """Write a field over and over; report each change between failing and working.

    Sends ``storage-error`` (with ``error_type``) when a write starts failing
    and ``storage-ok`` when one succeeds again; the events themselves need no
    storage. Returns once the stored field ``stop`` is true, or, with field
    ``end_on_error``, right after the first failure (so the run ends while
    storage is down).
    """
    await ctx.send_event("start", {})
    failing = False
    writes = 0
    while True:
        try:
            await ctx.write_fields(probe=writes)
            fields = await ctx.read_fields()
        except Exception as exc:  # whatever the implementation raises for a storage fault
            if not failing:
                failing = True
                await ctx.send_event(
                    "storage-error", {"error_type": type(exc).__name__, "message": str(exc)[:300]}
                )
                if ctx.fields.get("end_on_error"):
                    return {"ended": "while storage was down"}
        else:
            writes += 1
            if failing:
                failing = False
                await ctx.send_event("storage-ok", {"writes": writes})
            if fields.get("stop"):
                return {"writes": writes}
        await asyncio.sleep(POLL_INTERVAL * 4)  # the probe's pace, not a synchronisation


async def report_task_name(ctx: TaskContext) -> None:
    """Store the name of the asyncio task running it, then wait for field ``go``."""
    task = asyncio.current_task()
    await ctx.write_fields(task_name=task.get_name() if task is not None else "")
    await wait_for_field(ctx, lambda f: bool(f.get("go")))


async def report_context(ctx: TaskContext) -> Mapping[str, Any]:
    """Store the value of :data:`CALLER_VALUE` it sees (``<unset>`` if none)."""
    seen = CALLER_VALUE.get("<unset>")
    await ctx.write_fields(seen=seen)
    return {"seen": seen}
