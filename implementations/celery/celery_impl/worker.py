"""The Celery worker's side: one Celery task that runs a behaviour, as a team would write it.

Started as ``celery -A celery_impl.worker worker`` (adapter.start_worker).
Celery has no asyncio: the task runs the behaviour's coroutine with
``asyncio.run`` in the worker's pool thread. Progress goes out the way
Celery's docs show ("Custom states"): ``update_state(state="PROGRESS",
meta=...)``, one call per event, which the Redis result backend stores and
publishes on the task's channel. Cancel is Celery's ``AbortableTask``: the
web side calls ``abort()``, and the task polls ``is_aborted()``.

What Celery has no notion of is the glue's, here: the event's id, type and
timestamp inside the meta; the behaviour's timeout; cancelling the
coroutine once the abort is seen (and again, every grace period, if it
swallows the cancellation); the states CANCELLED, TIMED_OUT and INTERRUPTED,
stored with ``update_state`` before ``Ignore`` as Celery's docs show for
states a task keeps itself.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Mapping
from typing import Any

import redis
from celery import Task
from celery.contrib.abortable import AbortableTask
from celery.exceptions import Ignore
from celery.signals import worker_ready

from conformance.contract import (
    EVENT_TYPE_PATTERN,
    FAREWELL_EVENT,
    TERMINAL_EVENTS,
    resolve_behaviour,
)

from .stack import (
    CANCELLED,
    FINISH,
    INTERRUPTED,
    MODEL,
    PROGRESS,
    TASK_NAME,
    TIMED_OUT,
    Keys,
    make_app,
    now,
)

REDIS_URL = os.environ.get("CELERY_IMPL_REDIS_URL", "redis://127.0.0.1:6379/0")
PREFIX = os.environ.get("CELERY_IMPL_PREFIX", "celery-impl")
#: A task that swallows its cancellation is cancelled again, and recorded, after this.
CANCEL_GRACE = float(os.environ.get("CELERY_IMPL_CANCEL_GRACE", "1.0"))
#: How long a run's leftover asyncio tasks (shielded work) may finish after it ended.
LEFTOVER_GRACE = 30.0
#: How often a running task asks the backend whether it was aborted (AbortableTask's way).
ABORT_POLL = 0.05

app = make_app(REDIS_URL, PREFIX)
keys = Keys(PREFIX)
store = redis.Redis.from_url(REDIS_URL)


@worker_ready.connect
def _announce(**_: Any) -> None:
    """Tell the web side the worker consumes its queue (adapter waits on this list)."""
    store.rpush(keys.ready, str(os.getpid()))


@app.task(bind=True, base=AbortableTask, name=TASK_NAME)
def run_behaviour(
    self: Task, task_id: str, behaviour: str, timeout: float | None
) -> Mapping[str, Any]:
    """Run one task's behaviour; return its ``complete`` event (Celery stores SUCCESS)."""
    run = Run(self, task_id, behaviour, timeout)
    asyncio.run(run.main())
    if run.failure is not None:
        raise run.failure  # Celery records FAILURE: the exception's type and message
    if run.result is None:
        raise Ignore()  # the glue stored the outcome (CANCELLED, TIMED_OUT, INTERRUPTED)
    return run.result


