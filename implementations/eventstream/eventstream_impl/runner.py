"""The glue's task runner: behaviours as asyncio tasks in the ASGI process.

django-eventstream has no tasks: it fans out what ``send_event`` is given.
This module is what a Django project using it would write for long async
work: a row per task (``models.Task``), an asyncio task per run, and every
event, the terminal ones included, sent with the library's ``send_event``
on the task's channel. It decides a run's outcome (complete, error,
cancelled, timeout, interrupted) and records it before the terminal event
is sent; the library delivers and stores the events.

``send_event`` and the ORM are synchronous. Every call of the glue's goes
through one worker thread (:func:`db`), as ``sync_to_async`` would outside
a request: one SQLite connection, and events sent in the order they were
given.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

from conformance.contract import (
    FAREWELL_EVENT,
    TERMINAL_EVENTS,
    Behaviour,
    RuntimeClosed,
    TaskStatus,
    resolve_behaviour,
)

logger = logging.getLogger("eventstream_impl")

#: How the glue names the one task kind in URLs (``/stream/task/<id>``).
MODEL = "task"

T = TypeVar("T")

#: The one thread the glue's ORM and ``send_event`` calls run in.
_DB = ThreadPoolExecutor(max_workers=1, thread_name_prefix="eventstream-glue-db")


async def db(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run a synchronous ORM or django-eventstream call off the event loop."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(_DB, functools.partial(fn, *args, **kwargs))


def now() -> datetime:
    return datetime.now(UTC)


# -- synchronous storage calls (run by db()) ---------------------------------------


def _send(pk: int, type: str, data: Mapping[str, Any]) -> None:
    """The library's send_event, with the contract's metadata in the data (SPEC's frame)."""
    from django_eventstream import send_event

    from .models import channel_for

    meta = {"_task_id": str(pk), "_model": MODEL, "_timestamp": now().isoformat()}
    send_event(channel_for(pk), type, {**data, **meta})


def _claim_start(pk: int) -> Any:
    """READY -> RUNNING, once: the task, or None if it was not READY."""
    from django.db.models import F

    from .models import Task

    task = Task.objects.get(pk=pk)  # Task.DoesNotExist for an unknown task
    started = Task.objects.filter(pk=pk, status=TaskStatus.READY).update(
        status=TaskStatus.RUNNING, started_at=now(), attempt=F("attempt") + 1
    )
    if not started:
        return None
    task.refresh_from_db()
    return task


def _record(pk: int, status: TaskStatus, error: str) -> bool:
    """RUNNING -> a final status, once."""
    from .models import Task

    return bool(
        Task.objects.filter(pk=pk, status=TaskStatus.RUNNING).update(
            status=status, error=error, completed_at=now()
        )
    )


def _cancel_ready(pk: int, error: str) -> bool:
    """READY -> CANCELLED, once."""
    from .models import Task

    return bool(
        Task.objects.filter(pk=pk, status=TaskStatus.READY).update(
            status=TaskStatus.CANCELLED, error=error, completed_at=now()
        )
    )


def read_fields(pk: int) -> dict[str, Any]:
    from .models import Task

    return dict(Task.objects.values_list("fields", flat=True).get(pk=pk))


def merge_fields(pk: int, changes: Mapping[str, Any]) -> None:
    """Merge ``changes`` into the stored fields under the write lock (BEGIN IMMEDIATE)."""
    from django.db import transaction

    from .models import Task

    with transaction.atomic():
        fields = dict(Task.objects.values_list("fields", flat=True).get(pk=pk))
        fields.update(changes)
        Task.objects.filter(pk=pk).update(fields=fields)


# -- runs --------------------------------------------------------------------------


@dataclass(eq=False)
class Run:
    """One run in this process: its asyncio task and the outcome claimed for it."""

    pk: int
    task: asyncio.Task[None] | None = None
    #: (status, event type, data): set once, by whoever decides first.
    outcome: tuple[TaskStatus, str, dict[str, Any]] | None = None
    #: The behaviour has returned or raised: nothing is left to cancel.
    settled: bool = False
    #: The outcome is stored and its terminal event sent.
    recorded: bool = False
    done: asyncio.Event = field(default_factory=asyncio.Event)
    #: Cancels again, every grace period, a task that swallowed its cancellation.
    reaper: asyncio.Task[None] | None = None

    def claim(self, status: TaskStatus, type: str, data: dict[str, Any]) -> bool:
        if self.outcome is not None:
            return False
        self.outcome = (status, type, data)
        return True


class Context:
    """What a behaviour is given (contract.TaskContext)."""

    def __init__(self, runner: Runner, run: Run, fields: Mapping[str, Any]) -> None:
        self._runner, self._run = runner, run
        self._fields = dict(fields)
        self.task_id = str(run.pk)

    @property
    def fields(self) -> Mapping[str, Any]:
        return dict(self._fields)

    async def send_event(self, type: str, data: Mapping[str, Any] | None = None) -> None:
        # The glue's own event types are the glue's to send. Anything else goes
        # to the library as it is: framing and encoding are the library's.
        if type in TERMINAL_EVENTS or type == FAREWELL_EVENT:
            raise ValueError(f"Cannot send {type!r}: the runner sends it itself.")
        if self._run.recorded:
            raise RuntimeError(f"Task {self.task_id}'s run has ended; its events are closed.")
        await db(_send, self._run.pk, type, dict(data or {}))

    async def read_fields(self) -> Mapping[str, Any]:
        self._fields = await db(read_fields, self._run.pk)
        return dict(self._fields)

    async def write_fields(self, **changes: Any) -> None:
        await db(merge_fields, self._run.pk, changes)


class Runner:
    """The runs of this process, started from a view or from a runtime."""

    def __init__(self, cancel_grace: float) -> None:
        self.cancel_grace = cancel_grace
        self.runs: dict[int, Run] = {}
        self.closed = False
        self._shutdown: asyncio.Task[None] | None = None

    # start ----------------------------------------------------------------------------

    async def start(self, pk: int) -> bool:
        """Start a READY task; False if it was not READY. Task.DoesNotExist if unknown."""
        if self.closed:
            raise RuntimeClosed("The runner has shut down.")
        task = await db(_claim_start, pk)
        if task is None:
            return False
        run = Run(pk)
        self.runs[pk] = run  # before the task: an eager task factory runs it at once
        if self.closed:  # shut down while the start was being stored
            run.claim(TaskStatus.INTERRUPTED, "interrupted", {"reason": "shutdown"})
            await self._finish(run)
            self._forget(run)
            return True
        behaviour = resolve_behaviour(task.behaviour)
        run.task = asyncio.create_task(
            self._run(run, behaviour, task.fields, task.timeout_seconds),
            name=f"eventstream {MODEL} {pk}",
        )
        # A task cancelled before its first step never runs _run's finally.
        run.task.add_done_callback(lambda _: self._forget(run))
        return True

    async def _run(
        self, run: Run, behaviour: Behaviour, fields: Mapping[str, Any], timeout: float | None
    ) -> None:
        try:
            try:
                async with asyncio.timeout(timeout) as deadline:
                    try:
                        result = await behaviour(Context(self, run, fields))
                    finally:
                        run.settled = True
            except asyncio.CancelledError as exc:
                current = asyncio.current_task()
                if run.outcome is None and current is not None and not current.cancelling():
                    run.claim(TaskStatus.FAILED, "error", _failure(exc))  # the task's own
                # A cancel or a shutdown claimed the outcome before cancelling; else interrupted.
                run.claim(TaskStatus.INTERRUPTED, "interrupted", {"reason": "shutdown"})
            except TimeoutError as exc:
                if deadline.expired():
                    run.claim(TaskStatus.TIMED_OUT, "timeout", {"timeout": timeout})
                else:
                    run.claim(TaskStatus.FAILED, "error", _failure(exc))
            except BaseException as exc:  # any failure ends the run, never the loop
                logger.error("Task %s %s failed", MODEL, run.pk, exc_info=exc)
                run.claim(TaskStatus.FAILED, "error", _failure(exc))
            else:
                run.claim(TaskStatus.SUCCESSFUL, "complete", dict(result or {}))
            await self._finish(run)
        finally:
            self._forget(run)

    async def _finish(self, run: Run) -> None:
        """Store the claimed outcome, then send its terminal event through the library."""
        if run.recorded or run.outcome is None:
            return
        run.recorded = True
        status, type, data = run.outcome
        data.setdefault("message", _MESSAGES[status])
        error = "" if status is TaskStatus.SUCCESSFUL else f"{type}: {data['message']}"
        if status is TaskStatus.FAILED:
            error = f"{data.get('error_type')}: {data['message']}"
        elif status is TaskStatus.CANCELLED:
            error = f"cancelled: {data['reason']}"
        if await db(_record, run.pk, status, error):
            await db(_send, run.pk, type, data)

    def _forget(self, run: Run) -> None:
        if self.runs.get(run.pk) is run:
            del self.runs[run.pk]
        run.done.set()

    # cancel ---------------------------------------------------------------------------

    async def cancel(self, pk: int, reason: str | None) -> bool:
        """Cancel a READY or RUNNING task of this process; False if nothing was cancelled."""
        reason = reason or "cancelled"
        data = {"reason": reason, "message": f"Task was cancelled: {reason}"}
        run = self.runs.get(pk)
        if run is None:
            if await db(_cancel_ready, pk, f"cancelled: {reason}"):
                await db(_send, pk, "cancelled", data)
                return True
            run = self.runs.get(pk)  # a start that won the race has registered by now
            if run is None:
                return False
        if not run.claim(TaskStatus.CANCELLED, "cancelled", data):
            return False
        await self._stop(run)
        return True

    async def _stop(self, run: Run) -> None:
        """Cancel the run's task; one that swallows it is recorded anyway after the grace.

        It is cancelled again every grace period until it ends, in the background.
        """
        if run.task is None:
            await self._finish(run)
            return
        if not run.settled:
            run.task.cancel()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.cancel_grace):
                await run.done.wait()
        await self._finish(run)  # done by the run itself, unless it never ran or swallowed
        if not run.done.is_set():
            run.reaper = asyncio.create_task(
                self._reap(run), name=f"eventstream reap {MODEL} {run.pk}"
            )

    async def _reap(self, run: Run) -> None:
        while run.task is not None and not run.task.done() and not run.settled:
            run.task.cancel()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.cancel_grace):
                    await run.done.wait()

    # shutdown -------------------------------------------------------------------------

    async def shutdown(self, grace: float) -> None:
        """Refuse starts, give runs ``grace``, say farewell on every channel, interrupt the rest."""
        if self._shutdown is None:
            self.closed = True
            self._shutdown = asyncio.create_task(self._drain(grace), name="eventstream shutdown")
        await asyncio.shield(self._shutdown)

    async def _drain(self, grace: float) -> None:
        waiting = [run.done.wait() for run in self.runs.values()]
        if waiting:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(grace):
                    await asyncio.gather(*waiting)
        # What is still running is interrupted now; a run that ended just before keeps
        # its outcome, and its terminal event goes out before the farewell.
        runs = list(self.runs.values())
        interrupted = [
            run
            for run in runs
            if run.claim(TaskStatus.INTERRUPTED, "interrupted", {"reason": "shutdown"})
        ]
        for run in runs:
            if run not in interrupted:
                await run.done.wait()
        await db(_farewell)
        for run in interrupted:
            await self._stop(run)


