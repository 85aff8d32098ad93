"""The row a ``@task`` call becomes, and how it runs on the coordinator.

One :class:`tasks` row per enqueued call. It is a :class:`StreamTask`, so the
coordinator starts, streams, cancels, times out, leases and recovers it as it
does any model task; the class is named ``tasks`` because a kind's class name
is its URL's ``<Model>``: ``/stream/tasks/<result id>``, ``/tasks/tasks/<result id>``.
Its ``process()`` imports the ``@task`` function by its path and calls it:
an async one on the loop, a sync one in a thread of its own.

Django's ``TaskResult`` is read from the row (:meth:`tasks.as_result`): the
coordinator's columns say the status and times; ``errors``, ``return_value``
and ``worker_ids`` are written by the run itself, fenced by its attempt.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import threading
import traceback
from collections.abc import Mapping
from typing import Any, ClassVar

from asgiref.sync import sync_to_async
from django.db import models
from django.utils.module_loading import import_string

from .. import db
from ..models import StreamTask, storable
from ..states import TaskStatus
from .compat import Task, TaskContext, TaskError, TaskResult, TaskResultStatus

logger = logging.getLogger(__name__)

#: How each of the coordinator's statuses reads as Django's (which has four).
DJANGO_STATUS: Mapping[str, TaskResultStatus] = {
    TaskStatus.READY: TaskResultStatus.READY,
    TaskStatus.RUNNING: TaskResultStatus.RUNNING,
    TaskStatus.SUCCESSFUL: TaskResultStatus.SUCCESSFUL,
    TaskStatus.FAILED: TaskResultStatus.FAILED,
    TaskStatus.CANCELLED: TaskResultStatus.FAILED,
    TaskStatus.TIMED_OUT: TaskResultStatus.FAILED,
    TaskStatus.INTERRUPTED: TaskResultStatus.FAILED,
}


class TaskInterrupted(Exception):
    """A run stopped by a server's shutdown or lost with its worker (status INTERRUPTED)."""


#: The exception each ending without one of its own is reported as, in ``errors``.
ENDING_EXCEPTION: Mapping[str, str] = {
    TaskStatus.CANCELLED: "asyncio.exceptions.CancelledError",
    TaskStatus.TIMED_OUT: "builtins.TimeoutError",
    TaskStatus.INTERRUPTED: f"{__name__}.TaskInterrupted",
}


def as_json(value: Any, what: str) -> Any:
    """``value`` as JSON gives it back (tuples become lists); TypeError naming ``what``."""
    try:
        return json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{what} must be JSON: {exc}") from None


