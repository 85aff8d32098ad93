"""Behaviours for the asyncio-patterns suite (ASYNC): timeouts, groups, shields, contexts.

Like :mod:`conformance.behaviours`, each is a module-level async function
given a :class:`~conformance.contract.TaskContext`, so a server process can
import it by path. They report what happened inside them, where a case must
see it, through events or stored fields (``ctx.write_fields``); they wait
for the case through their fields (:func:`~conformance.behaviours.wait_for_field`),
never on a clock. Sleeps here stand for work or for "wait forever until
stopped"; every child task a behaviour starts ends with its run, except the
shielded work of :func:`shielded_work`, which ends as soon as the case lets it.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Mapping
from typing import Any

from .behaviours import wait_for_field
from .contract import TaskContext

#: Long enough to outlast any case: a behaviour that "parks" waits this long.
FOREVER = 3600.0

#: Set by a case before ``start_task``; :func:`report_context` says what it sees.
CALLER_VALUE: contextvars.ContextVar[str] = contextvars.ContextVar("conformance_caller_value")

# Strong references to shielded work that outlives its run: the loop keeps
# only weak references to tasks (see the asyncio.create_task docs).
_SHIELDED: set[asyncio.Task[None]] = set()


async def park(ctx: TaskContext) -> None:
    """Send ``parked``, then wait until stopped (a timeout or a cancel)."""
    await ctx.send_event("parked", {})
    await asyncio.sleep(FOREVER)  # stands for work that never ends by itself


async def own_timeout_expires(ctx: TaskContext) -> None:
    """Let the task's own ``asyncio.timeout(fields['own'])`` expire, uncaught."""
    await ctx.send_event("inside", {"own": float(ctx.fields.get("own", 0.05))})
    async with asyncio.timeout(float(ctx.fields.get("own", 0.05))):
        await asyncio.sleep(FOREVER)


async def own_timeout_caught(ctx: TaskContext) -> Mapping[str, Any]:
    """Catch the expiry of its own ``asyncio.timeout``, send ``caught``, run on, return."""
    try:
        async with asyncio.timeout(float(ctx.fields.get("own", 0.05))):
            await asyncio.sleep(FOREVER)
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
            await asyncio.sleep(FOREVER)
        except asyncio.CancelledError:
            await ctx.send_event("stopped-inside", {})
            raise


async def report_cancelling(ctx: TaskContext) -> None:
    """Park; when cancelled, send ``cancel-seen`` with ``current_task().cancelling()``."""
    try:
        # Sent inside the try: once a client has seen it, a cancel cannot land
        # before the handler is in place (sending may yield to the loop).
        await ctx.send_event("parked", {})
        await asyncio.sleep(FOREVER)
    except asyncio.CancelledError:
        task = asyncio.current_task()
        cancelling = task.cancelling() if task is not None else -1
        await ctx.send_event("cancel-seen", {"cancelling": cancelling})
        raise


async def group_one_fails(ctx: TaskContext) -> None:
    """A TaskGroup: ``fields['siblings']`` children park, then one child raises ValueError.

    Each sibling sends ``sibling-parked`` and, when cancelled, ``sibling-cancelled``.
    The failing child raises only once every sibling is parked.
    """
    siblings = int(ctx.fields.get("siblings", 2))
    parked = asyncio.Semaphore(0)

    async def sibling(index: int) -> None:
        try:
            await ctx.send_event("sibling-parked", {"index": index})
            parked.release()
            await asyncio.sleep(FOREVER)
        except asyncio.CancelledError:
            await ctx.send_event("sibling-cancelled", {"index": index})
            raise

    async def failing() -> None:
        for _ in range(siblings):
            await parked.acquire()
        raise ValueError(ctx.fields.get("message", "child failed"))

    async with asyncio.TaskGroup() as group:
        for index in range(siblings):
            group.create_task(sibling(index))
        group.create_task(failing())


_ERRORS: dict[str, type[Exception]] = {
    "ValueError": ValueError,
    "RuntimeError": RuntimeError,
    "LookupError": LookupError,
    "ZeroDivisionError": ZeroDivisionError,
}


async def group_many_fail(ctx: TaskContext) -> None:
    """A TaskGroup whose children raise ``fields['errors']`` (``[type, message]`` pairs).

    Every child raises at its first step, before the group can cancel any of
    them, so each error is one of the group's.
    """
    errors = [(_ERRORS[kind], message) for kind, message in ctx.fields.get("errors", [])]

    async def child(kind: type[Exception], message: str) -> None:
        raise kind(message)

    await ctx.send_event("starting", {"children": len(errors)})
    async with asyncio.TaskGroup() as group:
        for kind, message in errors:
            group.create_task(child(kind, message))


async def handle_with_except_star(ctx: TaskContext) -> Mapping[str, Any]:
    """A TaskGroup raises ValueErrors; ``except* ValueError`` handles them; return."""

    async def child(index: int) -> None:
        raise ValueError(f"child {index} failed")

    handled = 0
    try:
        async with asyncio.TaskGroup() as group:
            for index in range(int(ctx.fields.get("children", 2))):
                group.create_task(child(index))
    except* ValueError as caught:
        handled = len(caught.exceptions)
    await ctx.send_event("handled", {"count": handled})
    return {"handled": handled}


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


async def yielding_burst(ctx: TaskContext) -> Mapping[str, Any]:
    """Send ``fields['count']`` events, yielding to the loop after each one."""
    count = int(ctx.fields.get("count", 100))
    for index in range(count):
        await ctx.send_event("tick", {"index": index})
        await asyncio.sleep(0)  # a turn for the readers, not a wait
    return {"count": count}


async def trickle(ctx: TaskContext) -> Mapping[str, Any]:
    """Send ``fields['count']`` events ``fields['interval']`` seconds apart (simulated work)."""
    count = int(ctx.fields.get("count", 20))
    interval = float(ctx.fields.get("interval", 0.002))
    for index in range(count):
        await ctx.send_event("tick", {"index": index})
        await asyncio.sleep(interval)  # simulated work between events
    return {"count": count}


async def cleanup_on_stop(ctx: TaskContext) -> None:
    """Send ``working``, wait until stopped; ``finally``, send ``cleanup``, store ``cleaned``."""
    try:
        await ctx.send_event("working", {})
        await asyncio.sleep(FOREVER)
    finally:
        await ctx.send_event("cleanup", {})
        await ctx.write_fields(cleaned=True)


async def cleanup_writes_on_cancel(ctx: TaskContext) -> None:
    """Send ``parked``; when cancelled, store ``cleaned`` (a database write) and re-raise."""
    try:
        await ctx.send_event("parked", {})
        await asyncio.sleep(FOREVER)
    except asyncio.CancelledError:
        await ctx.write_fields(cleaned=True)
        raise


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
