"""The glue's storage calls, synchronous, run in one thread (``db``) by the worker and the runtime.

Every write that ends a run, or sends an event, locks the task's row and
writes in one transaction, then notifies ``CHANNEL`` (PostgreSQL's
LISTEN/NOTIFY, which procrastinate itself uses to wake its workers). A
notification carries ``"<task id> <event number> <type>"``; listeners read
the event from its table, since a notification holds at most 8000 bytes.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ParamSpec, TypeVar

from asgiref.sync import sync_to_async
from django.db import connection, transaction

CHANNEL = "procrastinate_impl_events"
#: The notification's type when a worker begins a run (no event: not an event type).
CLAIMED = "+claimed"
TERMINAL = {
    "SUCCESSFUL": "complete",
    "FAILED": "error",
    "CANCELLED": "cancelled",
    "INTERRUPTED": "interrupted",
    "TIMED_OUT": "timeout",
}

P = ParamSpec("P")
R = TypeVar("R")


async def db(function: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
    """Run a storage call in Django's one thread for code outside a request."""
    return await sync_to_async(function, thread_sensitive=True)(*args, **kwargs)


def now() -> str:
    return datetime.now(UTC).isoformat()


class RunOver(RuntimeError):
    """Raised to a run that writes after its end: its writes are not recorded."""


@dataclass(frozen=True)
class Claim:
    """What a job reads of its task as it begins."""

    behaviour: str
    fields: dict[str, Any]
    stop: str
    timeout: float | None
    attempt: int


#: The queue of the session's worker process; a server process's worker has one of its own.
DEFAULT_QUEUE = "default"
#: What retry_task may run again.
RETRYABLE = ("FAILED", "CANCELLED", "TIMED_OUT", "INTERRUPTED")


def create(
    behaviour: str, fields: Mapping[str, Any], timeout: float | None, max_attempts: int | None
) -> int:
    from .models import Task

    return Task.objects.create(
        behaviour=behaviour, fields=dict(fields), timeout=timeout, max_attempts=max_attempts or 1
    ).pk


def start(pk: int, queue: str = DEFAULT_QUEUE, *, again: bool = False) -> bool | None:
    """A new run: the job deferred and the task RUNNING, in one transaction; None for no such task.

    A start runs a READY task; ``again`` (retry_task) a finished one that
    did not succeed. The run's job goes to ``queue``: the worker of the
    process that asked runs it.
    """
    from django.utils import timezone

    from .models import Task
    from .tasks import run_behaviour

    with transaction.atomic():
        task = Task.objects.select_for_update().filter(pk=pk).first()
        if task is None:
            return None
        if task.status not in (RETRYABLE if again else ("READY",)):
            return False
        # procrastinate's Django connector defers on Django's connection, so
        # the job exists exactly when this transaction commits.
        job_id = run_behaviour.configure(queue=queue).defer(task_id=pk)
        Task.objects.filter(pk=pk).update(
            status="RUNNING",
            started_at=timezone.now(),
            completed_at=None,
            error="",
            stop="",
            cancel_reason="",
            attempt=task.attempt + 1,
            job_id=job_id,
            run_from=task.last_event_id,
        )
    return True


