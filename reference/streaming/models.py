"""Task models: the abstract :class:`StreamTask` and the kinds built on it.

A task kind is a concrete subclass with an ``async def process()`` that sends
events with :meth:`StreamTask.send_event`. While it runs, its events leave
through the :class:`EventSink` its runner gave it (:meth:`StreamTask.bind`);
the model knows nothing else of who runs it.

The coordinator owns the columns that describe a run (status, timestamps,
error, attempt, final event, lease) and writes them only through
:meth:`StreamTask.atransition`, one guarded UPDATE. A save of a stored row
never writes them (see :meth:`StreamTask.save`), so a task saving its fields,
or a stale copy saved from a shell, cannot undo a cancellation made meanwhile.
"""

from __future__ import annotations

import asyncio
import pkgutil
from collections.abc import Mapping
from typing import Any, ClassVar, Protocol

from asgiref.sync import sync_to_async
from django.db import models, transaction
from django.db.models import F, Q

from . import db
from .states import SOURCES, InvalidTransition, TaskStatus, check_transition

#: Columns only the coordinator writes.
RUN_COLUMNS = frozenset(
    {
        "status",
        "started_at",
        "completed_at",
        "error",
        "attempt",
        "final_event",
        "owner",
        "lease_expires_at",
        "event_id_ceiling",
        "cancel_requested",
    }
)


class EventSink(Protocol):
    """Where a running task's events go: its run, which numbers and publishes them."""

    async def send(self, type: str, data: Mapping[str, Any]) -> None: ...