def _farewell() -> None:
    """The farewell, sent with send_event on every channel that has local listeners.

    The library has no event that is not one of the channel's: the farewell is
    stored and numbered like any other, and cannot end its streams.
    """
    from django_eventstream.utils import get_storage
    from django_eventstream.views import get_listener_manager

    from .models import Task

    for channel in list(get_listener_manager().listeners_by_channel):
        pk = int(channel.removeprefix("task-"))
        if Task.objects.filter(pk=pk).exists():
            last = get_storage().get_current_id(channel)
            _send(pk, FAREWELL_EVENT, {"last_event_id": last})


_MESSAGES = {
    TaskStatus.SUCCESSFUL: "Task completed successfully",
    TaskStatus.FAILED: "Task failed",
    TaskStatus.CANCELLED: "Task was cancelled",
    TaskStatus.TIMED_OUT: "Task timed out",
    TaskStatus.INTERRUPTED: "Task was interrupted",
}


def _failure(exc: BaseException) -> dict[str, Any]:
    data: dict[str, Any] = {"error_type": type(exc).__name__, "message": str(exc)}
    if isinstance(exc, BaseExceptionGroup):
        data["errors"] = [_failure(leaf) for leaf in _leaves(exc)]
    return data


def _leaves(group: BaseExceptionGroup[Any]) -> list[BaseException]:
    out: list[BaseException] = []
    for exc in group.exceptions:
        out.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return out


#: The runner the views use: the current runtime's, or the server's own.
_current: Runner | None = None


def current_runner(cancel_grace: float = 2.0) -> Runner:
    global _current
    if _current is None:
        _current = Runner(cancel_grace)
    return _current


def set_current_runner(runner: Runner) -> None:
    global _current
    _current = runner
