"""``reference-tasks``: the reference graded through ``django.tasks`` (``streaming.tasks``).

The same implementation as ``reference`` (its coordinator, server, settings,
database), but every task a case makes is a ``@task`` call: a behaviour runs
as ``streaming.tasks.conformance.run_behaviour``, enqueued with
``StreamingBackend.aenqueue``, its events sent with ``streaming.tasks.send_event``,
its fields kept in the row's ``kwargs``. A case creates a task and starts it
later, so the call is enqueued deferred (``run_after`` a year ahead: no
server's pickup takes it) and the case's start is the coordinator's, as for
any kind; the pickup itself is tested by ``reference/tests/test_tasks_backend.py``.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from conformance.contract import (
    Behaviour,
    Runtime,
    TaskRef,
    TaskState,
    TaskStatus,
    UnknownTask,
    behaviour_path,
)

from .adapter import ReferenceImplementation, ReferenceRuntime

#: Far enough ahead that no server starts a case's task before the case does.
HELD = timedelta(days=365)


class TasksImplementation(ReferenceImplementation):
    """The reference, its tasks ``@task`` functions run by ``streaming.tasks.StreamingBackend``."""

    name = "reference-tasks"

    async def start(self) -> Runtime:
        runtime = await super().start()
        assert isinstance(runtime, ReferenceRuntime)
        return TasksRuntime(runtime.coordinator)

    def bench_variants(self, runtime: Runtime) -> Mapping[str, Runtime]:
        """For ``python -m conformance bench``: model tasks on the same server, beside @tasks."""
        assert isinstance(runtime, TasksRuntime)
        return {"model tasks (BehaviourTask)": ReferenceRuntime(runtime.coordinator)}


class TasksRuntime(ReferenceRuntime):
    async def create_task(
        self,
        kind: Behaviour | str,
        fields: Mapping[str, Any] | None = None,
        *,
        timeout: float | None = None,
        max_attempts: int | None = None,
    ) -> TaskRef:
        if not callable(kind):
            return await super().create_task(
                kind, fields, timeout=timeout, max_attempts=max_attempts
            )
        from . import db
        from .tasks.conformance import run_behaviour
        from .tasks.models import tasks

        held = run_behaviour.using(run_after=datetime.now(UTC) + HELD)
        result = await held.aenqueue(behaviour=behaviour_path(kind), fields=dict(fields or {}))
        if timeout is not None or max_attempts is not None:
            # Django's Task has no timeout or attempts of its own: the row's columns.
            limits = {"timeout_seconds": timeout, "max_attempts": max_attempts}
            rows = tasks.objects.filter(pk=int(result.id))
            await db.run(lambda: rows.aupdate(**limits))
        return TaskRef("tasks", result.id)

    async def get_state(self, ref: TaskRef) -> TaskState:
        if ref.model != "tasks":
            return await super().get_state(ref)
        from . import db
        from .tasks.models import tasks

        row = await db.run(lambda: tasks.objects.filter(pk=_pk(ref)).afirst())
        if row is None:
            raise UnknownTask(f"{ref} does not exist.")
        return TaskState(
            status=TaskStatus(row.status),
            created_at=_iso(row.created_at),
            started_at=_iso(row.started_at),
            completed_at=_iso(row.completed_at),
            error=row.error,
            fields=dict(row.kwargs.get("fields", {})),
            attempt=row.attempt,
        )

    async def write_fields(self, ref: TaskRef, **fields: Any) -> None:
        if ref.model != "tasks":
            return await super().write_fields(ref, **fields)
        from asgiref.sync import sync_to_async

        from . import db
        from .tasks.conformance import merge_fields
        from .tasks.models import tasks

        merge = sync_to_async(merge_fields, thread_sensitive=True)
        try:
            await db.run(lambda: merge(_pk(ref), fields))
        except tasks.DoesNotExist:
            raise UnknownTask(f"{ref} does not exist.") from None
        return None


def _pk(ref: TaskRef) -> int:
    try:
        return int(ref.id)
    except ValueError:
        raise UnknownTask(f"{ref}: task ids are integers.") from None


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None
