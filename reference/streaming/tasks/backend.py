"""``StreamingBackend``: Django's Tasks framework on the streaming coordinator.

``enqueue`` writes a :class:`~streaming.tasks.models.tasks` row, READY; a
running streaming server starts it (``pickup.py``), and from then on it is
a task like any model task: its events stream at ``/stream/tasks/<id>``, it
can be cancelled, it is leased and recovered. ``get_result`` reads the row,
so it answers in any process that shares the database.
"""

from __future__ import annotations

from typing import Any

from django.db.models import Q

from .. import db
from .compat import BaseTaskBackend, InvalidTask, Task, TaskResult, TaskResultDoesNotExist
from .models import as_json, tasks


class StreamingBackend(BaseTaskBackend):
    """Runs ``@task`` functions on the streaming coordinator; results in the database.

    ``OPTIONS``: none yet. ``QUEUES`` (Django's): the queues it accepts and
    its servers run; every one by default (``["default"]`` as Django has it).
    """

    supports_defer = True
    supports_async_task = True
    supports_get_result = True
    supports_priority = True

    def validate_task(self, task: Task[Any, Any]) -> None:
        super().validate_task(task)
        if "<locals>" in task.func.__qualname__ or task.func.__qualname__ != task.func.__name__:
            # Caught by Django too for functions in a function; a method's
            # path cannot be imported back either.
            raise InvalidTask("Task function must be defined at a module level.")

    def _row(self, task: Task[Any, Any], args: Any, kwargs: Any) -> tasks:
        self.validate_task(task)
        return tasks(
            task_path=task.module_path,
            args=as_json(list(args), f"The arguments of {task.module_path}"),
            kwargs=as_json(dict(kwargs), f"The keyword arguments of {task.module_path}"),
            priority=task.priority,
            queue_name=task.queue_name,
            backend=self.alias,
            run_after=task.run_after,
        )

    def enqueue(self, task: Task[Any, Any], args: Any, kwargs: Any) -> TaskResult[Any]:
        row = self._row(task, args, kwargs)
        row.save()
        return row.as_result(task)

    async def aenqueue(self, task: Task[Any, Any], args: Any, kwargs: Any) -> TaskResult[Any]:
        row = self._row(task, args, kwargs)
        await db.run(row.asave)
        return row.as_result(task)

    def get_result(self, result_id: str) -> TaskResult[Any]:
        row = tasks.objects.filter(_result_id(result_id)).first()
        if row is None:
            raise TaskResultDoesNotExist(result_id)
        return row.as_result()

    async def aget_result(self, result_id: str) -> TaskResult[Any]:
        row = await db.run(lambda: tasks.objects.filter(_result_id(result_id)).afirst())
        if row is None:
            raise TaskResultDoesNotExist(result_id)
        return row.as_result()


def _result_id(result_id: object) -> Q:
    """The row of ``result_id``: a decimal id, or (matching none) anything else."""
    text = str(result_id)
    if not (text.isascii() and text.isdigit()) or len(text) > 18:
        return Q(pk__in=[])
    return Q(pk=int(text))
