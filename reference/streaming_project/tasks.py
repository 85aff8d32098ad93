"""``@task`` functions of the reference project: the README's walkthrough and the tests.

Each is an ordinary ``django.tasks`` task (the backport's before Django 6.0),
run by ``streaming.tasks.StreamingBackend`` on the streaming server.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from streaming.tasks import send_event, send_event_sync
from streaming.tasks.compat import task_decorator as task


@task(takes_context=True)
async def count(context: Any, steps: int, delay: float = 0.5) -> dict[str, int]:
    """Counts to ``steps``, one ``progress`` event each ``delay`` seconds."""
    for step in range(1, steps + 1):
        await asyncio.sleep(delay)
        await send_event(context, "progress", {"step": step, "total_steps": steps})
    return {"counted": steps}


@task(takes_context=True)
def count_sync(context: Any, steps: int, delay: float = 0.5) -> int:
    """:func:`count`, in sync code (it runs in a thread): returns ``steps``."""
    for step in range(1, steps + 1):
        time.sleep(delay)
        send_event_sync(context, "progress", {"step": step, "total_steps": steps})
    return steps


@task
async def add(a: int, b: int) -> int:
    """No context, no events: returns ``a + b``."""
    return a + b


@task
def divide(a: float, b: float) -> float:
    """Sync, no context: raises ZeroDivisionError when ``b`` is 0."""
    return a / b


@task(priority=10, queue_name="default")
async def urgent() -> str:
    """A higher priority than the others: started first when several are due."""
    return "urgent"