class StreamTask(models.Model):
    """A long async task whose progress is streamed to every watching client."""

    status = models.CharField(
        max_length=16, choices=TaskStatus.choices, default=TaskStatus.READY, db_index=True
    )
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    completed_at = models.DateTimeField(null=True, blank=True)
    error = models.TextField(blank=True, default="")
    #: Bumped by every start: the fencing token of the current run. A write
    #: that names an older attempt is refused, so a run that lost its task
    #: (another worker took over) cannot record an outcome.
    attempt = models.PositiveIntegerField(default=0)
    #: The run's terminal event (JSON text, see ``Event.to_json``), for clients
    #: that arrive after it ended. Text, not JSON: PostgreSQL's jsonb refuses
    #: the NUL character that an event may carry.
    final_event = models.TextField(null=True, blank=True)
    #: Per-task timeout in seconds; overrides the kind's ``default_timeout``.
    timeout_seconds = models.FloatField(null=True, blank=True)
    #: Runs the coordinator may start on its own (see ``Config.max_attempts``);
    #: overrides the kind's ``default_max_attempts``.
    max_attempts = models.PositiveIntegerField(null=True, blank=True)
    #: The coordinator running it (host, pid, a random part), while RUNNING.
    owner = models.CharField(max_length=200, blank=True, default="")
    #: A cancel asked for by another worker: the reason, until the owner acts
    #: on it (or a keeper that finds the run lost records it CANCELLED).
    cancel_requested = models.TextField(null=True, blank=True)
    #: The owner renews this while the run lives; a live coordinator that finds
    #: it past records the run INTERRUPTED. Database time, not a host's clock.
    lease_expires_at = models.DateTimeField(null=True, blank=True, db_index=True)
    #: No event of this task has an id above this. A run reserves ids in blocks
    #: by raising it, so a run that dies with its process cannot have sent an id
    #: the next run would use again; a run that ends lowers it to its last id.
    event_id_ceiling = models.BigIntegerField(default=0)

    #: Per-kind timeout in seconds; None falls back to settings.STREAMING["TASK_TIMEOUT"].
    default_timeout: ClassVar[float | None] = None
    #: Per-kind run limit; None falls back to settings.STREAMING["MAX_ATTEMPTS"].
    default_max_attempts: ClassVar[int | None] = None

    #: Where send_event() sends, while the task runs (see bind()).
    _sink: EventSink | None = None

    class Meta:
        abstract = True

    def __str__(self) -> str:
        return f"{type(self).__name__} {self.pk}"

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.pk} {self.status}>"

    async def process(self) -> Mapping[str, Any] | None:
        """The task's work. Its return value is merged into the ``complete`` event."""
        raise NotImplementedError(f"{type(self).__name__} must define async def process().")

    async def send_event(self, type: str, data: Mapping[str, Any] | None = None) -> None:
        """Send an event to every client watching this task."""
        if self._sink is None:
            raise RuntimeError(
                f"Cannot send {type!r} from {self}: it is not running under a coordinator; "
                "start it with coordinator.start_task()."
            )
        await self._sink.send(type, data or {})

    def bind(self, sink: EventSink | None) -> None:
        """Send this instance's events to ``sink`` from now on; None: it runs no more."""
        self._sink = sink

    def save(self, *args: Any, **kwargs: Any) -> None:
        """Save; a stored row's run columns are left as they are (see the module docstring).

        Creating a row writes every column. Naming ``update_fields`` writes
        those named, run columns included, for the rare caller that means it.
        """
        if kwargs.get("update_fields") is None and not self._state.adding and self.pk:
            kwargs["update_fields"] = [
                f.name
                for f in self._meta.concrete_fields
                if not f.primary_key and f.name not in RUN_COLUMNS
            ]
        super().save(*args, **kwargs)

    @classmethod
    async def atransition(
        cls,
        pk: Any,
        target: TaskStatus,
        *,
        fence: int | None = None,
        sources: frozenset[TaskStatus] | None = None,
        where: Q | None = None,
        **changes: Any,
    ) -> bool:
        """Move task ``pk`` to ``target`` if the state model allows it from its current status.

        One UPDATE whose WHERE clause names the allowed source statuses (and,
        given ``fence``, the attempt number of the run that writes): it returns
        False, changing nothing, when the task is elsewhere, so concurrent
        callers in any number of processes agree on a single winner.
        ``sources`` narrows the statuses the caller moves from (a start moves
        only READY tasks, a retry only finished ones); ``where`` adds a
        condition of its own (a lease that has expired).
        """
        if sources is None:
            sources = SOURCES.get(target, frozenset())
        if not sources:
            raise InvalidTransition(f"Nothing moves a task to {target}.")
        for source in sources:
            check_transition(source, target)  # a caller's mistake, raised before any write
        rows = cls._default_manager.filter(pk=pk, status__in=sources)
        if fence is not None:
            rows = rows.filter(attempt=fence)
        if where is not None:
            rows = rows.filter(where)
        if "error" in changes:
            changes["error"] = storable(changes["error"])
        return await rows.aupdate(status=target, **changes) == 1

    def effective_timeout(self, default: float | None) -> float | None:
        if self.timeout_seconds is not None:
            return self.timeout_seconds
        if self.default_timeout is not None:
            return self.default_timeout
        return default

    @classmethod
    def attempts_left(cls, default: int) -> Q:
        """Rows that may be run again on their own: fewer runs than their limit."""
        kind_default = cls.default_max_attempts if cls.default_max_attempts is not None else default
        return Q(max_attempts__isnull=False, attempt__lt=F("max_attempts")) | Q(
            max_attempts__isnull=True, attempt__lt=kind_default
        )


def storable(text: str) -> str:
    """``text`` as every database stores it: PostgreSQL's text refuses NUL."""
    return text.replace("\x00", "\ufffd")


class StreamEvent(models.Model):
    """One event of one task, kept for clients that resume after a restart.

    Written in batches by ``streaming.eventlog``; the last ``history_size``
    events of each task are kept. ``data`` is the event's data as JSON text
    (the same text its SSE frame carries), so nothing is encoded twice.
    """

    model = models.CharField(max_length=100)
    task_id = models.BigIntegerField()
    event_id = models.BigIntegerField()
    type = models.TextField()
    data = models.TextField()
    timestamp = models.CharField(max_length=40)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["model", "task_id", "event_id"], name="streaming_event_per_task"
            )
        ]

    def __str__(self) -> str:
        return f"{self.model} {self.task_id} #{self.event_id} {self.type}"


class ExampleTask(StreamTask):
    """Start, three progress steps, complete: the testing guide's first task."""

    message = models.CharField(max_length=500, default="Task created via management command")
    #: Seconds between steps.
    step_delay = models.FloatField(default=2.0)

    TOTAL_STEPS: ClassVar[int] = 3

    async def process(self) -> Mapping[str, Any]:
        total = self.TOTAL_STEPS
        await self.send_event("start", {"message": self.message, "total_steps": total})
        for step in range(1, total + 1):
            await asyncio.sleep(self.step_delay)
            await self.send_event(
                "progress",
                {
                    "step": step,
                    "total_steps": total,
                    "message": f"Step {step} of {total}",
                    "data": f"Processing step {step}...",
                },
            )
        return {"total_steps": total}


