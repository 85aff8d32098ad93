"""Task models: the abstract :class:`StreamTask` and the kinds built on it.

A task kind is a concrete subclass with an ``async def process()`` that sends
events with :meth:`StreamTask.send_event`. The coordinator owns the columns
that describe a run (status, timestamps, error, attempt, final event) and
writes them only through :meth:`StreamTask.atransition`, one guarded UPDATE.
A task's own saves never write those columns (see :meth:`StreamTask.save`),
so a task saving its fields cannot overwrite a cancellation made meanwhile.
"""

from __future__ import annotations

import asyncio
import pkgutil
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from asgiref.sync import sync_to_async
from django.db import models, transaction

from .states import SOURCES, TaskStatus

if TYPE_CHECKING:
    from .coordinator import Run

#: Columns only the coordinator writes.
RUN_COLUMNS = frozenset({"status", "started_at", "completed_at", "error", "attempt", "final_event"})


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
    #: The run's terminal event, for clients that arrive after it ended.
    final_event = models.JSONField(null=True, blank=True)
    #: Per-task timeout in seconds; overrides the kind's ``default_timeout``.
    timeout_seconds = models.FloatField(null=True, blank=True)

    #: Per-kind timeout in seconds; None falls back to settings.STREAMING["TASK_TIMEOUT"].
    default_timeout: ClassVar[float | None] = None

    _run: Run | None = None

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
        if self._run is None:
            raise RuntimeError(
                f"Cannot send {type!r} from {self}: it is not running under a coordinator; "
                "start it with coordinator.start_task()."
            )
        await self._run.send(type, data or {})

    def save(self, *args: Any, **kwargs: Any) -> None:
        # A running task's own saves leave the coordinator's columns alone; see
        # the module docstring. Outside a run (creation, admin) save as usual.
        if self._run is not None and kwargs.get("update_fields") is None and self.pk:
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
        **changes: Any,
    ) -> bool:
        """Move task ``pk`` to ``target`` if the state model allows it from its current status.

        One UPDATE whose WHERE clause names the allowed source statuses (and,
        given ``fence``, the attempt number of the run that writes): it returns False, changing
        nothing, when the task is elsewhere, so concurrent callers in any
        number of processes agree on a single winner.
        """
        rows = cls._default_manager.filter(pk=pk, status__in=SOURCES[target])
        if fence is not None:
            rows = rows.filter(attempt=fence)
        return await rows.aupdate(status=target, **changes) == 1

    def effective_timeout(self, default: float | None) -> float | None:
        if self.timeout_seconds is not None:
            return self.timeout_seconds
        if self.default_timeout is not None:
            return self.default_timeout
        return default


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
        return self._task.fields

    async def send_event(self, type: str, data: Mapping[str, Any] | None = None) -> None:
        await self._task.send_event(type, data)

    async def refresh(self) -> Mapping[str, Any]:
        await self._task.arefresh_from_db(fields=["fields"])
        return self._task.fields

    async def update_fields(self, **changes: Any) -> None:
        await sync_to_async(BehaviourTask.merge_fields)(self._task.pk, changes)
        self._task.fields = {**self._task.fields, **changes}
