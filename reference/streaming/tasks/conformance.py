"""The ``@task`` the ``reference-tasks`` implementation runs: a conformance behaviour.

The suite's cases are behaviours (``conformance.contract.Behaviour``); here
each runs as a ``django.tasks`` task, ``run_behaviour``, with its fields in
the row's ``kwargs`` and its events sent through ``streaming.tasks.send_event``:
the path a Django user's ``@task`` takes, from the row to the wire.
"""

from __future__ import annotations

import pkgutil
from collections.abc import Mapping
from typing import Any

from django.db import transaction

from .. import db
from .api import send_event
from .compat import TaskContext, task_decorator
from .models import tasks


@task_decorator(takes_context=True)
async def run_behaviour(
    context: TaskContext, behaviour: str, fields: dict[str, Any]
) -> Mapping[str, Any] | None:
    """Run the behaviour at import path ``behaviour`` (``module:function``)."""
    run = pkgutil.resolve_name(behaviour)
    return await run(BehaviourContext(context, fields))  # type: ignore[no-any-return]


def merge_fields(pk: int, changes: Mapping[str, Any]) -> None:
    """Merge ``changes`` into the row's fields, locked: no concurrent write is lost."""
    with transaction.atomic():
        row = tasks.objects.select_for_update().only("kwargs").get(pk=pk)
        kwargs = dict(row.kwargs)
        kwargs["fields"] = {**kwargs.get("fields", {}), **changes}
        tasks.objects.filter(pk=pk).update(kwargs=kwargs)


class BehaviourContext:
    """What a behaviour sees of its task (``conformance.contract.TaskContext``)."""

    __slots__ = ("_context", "_fields")

    def __init__(self, context: TaskContext, fields: dict[str, Any]) -> None:
        self._context = context
        self._fields = fields

    @property
    def task_id(self) -> str:
        return str(self._context.task_result.id)

    @property
    def fields(self) -> Mapping[str, Any]:
        return self._fields

    async def send_event(self, type: str, data: Mapping[str, Any] | None = None) -> None:
        await send_event(self._context, type, data)

    async def read_fields(self) -> Mapping[str, Any]:
        rows = tasks.objects.filter(pk=int(self.task_id)).values_list("kwargs", flat=True)
        kwargs = await db.run(rows.aget)
        self._fields = dict(kwargs.get("fields", {}))
        return self._fields

    async def write_fields(self, **changes: Any) -> None:
        from asgiref.sync import sync_to_async

        merge = sync_to_async(merge_fields, thread_sensitive=True)
        await db.run(lambda: merge(int(self.task_id), changes))
        self._fields = {**self._fields, **changes}
