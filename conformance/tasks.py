"""Tasks brought to the state a case starts from: ended, interrupted, watched, or left.

Each waits for the state it promises (:mod:`conformance.waiting`), so the
case goes on from a fact, not from a guess about timing.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from . import behaviours
from .clients import Client, ClientStream, HttpClient
from .contract import Implementation, Runtime, TaskRef, TaskStatus
from .waiting import status_is

if TYPE_CHECKING:
    from .processes import ServerProcess


@contextlib.asynccontextmanager
async def another_runtime(impl: Implementation) -> AsyncIterator[Runtime]:
    """A second runtime on the same storage, shut down when the block ends."""
    second = await impl.start()
    try:
        yield second
    finally:
        await second.shutdown(0.5)


async def interrupted_task(runtime: Runtime, second: Runtime) -> TaskRef:
    """A task whose run was interrupted by a shutdown of another runtime on the same storage."""
    ref = await runtime.create_task(behaviours.park)
    assert await second.start_task(ref)
    await status_is(runtime, ref, TaskStatus.RUNNING)
    await second.shutdown(0.1)
    await status_is(runtime, ref, TaskStatus.INTERRUPTED)
    return ref


async def finish_as(runtime: Runtime, ending: str) -> TaskRef:
    """A task that ran once and ended as ``ending``: failed, cancelled or timed_out."""
    if ending == "failed":
        ref = await runtime.create_task(behaviours.fail_when_released, {"release": 1})
        assert await runtime.start_task(ref)
        await status_is(runtime, ref, TaskStatus.FAILED)
    elif ending == "cancelled":
        ref = await runtime.create_task(behaviours.park)
        assert await runtime.start_task(ref)
        await status_is(runtime, ref, TaskStatus.RUNNING)
        assert await runtime.cancel_task(ref)
        await status_is(runtime, ref, TaskStatus.CANCELLED)
    elif ending == "timed_out":
        ref = await runtime.create_task(behaviours.park, timeout=0.2)
        assert await runtime.start_task(ref)
        await status_is(runtime, ref, TaskStatus.TIMED_OUT)
    else:
        raise ValueError(f"Cannot end a task as {ending!r}: use failed, cancelled or timed_out.")
    return ref


async def terminal_id(client: Client, ref: TaskRef) -> int:
    """The id of a finished task's terminal event, as a new client is given it."""
    stream = await client.subscribe(ref)
    event = await stream.next()
    assert event.is_terminal, stream.trace()
    await stream.expect_end()
    return event.id


async def run_watched(client: Client, runtime: Runtime, ref: TaskRef) -> ClientStream:
    """Subscribe to ``ref``, start it, and read its stream through the terminal event."""
    stream = await client.subscribe(ref)
    await runtime.start_task(ref)
    await stream.until()
    return stream


async def watch_then_leave(server: ServerProcess, runtime: Runtime, ref: TaskRef) -> int:
    """Watch a stepper task on ``server`` through step 2, then leave; the last id seen.

    Steps 3 and 4 are sent unwatched before this returns
    (:func:`~conformance.behaviours.stepper`, created with ``total`` 4 or more).
    """
    async with HttpClient(server.url) as sse:
        stream = await sse.subscribe(ref)
        await server.start_task(ref)
        await runtime.write_fields(ref, allow=2)
        seen = await stream.until("progress")
        seen += await stream.until("progress")
    assert [e.data.get("step") for e in seen if e.type == "progress"] == [1, 2], seen
    await runtime.write_fields(ref, allow=4)
    await behaviours.reached(runtime, ref, 4)
    return seen[-1].id


__all__ = [
    "another_runtime",
    "finish_as",
    "interrupted_task",
    "run_watched",
    "terminal_id",
    "watch_then_leave",
]
