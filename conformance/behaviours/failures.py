"""Tasks that fail: by raising anything at all, from TaskGroup children, or once released.

Whatever a task raises ends its run in one ``error`` event, never the loop or
the process (EDGE-1): ``SystemExit``, ``KeyboardInterrupt`` and a
``CancelledError`` of the task's own making among them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from ..contract import TaskContext
from .cancellation import park_forever
from .fields import wait_for_field

#: Exceptions :func:`raise_named` can raise, by the ``error_type`` clients must see.
RAISABLE: dict[str, type[BaseException]] = {
    "ValueError": ValueError,
    "MemoryError": MemoryError,
    "TimeoutError": TimeoutError,
    "SystemExit": SystemExit,
    "KeyboardInterrupt": KeyboardInterrupt,
    "CancelledError": asyncio.CancelledError,
}

#: Exceptions the children of :func:`group_many_fail` can raise, by name.
_GROUP_ERRORS: dict[str, type[Exception]] = {
    "ValueError": ValueError,
    "RuntimeError": RuntimeError,
    "LookupError": LookupError,
    "ZeroDivisionError": ZeroDivisionError,
}


async def fail(ctx: TaskContext) -> None:
    """Send ``start``, then raise ValueError(fields['message'])."""
    await ctx.send_event("start", {})
    raise ValueError(ctx.fields.get("message", "task failed on purpose"))


async def raise_named(ctx: TaskContext) -> None:
    """Send ``start``, then raise ``RAISABLE[fields['raise']](fields['message'])``."""
    await ctx.send_event("start", {})
    raise RAISABLE[ctx.fields["raise"]](ctx.fields.get("message", "raised on purpose"))


async def fail_when_released(ctx: TaskContext) -> None:
    """Count this run in field ``runs``, send ``start``, raise once ``release`` reaches the count.

    Created with ``release=1``, its first run fails at once; a run after a
    retry waits until the case writes ``release=2``, so a client can be
    watching before it ends.
    """
    run = int(ctx.fields.get("runs", 0)) + 1
    await ctx.write_fields(runs=run)
    await ctx.send_event("start", {"run": run})
    await wait_for_field(ctx, lambda fields: int(fields.get("release", 0)) >= run)
    raise ValueError(f"run {run} failed on purpose")


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
            await park_forever()
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


async def group_many_fail(ctx: TaskContext) -> None:
    """A TaskGroup whose children raise ``fields['errors']`` (``[type, message]`` pairs).

    Every child raises at its first step, before the group can cancel any of
    them, so each error is one of the group's.
    """
    errors = [(_GROUP_ERRORS[kind], message) for kind, message in ctx.fields.get("errors", [])]

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