class Run:
    """One run of a behaviour in a worker thread, and the context it is given."""

    def __init__(self, task: Task, task_id: str, behaviour: str, timeout: float | None) -> None:
        self.celery_task, self.task_id, self.path, self.limit = task, task_id, behaviour, timeout
        self.celery_id = keys.celery_id(task_id)
        self.next_id = 1
        self.ended = False
        self.result: Mapping[str, Any] | None = None
        self.failure: BaseException | None = None
        self.stopping: tuple[str, str] | None = None
        self._fields: dict[str, Any] = {}

    # The context (conformance.contract.TaskContext).

    @property
    def fields(self) -> Mapping[str, Any]:
        return dict(self._fields)

    async def send_event(self, type: str, data: Mapping[str, Any] | None = None) -> None:
        if not isinstance(type, str) or not EVENT_TYPE_PATTERN.fullmatch(type):
            raise ValueError(
                f"Cannot send event type {type!r}: SPEC allows 1-64 of [A-Za-z0-9._-]."
            )
        if type in TERMINAL_EVENTS or type == FAREWELL_EVENT:
            raise ValueError(f"Cannot send {type!r}: the implementation sends it itself.")
        if self.ended:
            raise RuntimeError(f"Cannot send {type!r}: the run has ended.")
        payload = dict(data or {})
        json.dumps(payload, allow_nan=False)  # strict JSON, or ValueError (FUNC-20)
        self._progress(type, payload)
        await asyncio.sleep(0)

    async def read_fields(self) -> Mapping[str, Any]:
        raw = store.hgetall(keys.fields(self.task_id))
        self._fields = {k.decode(): json.loads(v) for k, v in raw.items()}
        return dict(self._fields)

    async def write_fields(self, **changes: Any) -> None:
        if changes:
            store.hset(
                keys.fields(self.task_id), mapping={k: json.dumps(v) for k, v in changes.items()}
            )
            self._fields.update(changes)

    # The run.

    def _event(self, type: str, data: Mapping[str, Any]) -> dict[str, Any]:
        event = {"id": self.next_id, "type": type, "data": dict(data), "timestamp": now()}
        self.next_id += 1
        return event

    def _progress(self, type: str, data: Mapping[str, Any]) -> None:
        """One event: Celery's documented progress call, which the backend publishes."""
        self.celery_task.update_state(
            task_id=self.celery_id, state=PROGRESS, meta=self._event(type, data)
        )

    async def main(self) -> None:
        main = asyncio.current_task()
        assert main is not None
        main.set_name(f"{MODEL}:{self.task_id} celery run")
        await self.read_fields()
        watcher = asyncio.create_task(self._watch_abort(main), name=f"{MODEL}:{self.task_id} abort")
        limit = asyncio.timeout(self.limit)
        try:
            async with limit:
                returned = await resolve_behaviour(self.path)(self)
        except asyncio.CancelledError:
            if self.stopping is None:  # not ours: the behaviour's own CancelledError fails it
                raise
            self._stop(*self.stopping)
        except TimeoutError as exc:
            if not limit.expired():
                self._fail(exc)  # the behaviour's own timeout: a failure (ASYNC-3)
            elif self._claim():
                self._end(
                    TIMED_OUT,
                    "timeout",
                    {
                        "timeout": self.limit,
                        "message": f"Task timed out after {self.limit} seconds",
                    },
                )
        except BaseException as exc:  # every failure is Celery's to record (FUNC-9, EDGE-1)
            self._fail(exc)
        else:
            self._complete(returned)
        finally:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
            # Work the behaviour shielded from its cancel is left to finish (ASYNC-27):
            # asyncio.run would cancel it on the way out.
            leftovers = asyncio.all_tasks() - {main}
            if leftovers:
                await asyncio.wait(leftovers, timeout=LEFTOVER_GRACE)

    def _claim(self) -> bool:
        """Whether the run's own outcome stands; if a stop came first, record that instead."""
        stop, reason = (
            v.decode() if isinstance(v, bytes) else v
            for v in store.eval(FINISH, 1, keys.task(self.task_id), self.next_id)
        )
        if stop:
            self._stop(stop, reason)
            return False
        return True

    def _complete(self, returned: Any) -> None:
        data = {"message": "Task completed successfully", **dict(returned or {})}
        try:
            json.dumps(data, allow_nan=False)
        except (TypeError, ValueError) as exc:  # not strict JSON: the run fails (FUNC-20)
            return self._fail(exc)
        if self._claim():
            self.ended = True
            self.result = self._event("complete", data)

    def _fail(self, exc: BaseException) -> None:
        if self._claim():
            self.ended = True
            self.failure = exc

    def _stop(self, stop: str, reason: str) -> None:
        if stop == "cancel":
            self._end(
                CANCELLED,
                "cancelled",
                {"reason": reason, "message": f"Task was cancelled: {reason}"},
            )
        else:
            self._end(
                INTERRUPTED,
                "interrupted",
                {"reason": reason, "message": f"Task was interrupted: {reason}"},
            )

    def _end(self, state: str, type: str, data: Mapping[str, Any]) -> None:
        """Store a stopped run's terminal event in the backend, under a state of the glue's."""
        if self.ended:
            return
        self.ended = True
        self.celery_task.update_state(
            task_id=self.celery_id, state=state, meta=self._event(type, data)
        )

    async def _watch_abort(self, main: asyncio.Task[None]) -> None:
        """AbortableTask's documented loop: ask is_aborted(); on abort, cancel the coroutine."""
        # Polled: AbortableTask offers nothing to wait on, only is_aborted() (its docs' loop).
        while not self.celery_task.is_aborted(task_id=self.celery_id):  # noqa: ASYNC110
            await asyncio.sleep(ABORT_POLL)
        record = store.hmget(keys.task(self.task_id), "stop", "reason")
        stop, reason = ((v or b"").decode() for v in record)
        self.stopping = (stop or "cancel", reason or "cancelled")
        main.cancel()
        while True:  # cancelled again every grace period while it swallows cancellation
            await asyncio.sleep(CANCEL_GRACE)
            self._stop(*self.stopping)  # recorded after the grace: its clients are told
            main.cancel()