def recover(job_id: int, worker_id: int | None, queue: str) -> bool:
    """End or rerun the run of a job procrastinate found stalled (its worker's heartbeats stopped).

    ``worker_id`` is the job's worker as ``get_stalled_jobs`` read it: a job
    taken since by another worker, or already recovered by another process,
    is left alone. The task whose current run it is gets one more run on
    ``queue`` while it has had fewer than ``max_attempts`` (procrastinate's
    ``retry_job``: the same job, ``todo`` again); else it is recorded
    INTERRUPTED and the job ``failed`` (procrastinate's ``finish_job``), in
    one transaction. True if a run was ended or rerun here.
    """
    from procrastinate import sql
    from procrastinate.contrib.django import app

    from .models import Task

    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT worker_id FROM procrastinate_jobs WHERE id = %s AND status = 'doing'"
                " FOR UPDATE",
                [job_id],
            )
            row = cursor.fetchone()
        if row is None or row[0] != worker_id:
            return False
        task = Task.objects.select_for_update().filter(job_id=job_id, status="RUNNING").first()
        if task is not None and not task.stop and task.attempt < task.max_attempts:
            app.job_manager.retry_job_by_id(job_id, retry_at=datetime.now(UTC), queue=queue)
            Task.objects.filter(pk=task.pk).update(
                attempt=task.attempt + 1, started_at=datetime.now(UTC)
            )
            return True
        if task is not None:
            if task.stop:
                status = "CANCELLED" if task.stop == "cancel" else "INTERRUPTED"
                _end(task.pk, status, _stopped_data(task.stop, task.cancel_reason))
            else:
                message = "The run was lost with its process: procrastinate found its worker silent"
                _end(task.pk, "INTERRUPTED", {"reason": "worker lost", "message": message})
        app.connector.execute_query(
            sql.queries["finish_job"], job_id=job_id, status="failed", delete_job=False
        )
    return task is not None


def request_stop(pk: int, stop: str, reason: str) -> bool:
    """Ask a READY or RUNNING task to stop; True when it will end so (the first ask only).

    A READY task, and a RUNNING one whose job procrastinate cancelled before
    a worker took it, end here. A job already taken is aborted by
    procrastinate: its worker cancels it and the job records the outcome.
    """
    from procrastinate.contrib.django import app

    from .models import Task

    status = "CANCELLED" if stop == "cancel" else "INTERRUPTED"
    with transaction.atomic():
        task = Task.objects.select_for_update().filter(pk=pk).first()
        if task is None or task.status not in ("READY", "RUNNING") or task.stop:
            return False
        Task.objects.filter(pk=pk).update(stop=stop, cancel_reason=reason)
        if task.status == "RUNNING" and task.job_id is not None:
            app.job_manager.cancel_job_by_id(task.job_id, abort=True)
            with connection.cursor() as cursor:
                cursor.execute("SELECT status FROM procrastinate_jobs WHERE id = %s", [task.job_id])
                row = cursor.fetchone()
            if row is not None and row[0] != "cancelled":
                return True  # taken by a worker: the job ends the run
        _end(task.pk, status, _stopped_data(stop, reason))
    return True


def claim(pk: int, job_id: int) -> Claim | None:
    """The task a job runs, or None if the job is not its current run any more."""
    from .models import Task

    task = Task.objects.filter(pk=pk, job_id=job_id, status="RUNNING").first()
    if task is None:
        return None
    with connection.cursor() as cursor:  # the job is the worker's: a server's start returns
        cursor.execute("SELECT pg_notify(%s, %s)", [CHANNEL, f"{pk} 0 {CLAIMED}"])
    return Claim(task.behaviour, dict(task.fields), task.stop, task.timeout, task.attempt)


def finish(
    pk: int, job_id: int | None, status: str, data: dict[str, Any], attempt: int | None = None
) -> bool:
    """Record how a run ended and send its terminal event; a stop asked for wins.

    False if the run had already ended (or another run is current: another
    job, or the same job run again after procrastinate found it stalled).
    """
    from .models import Task

    with transaction.atomic():
        task = Task.objects.select_for_update().filter(pk=pk).first()
        if task is None or task.status != "RUNNING" or task.job_id != job_id:
            return False
        if attempt is not None and task.attempt != attempt:
            return False
        if task.stop:  # a cancel (or a runtime's shutdown) asked for wins
            status = "CANCELLED" if task.stop == "cancel" else "INTERRUPTED"
            data = _stopped_data(task.stop, task.cancel_reason)
        elif status == "INTERRUPTED":
            data = _stopped_data("shutdown", "shutdown")
        elif status == "TIMED_OUT":
            limit = task.timeout
            data = {"timeout": limit, "message": f"Task timed out after {limit} s"}
        _end(pk, status, data)
    return True


#: procrastinate's job statuses after which a job runs no more.
_JOB_OVER = ("succeeded", "failed", "cancelled", "aborted")