class ContinueTask(StreamTask):
    """Waits, polling the database, until ``continue_field`` becomes true."""

    message = models.CharField(max_length=500, default="Waiting for signal...")
    continue_field = models.BooleanField(default=False)
    #: Seconds between database polls.
    poll_interval = models.FloatField(default=0.5)

    async def process(self) -> None:
        await self.send_event("started", {"message": self.message, "continue": self.continue_field})
        while not self.continue_field:
            await asyncio.sleep(self.poll_interval)
            await self.arefresh_from_db(fields=["continue_field"])
        await self.send_event("final", {"message": "Continue signal received", "continue": True})


class HttpxFetchTask(StreamTask):
    """Fetches ``url`` with httpx, streaming progress as the body arrives.

    Cancelling it (or its timeout) cancels the request in flight: leaving the
    ``async with`` blocks closes the connection, and the coordinator tells the
    clients, which the seed's version of this task never did.
    """

    url = models.URLField(max_length=2000)
    #: Seconds to wait for the connection and for each read.
    request_timeout = models.FloatField(default=30.0)

    async def process(self) -> Mapping[str, Any]:
        import httpx

        await self.send_event("fetching", {"url": self.url})
        received = 0
        async with httpx.AsyncClient(timeout=self.request_timeout) as client:
            async with client.stream("GET", self.url) as response:
                await self.send_event("response", {"status": response.status_code})
                async for chunk in response.aiter_bytes():
                    received += len(chunk)
                    await self.send_event("progress", {"bytes": received})
        return {"status": response.status_code, "bytes": received}


class BehaviourTask(StreamTask):
    """The kind the conformance suite drives: runs a behaviour named by import path.

    ``behaviour`` is ``module:function`` (see ``conformance.contract``); the
    function gets a :class:`BehaviourContext`. ``fields`` is the task's data,
    changed from outside only by :meth:`merge_fields`.
    """

    behaviour = models.CharField(max_length=255)
    fields = models.JSONField(default=dict, blank=True)

    async def process(self) -> Mapping[str, Any] | None:
        run = pkgutil.resolve_name(self.behaviour)
        return await run(BehaviourContext(self))  # type: ignore[no-any-return]

    @classmethod
    def merge_fields(cls, pk: Any, changes: Mapping[str, Any]) -> None:
        """Merge ``changes`` into the stored fields atomically (no lost update).

        The row is locked for the read-modify-write: SELECT ... FOR UPDATE on
        PostgreSQL, and on SQLite the IMMEDIATE transaction the settings ask for.
        """
        with transaction.atomic():
            row = cls._default_manager.select_for_update().only("fields").get(pk=pk)
            cls._default_manager.filter(pk=pk).update(fields={**row.fields, **changes})


class BehaviourContext:
    """What a behaviour sees of its task (``conformance.contract.TaskContext``)."""

    __slots__ = ("_task",)

    def __init__(self, task: BehaviourTask) -> None:
        self._task = task

    @property
    def task_id(self) -> str:
        return str(self._task.pk)

    @property
    def fields(self) -> Mapping[str, Any]:
        fields: Mapping[str, Any] = self._task.fields  # a JSONField: Any to a type checker
        return fields

    async def send_event(self, type: str, data: Mapping[str, Any] | None = None) -> None:
        await self._task.send_event(type, data)

    async def read_fields(self) -> Mapping[str, Any]:
        """Re-read the fields; raises ``db.DatabaseUnavailable`` while the database is away."""
        await db.run(lambda: self._task.arefresh_from_db(fields=["fields"]))
        return self.fields

    async def write_fields(self, **changes: Any) -> None:
        """Merge ``changes``; raises ``db.DatabaseUnavailable`` while the database is away."""
        merge = sync_to_async(BehaviourTask.merge_fields, thread_sensitive=True)
        await db.run(lambda: merge(self._task.pk, changes))
        self._task.fields = {**self._task.fields, **changes}
