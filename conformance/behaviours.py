"""Task behaviours the suites supply: module-level, so any process can import them.

Each takes a :class:`~conformance.contract.TaskContext` and reads its
parameters from the task's fields. Behaviours that must wait for the case
(a step, a release) wait on their fields, which the case changes with
``Runtime.write_fields``: the case drives the task, never a clock.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping
from typing import Any

from .contract import Runtime, TaskContext, TaskRef
from .waiting import stored


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

    The case paces the task exactly, so "a client joins between step 2 and 3"
    is a state, not a guess about timing. After each event the task stores
    ``reached`` (0 after ``start``), so a case can see its progress with no
    client subscribed.
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


async def wait_for_flag(ctx: TaskContext) -> Mapping[str, Any]:
    """The guide's ContinueTask: ``started``, wait until field ``go`` is true, ``final``."""
    await ctx.send_event("started", {"go": bool(ctx.fields.get("go"))})
    await wait_for_field(ctx, lambda f: bool(f.get("go")))
    await ctx.send_event("final", {"go": True})
    return {"waited": True}


async def burst(ctx: TaskContext) -> Mapping[str, Any]:
    """Send ``fields['count']`` events back to back, no pause."""
    count = int(ctx.fields.get("count", 100))
    for index in range(count):
        await ctx.send_event("tick", {"index": index})
    return {"count": count}


async def fail(ctx: TaskContext) -> None:
    """Send ``start``, then raise ValueError(fields['message'])."""
    await ctx.send_event("start", {})
    raise ValueError(ctx.fields.get("message", "task failed on purpose"))


async def send_terminal(ctx: TaskContext) -> None:
    """Try to send a ``complete`` event itself; report whether it was refused."""
    try:
        await ctx.send_event("complete", {"forged": True})
    except Exception as exc:  # the refusal is the point
        await ctx.send_event("refused", {"error_type": type(exc).__name__, "message": str(exc)})
    else:
        await ctx.send_event("accepted", {})


#: Event types outside SPEC's character set (FUNC-19). The first three would
#: each forge a frame if written into SSE as they are: a ``complete`` with an
#: id of 999 that the task never sent.
HOSTILE_EVENT_TYPES = (
    'progress\ndata: {"forged": true}\nid: 999\n\nevent: complete',
    "progress\r\nid: 999",
    "progress\rid: 999",
    "",
    "two words",
    "tab\there",
    "nul\x00",
    "caf\u00e9",
    "x" * 65,
)
#: Types at the edges of the character set, which must be sent as they are.
EDGE_EVENT_TYPES = ("a", "Z-9_z.0", "x" * 64)


async def send_hostile_types(ctx: TaskContext) -> None:
    """Try every type in HOSTILE_EVENT_TYPES, then the edge ones; report what went through."""
    accepted = []
    for kind in HOSTILE_EVENT_TYPES:
        try:
            await ctx.send_event(kind, {"forged": True})
        except Exception:  # the refusal is the point
            continue
        accepted.append(kind)
    for kind in EDGE_EVENT_TYPES:
        await ctx.send_event(kind, {"edge": True})
    await ctx.send_event("report", {"accepted": accepted})


#: Event data that is not strict JSON (FUNC-20): RFC 8259 has no NaN or infinity.
NOT_STRICT_JSON: tuple[Mapping[str, Any], ...] = (
    {"value": float("nan")},
    {"value": float("inf")},
    {"value": float("-inf")},
    {"nested": [1, {"deeper": float("nan")}]},
)


async def send_non_json(ctx: TaskContext) -> Mapping[str, Any] | None:
    """Try each of NOT_STRICT_JSON; report how many were sent; return NaN if asked to."""
    accepted = 0
    for data in NOT_STRICT_JSON:
        try:
            await ctx.send_event("bad", data)
        except Exception:  # the refusal is the point
            continue
        accepted += 1
    await ctx.send_event("report", {"accepted": accepted})
    if ctx.fields.get("return_nan"):
        return {"score": float("nan")}
    return None


async def wait_for_field(ctx: TaskContext, ready: Any, *, interval: float = 0.005) -> None:
    """Poll the task's stored fields until ``ready(fields)`` holds."""
    fields = ctx.fields
    while not ready(fields):
        await asyncio.sleep(interval)  # poll interval: the task waits on its stored state
        fields = await ctx.read_fields()


# -- cancellation ---------------------------------------------------------------


async def park_forever() -> None:
    """Wait on a future nothing completes: only cancellation moves a parked task on."""
    await asyncio.get_running_loop().create_future()


async def park(ctx: TaskContext) -> None:
    """Send ``start``, then wait until cancelled."""
    await ctx.send_event("start", {})
    await park_forever()


@contextlib.asynccontextmanager
async def _resource(ctx: TaskContext) -> AsyncIterator[None]:
    try:
        yield
    finally:
        await ctx.write_fields(released=True)


async def cleanup_probe(ctx: TaskContext) -> None:
    """Parked inside ``async with`` and ``try``; on cancel, report what ran and send ``cleanup``.

    ``start`` is sent inside the protected region: once a client has seen it,
    a cancel cannot land before the ``finally`` is in place.
    """
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


async def slow_cleanup(ctx: TaskContext) -> None:
    """Parked; stopped, its cleanup takes ``fields["cleanup"]`` seconds, then stores ``cleaned``."""
    await ctx.send_event("start", {})
    try:
        await park_forever()
    finally:
        await asyncio.sleep(float(ctx.fields.get("cleanup", 0.3)))  # simulated cleanup work
        await ctx.write_fields(cleaned=True)


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
    """GET ``fields['url']`` with httpx, send ``connected`` on the headers, read the body."""
    import httpx

    async with httpx.AsyncClient(timeout=httpx.Timeout(30)) as http:
        async with http.stream("GET", ctx.fields["url"]) as response:
            await ctx.send_event("connected", {"status": response.status_code})
            received = 0
            async for chunk in response.aiter_bytes():
                received += len(chunk)
    return {"bytes": received}


async def cleanup_raises(ctx: TaskContext) -> None:
    """Parked; its cleanup raises ValueError when it is cancelled."""
    try:
        await ctx.send_event("start", {})
        await park_forever()
    finally:
        raise ValueError("cleanup failed")