def settle(pk: int) -> bool:
    """Record a run whose job procrastinate ended without the glue's function recording it.

    True if the run is over (now or before); False while its job may still run.
    """
    from .models import Task

    with transaction.atomic():
        task = Task.objects.select_for_update().filter(pk=pk).first()
        if task is None or task.status != "RUNNING":
            return True
        with connection.cursor() as cursor:
            cursor.execute("SELECT status FROM procrastinate_jobs WHERE id = %s", [task.job_id])
            row = cursor.fetchone()
        if row is None or row[0] not in _JOB_OVER:
            return False
        if task.stop:
            status = "CANCELLED" if task.stop == "cancel" else "INTERRUPTED"
            _end(pk, status, _stopped_data(task.stop, task.cancel_reason))
        else:
            message = f"procrastinate ended job {task.job_id} ({row[0]}) before it ran the task"
            _end(pk, "INTERRUPTED", {"reason": row[0], "message": message})
    return True


def _stopped_data(stop: str, reason: str) -> dict[str, Any]:
    if stop == "cancel":
        return {"reason": reason, "message": f"Task was cancelled: {reason}"}
    return {"reason": reason or "shutdown", "message": "Task was interrupted by a shutdown"}


def _end(pk: int, status: str, data: dict[str, Any]) -> None:
    """Inside the caller's transaction, holding the row: the final status, then its event."""
    from django.utils import timezone

    from .models import Task

    data.setdefault("message", f"Task ended {status}")
    kind = data.get("error_type", TERMINAL[status])
    error = "" if status == "SUCCESSFUL" else f"{kind}: {data['message']}"
    # PostgreSQL's text cannot hold U+0000: the recorded error names it instead.
    error = error.replace("\x00", "\\x00")
    Task.objects.filter(pk=pk).update(status=status, completed_at=timezone.now(), error=error)
    _publish(pk, TERMINAL[status], json.dumps(data, default=str))


def publish(pk: int, job_id: int, attempt: int, type: str, text: str) -> int:
    """Send one event of a run, in one statement; RunOver once the run has ended.

    The UPDATE of the task's row takes its lock and fences the run (its job,
    its attempt, still RUNNING), as ``_publish`` does inside a transaction.
    """
    with connection.cursor() as cursor:
        cursor.execute(
            "WITH task AS (UPDATE procrastinate_impl_task SET last_event_id = last_event_id + 1"
            "   WHERE id = %s AND job_id = %s AND attempt = %s AND status = 'RUNNING'"
            "   RETURNING id, last_event_id),"
            " event AS (INSERT INTO procrastinate_impl_event"
            "   (task_id, number, type, data, timestamp)"
            "   SELECT id, last_event_id, %s, %s, %s FROM task RETURNING task_id, number)"
            " SELECT number, pg_notify(%s, task_id || ' ' || number || ' ' || %s) FROM event",
            [pk, job_id, attempt, type, text, now(), CHANNEL, type],
        )
        row = cursor.fetchone()
    if row is None:
        raise RunOver(f"Cannot send {type!r}: task {pk}'s run has ended.")
    return int(row[0])


def _publish(pk: int, type: str, text: str) -> int:
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE procrastinate_impl_task SET last_event_id = last_event_id + 1"
            " WHERE id = %s RETURNING last_event_id",
            [pk],
        )
        (number,) = cursor.fetchone()
        cursor.execute(
            "INSERT INTO procrastinate_impl_event (task_id, number, type, data, timestamp)"
            " VALUES (%s, %s, %s, %s, %s)",
            [pk, number, type, text, now()],
        )
        cursor.execute("SELECT pg_notify(%s, %s)", [CHANNEL, f"{pk} {number} {type}"])
    return int(number)


def merge_fields(pk: int, changes: Mapping[str, Any]) -> bool:
    """Merge per field (jsonb ``||``): concurrent writers of other fields keep theirs."""
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE procrastinate_impl_task SET fields = fields || %s::jsonb WHERE id = %s",
            [json.dumps(dict(changes), allow_nan=False), pk],
        )
        return cursor.rowcount == 1


def read_fields(pk: int) -> dict[str, Any]:
    from .models import Task

    return dict(Task.objects.values_list("fields", flat=True).get(pk=pk))