class tasks(StreamTask):
    """One call of a ``@task`` function, run by the coordinator."""

    #: The ``@task`` object's import path (``Task.module_path``).
    task_path = models.CharField(max_length=255)
    args = models.JSONField(default=list, blank=True)
    kwargs = models.JSONField(default=dict, blank=True)
    priority = models.IntegerField(default=0)
    queue_name = models.CharField(max_length=100, default="default")
    backend = models.CharField(max_length=100, default="default")
    #: Not started before this (``supports_defer``); None: as soon as a server can.
    run_after = models.DateTimeField(null=True, blank=True)
    return_value = models.JSONField(null=True, blank=True)
    #: ``[{"exception_class_path": ..., "traceback": ...}]``, one per failed run.
    errors = models.JSONField(default=list, blank=True)
    #: The coordinators (``owner``) that started a run of it, oldest first.
    worker_ids = models.JSONField(default=list, blank=True)

    #: Runs of this process, by result id: where send_event(context) finds its run.
    running: ClassVar[dict[str, tuple[tasks, asyncio.AbstractEventLoop]]] = {}

    class Meta:
        verbose_name = "task"
        indexes = [
            models.Index(fields=["status", "queue_name", "-priority"], name="streaming_tasks_due")
        ]

    def resolve(self) -> Task[Any, Any]:
        """The ``@task`` this row calls, with the options it was enqueued with."""
        found = import_string(self.task_path)
        if not isinstance(found, Task):
            raise TypeError(f"{self.task_path} is not a @task (it is {type(found).__name__}).")
        return dataclasses.replace(
            found,
            priority=self.priority,
            queue_name=self.queue_name,
            backend=self.backend,
            run_after=self.run_after,
        )

    def as_result(self, task: Task[Any, Any] | None = None) -> TaskResult[Any]:
        """The row as Django's ``TaskResult`` (the status mapped by :data:`DJANGO_STATUS`)."""
        status = TaskStatus(self.status)
        errors = [TaskError(**error) for error in self.errors]
        if status in ENDING_EXCEPTION:
            path = ENDING_EXCEPTION[status]
            errors.append(TaskError(exception_class_path=path, traceback=f"{path}: {self.error}\n"))
        result: TaskResult[Any] = TaskResult(
            task=task if task is not None else self.resolve(),
            id=str(self.pk),
            status=DJANGO_STATUS[status],
            enqueued_at=self.created_at,
            started_at=self.started_at,
            finished_at=self.completed_at,
            last_attempted_at=self.started_at,
            args=list(self.args),
            kwargs=dict(self.kwargs),
            backend=self.backend,
            errors=errors,
            worker_ids=list(self.worker_ids),
        )
        if status is TaskStatus.SUCCESSFUL:
            object.__setattr__(result, "_return_value", self.return_value)
        return result

    async def process(self) -> Mapping[str, Any] | None:
        """Call the ``@task`` function; its return value is stored, a mapping also sent."""
        attempt = await self._begin()
        key = str(self.pk)
        try:
            task = self.resolve()
            args: list[Any] = list(self.args)
            if task.takes_context:
                args.insert(0, TaskContext(task_result=self.as_result(task)))
            tasks.running[key] = (self, asyncio.get_running_loop())
            try:
                if asyncio.iscoroutinefunction(task.func):
                    value = await task.func(*args, **self.kwargs)
                else:
                    # A thread of its own: a sync task never holds the loop,
                    # nor the one thread the ORM's async calls share.
                    value = await sync_to_async(task.func, thread_sensitive=False)(
                        *args, **self.kwargs
                    )
            finally:
                tasks.running.pop(key, None)
            value = as_json(value, f"The return value of {self.task_path}")
        except asyncio.CancelledError:
            raise  # a cancel, a timeout or a shutdown: the coordinator records which
        except BaseException as exc:
            error = {
                "exception_class_path": f"{type(exc).__module__}.{type(exc).__qualname__}",
                # PostgreSQL's jsonb refuses NUL, which a message may carry.
                "traceback": storable("".join(traceback.format_exception(exc))),
            }
            try:
                await self._write(attempt, errors=[*self.errors, error], worker_ids=self.worker_ids)
            except Exception as unwritten:  # never in place of the task's own exception
                logger.error("tasks:%s: its error was not stored (%r)", self.pk, unwritten)
            raise
        await self._write(attempt, return_value=value, worker_ids=self.worker_ids)
        return value if isinstance(value, Mapping) else None

    async def _begin(self) -> int:
        """This run's attempt; the row as its claim left it, for the task's ``TaskContext``.

        The coordinator that runs it joins ``worker_ids`` with the run's last
        write (its return value or its error): one query fewer per run, so a
        run cancelled, timed out or interrupted is not listed there.
        """
        columns = ["status", "attempt", "owner", "started_at", "worker_ids"]
        await db.run(lambda: self.arefresh_from_db(fields=columns))
        self.worker_ids = [*self.worker_ids, self.owner]
        return self.attempt

    async def _write(self, attempt: int, **changes: Any) -> None:
        """Write this run's columns, while the row is still this run's.

        Waits out a database outage, as the coordinator's record of the
        ending does: a task that ended meanwhile keeps its result. A cancel
        or timeout still stops the wait.
        """
        rows = tasks.objects.filter(pk=self.pk, attempt=attempt, status=TaskStatus.RUNNING)
        await db.run_until_available(
            lambda: rows.aupdate(**changes),
            what=f"tasks:{self.pk}: recording {', '.join(changes)}",
        )


def running_task(context: Any) -> tuple[tasks, asyncio.AbstractEventLoop]:
    """The run a ``TaskContext`` belongs to, in this process; RuntimeError if none."""
    result = getattr(context, "task_result", None)
    if result is None:
        raise TypeError(
            f"Cannot send an event with {context!r}: pass the TaskContext a @task with "
            "takes_context=True is given."
        )
    found = tasks.running.get(str(result.id))
    if found is None:
        raise RuntimeError(
            f"Cannot send an event for task result {result.id}: it is not running under "
            f"this process's coordinator (thread {threading.current_thread().name})."
        )
    return found
