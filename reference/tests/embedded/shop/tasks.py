"""The project's own task: a report, in steps, each step a progress event."""

import asyncio

from streaming.tasks import send_event
from streaming.tasks.compat import task_decorator as task  # django.tasks.task on Django 6


@task(takes_context=True)
async def build_report(context, pages):
    for page in range(1, pages + 1):
        await asyncio.sleep(0.05)
        await send_event(context, "progress", {"step": page, "total_steps": pages})
    return {"pages": pages}
