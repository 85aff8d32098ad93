"""The one procrastinate task: run a suite behaviour as a job, in procrastinate's worker.

procrastinate runs it (``./manage.py procrastinate worker``, a process of its
own), cancels its asyncio task when a cancel asks for an abort, and records
the job's own status. The glue here gives the behaviour its context and
records the run's outcome for the suite's clients: one terminal event.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from typing import Any

from procrastinate import JobContext
from procrastinate.contrib.django import app
from procrastinate.job_context import AbortReason

from conformance.contract import (
    EVENT_TYPE_PATTERN,
    FAREWELL_EVENT,
    TERMINAL_EVENTS,
    resolve_behaviour,
)

from . import store
from .store import db


class Context:
    """What a behaviour is given (contract.TaskContext), inside the worker."""

    def __init__(self, pk: int, job_id: int, attempt: int, fields: dict[str, Any]) -> None:
        self._pk, self._job_id, self._attempt, self._fields = pk, job_id, attempt, fields
        self.task_id = str(pk)

    @property
    def fields(self) -> Mapping[str, Any]:
        return dict(self._fields)

    async def send_event(self, type: str, data: Mapping[str, Any] | None = None) -> None:
        if not isinstance(type, str) or not EVENT_TYPE_PATTERN.fullmatch(type):
            raise ValueError(
                f"Cannot send event type {type!r}: SPEC allows [A-Za-z0-9_.-]{{1,64}}."
            )
        if type in TERMINAL_EVENTS or type == FAREWELL_EVENT:
            raise ValueError(f"Cannot send {type!r}: the implementation sends it itself.")
        text = json.dumps(dict(data or {}), allow_nan=False, default=str)
        await db(store.publish, self._pk, self._job_id, self._attempt, type, text)
        await asyncio.sleep(0)

    async def read_fields(self) -> Mapping[str, Any]:
        self._fields = await db(store.read_fields, self._pk)
        return dict(self._fields)

    async def write_fields(self, **changes: Any) -> None:
        await db(store.merge_fields, self._pk, changes)


def failure(exc: BaseException) -> dict[str, Any]:
    data: dict[str, Any] = {"error_type": type(exc).__name__, "message": str(exc)}
    if isinstance(exc, BaseExceptionGroup):
        data["errors"] = [failure(leaf) | {} for leaf in _leaves(exc)]
    return data


def _leaves(group: BaseExceptionGroup[Any]) -> list[BaseException]:
    leaves: list[BaseException] = []
    for exc in group.exceptions:
        leaves.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return leaves


@app.task(name="run_behaviour", pass_context=True)
async def run_behaviour(context: JobContext, task_id: int) -> None:
    job_id = context.job.id
    assert job_id is not None
    attempt: int | None = None

    async def end(status: str, data: dict[str, Any]) -> None:
        await db(store.finish, task_id, job_id, status, data, attempt)

    limit = None
    try:  # an abort may come at any await, the first included
        claim = await db(store.claim, task_id, job_id)
        if claim is None:
            return  # not the task's current run any more: nothing to do
        attempt = claim.attempt
        if claim.stop:  # stopped before it began: the work never runs
            await end("CANCELLED", {})
            return
        behaviour = resolve_behaviour(claim.behaviour)
        context_ = Context(task_id, job_id, claim.attempt, claim.fields)
        # procrastinate has no time limit for a job: the limit is the glue's.
        async with asyncio.timeout(claim.timeout) as limit:
            result = await behaviour(context_)
    except asyncio.CancelledError as exc:
        reason = context.abort_reason()
        if reason is AbortReason.USER_REQUEST:  # a cancel, or a runtime's shutdown
            await end("CANCELLED", {})
        elif reason is AbortReason.SHUTDOWN:  # the worker's own shutdown
            await end("INTERRUPTED", {})
        else:  # the behaviour's own CancelledError: a failure (EDGE-1)
            await end("FAILED", failure(exc))
        raise
    except TimeoutError as exc:
        if limit is not None and limit.expired():  # the run's limit, not the task's own
            await end("TIMED_OUT", {})
        else:
            await end("FAILED", failure(exc))
        raise
    except BaseException as exc:
        await end("FAILED", failure(exc))
        raise
    data = {"message": "Task completed successfully", **(result or {})}
    try:
        json.dumps(data, allow_nan=False, default=str)
    except ValueError as exc:  # a result that is not strict JSON fails the run (FUNC-20)
        await end("FAILED", failure(exc))
        raise
    await end("SUCCESSFUL", data)
