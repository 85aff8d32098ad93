"""The functions ``streaming.tasks`` exports: events, cancel, the exact ending."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from asgiref.sync import async_to_sync

from .. import db
from ..states import TaskStatus
from .compat import TaskResultDoesNotExist
from .models import running_task, tasks


async def send_event(context: Any, type: str, data: Mapping[str, Any] | None = None) -> None:
    """Send an event to every client of the running task whose ``TaskContext`` this is.

    Same wire format and ids as a model task's ``send_event``; the same types
    are refused (the terminal and control ones, a type that is not 1 to 64 of
    ``[A-Za-z0-9_.-]``, data that is not strict JSON).
    """
    row, _ = running_task(context)
    await row.send_event(type, data)


def send_event_sync(context: Any, type: str, data: Mapping[str, Any] | None = None) -> None:
    """:func:`send_event` from a sync ``@task`` (it runs in a thread of its own).

    Waits until the event is published. Once the task is cancelled, raises
    (a cancel cannot stop a thread; the task's next event is where it stops).
    """
    row, loop = running_task(context)
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is loop:
        raise RuntimeError(
            "Cannot call send_event_sync() on the event loop: an async @task awaits send_event()."
        )
    asyncio.run_coroutine_threadsafe(row.send_event(type, data), loop).result()


async def acancel(result_id: str, reason: str | None = None) -> bool:
    """Cancel a READY or RUNNING task; False if it is neither (finished, or cancelled already).

    In a streaming server's process, its coordinator cancels at once. From
    any other process (a shell, a command) the row is marked: a READY task
    ends CANCELLED now, and a running one's owner stops it within a
    heartbeat (``LEASE / 3`` seconds). Raises ``TaskResultDoesNotExist``.
    """
    from ..coordinator import Coordinator
    from ..errors import UnknownTask
    from .pickup import serving

    coordinator = serving[-1] if serving else None
    if coordinator is None or not coordinator.accepting:
        from ..bus import InMemoryBus

        # Never opened: its keeper must not start to run other tasks here.
        coordinator = Coordinator(bus=InMemoryBus())
    pk = _pk(result_id)
    try:
        return await coordinator.cancel_task(tasks, pk, reason)
    except UnknownTask:
        raise TaskResultDoesNotExist(result_id) from None


def cancel(result_id: str, reason: str | None = None) -> bool:
    """:func:`acancel`, from sync code."""
    return async_to_sync(acancel)(result_id, reason)


async def aending(result_id: str) -> TaskStatus:
    """The task's exact status: CANCELLED, TIMED_OUT and INTERRUPTED too, which Django lacks."""
    pk = _pk(result_id)
    found = await db.run(
        lambda: tasks.objects.filter(pk=pk).values_list("status", flat=True).afirst()
    )
    if found is None:
        raise TaskResultDoesNotExist(result_id)
    return TaskStatus(found)


def ending(result_id: str) -> TaskStatus:
    """:func:`aending`, from sync code."""
    return async_to_sync(aending)(result_id)


def _pk(result_id: str) -> int:
    text = str(result_id)
    if not (text.isascii() and text.isdigit()) or len(text) > 18:
        raise TaskResultDoesNotExist(result_id)
    return int(text)
