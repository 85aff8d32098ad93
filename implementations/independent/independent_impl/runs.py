"""One run of a task: its asyncio task, how it is stopped, and how it ended.

A run's outcome is decided in exactly one place, synchronously, and whoever
decides first wins: the body returning or raising, a cancel, the timeout, a
shutdown interrupting it, or the discovery that another process recovered it.
A stop only counts while nothing is decided (:meth:`Run.request_stop` returns
False otherwise), and once a stop counts, the outcome is the stop's whatever
the body does next: it may swallow the cancellation, return, or raise from
its cleanup (CANCEL-9, CANCEL-14). So ``cancel_task`` returns true exactly
when the task ends CANCELLED (RACE-3, RACE-16, RACE-21).

The body runs in an asyncio task named after the task (ASYNC-14), with the
context of whoever started it (ASYNC-17). It is stopped with
``Task.cancel()`` (ASYNC-7); a body still running ``cancel_grace`` later is
cancelled again, and half a second after that abandoned: its outcome is
recorded and announced while it carries on alone.
"""

from __future__ import annotations

import asyncio
import enum
import json
import logging
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Protocol

from conformance.contract import Behaviour, TaskRef, TaskStatus

from .events import Envelope, check_event_type, check_json, envelope

__all__ = ["Outcome", "Run", "RunContext", "RunHost", "RunLost", "Stop"]

logger = logging.getLogger("independent_impl.runs")

#: Seconds between the second cancel of a body that will not stop and giving up on it.
_ABANDON_AFTER = 0.5


class RunLost(Exception):
    """A write of a run that another process has recovered: it is not recorded."""


class _Phase(enum.Enum):
    # The asyncio task exists; the body has not started.
    PENDING = "pending"
    # The body runs.
    RUNNING = "running"
    # A stop was requested; the body has not finished yet.
    STOPPING = "stopping"
    # The outcome is decided; it is being recorded and announced.
    CONCLUDING = "concluding"
    # Recorded and announced.
    DONE = "done"


_ALLOWED = {
    _Phase.PENDING: {_Phase.RUNNING, _Phase.STOPPING, _Phase.CONCLUDING},
    _Phase.RUNNING: {_Phase.STOPPING, _Phase.CONCLUDING},
    _Phase.STOPPING: {_Phase.CONCLUDING},
    _Phase.CONCLUDING: {_Phase.DONE},
    _Phase.DONE: set(),
}


@dataclass(frozen=True, slots=True)
class Stop:
    """Why a run is being stopped from outside its body."""

    kind: str  # "cancel", "timeout", "interrupt" or "lost"
    reason: str = ""
    limit: float | None = None


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a run ended: the status to record and the terminal event to send."""

    status: TaskStatus
    type: str
    data: dict[str, Any]
    error: str = ""
    exception: BaseException | None = field(default=None, compare=False)

    @property
    def lost(self) -> bool:
        """Recovered elsewhere: nothing of ours is recorded."""
        return self.type == ""


class RunHost(Protocol):
    """What a run needs from its coordinator."""

    cancel_grace: float

    def publish(self, run: Run, env: Envelope) -> None: ...

    async def conclude(self, run: Run, outcome: Outcome) -> None: ...

    async def read_fields(self, task_id: int) -> Mapping[str, Any]: ...

    async def write_fields_of(self, run: Run, values: Mapping[str, str]) -> bool: ...


class RunContext:
    """The :class:`~conformance.contract.TaskContext` a behaviour gets."""

    def __init__(self, run: Run, fields: Mapping[str, Any]) -> None:
        self._run = run
        self._fields = MappingProxyType(dict(fields))

    @property
    def task_id(self) -> str:
        return str(self._run.task_id)

    @property
    def fields(self) -> Mapping[str, Any]:
        return self._fields

    async def send_event(self, type: str, data: Mapping[str, Any] | None = None) -> None:
        self._run.send(type, data)
        # One turn for the clients: a task that sends in a tight loop must not
        # outrun readers that keep up (RACE-14), yet never waits for a slow one.
        await asyncio.sleep(0)

    async def read_fields(self) -> Mapping[str, Any]:
        return await self._run.host.read_fields(self._run.task_id)

    async def write_fields(self, **changes: Any) -> None:
        values = {name: json.dumps(value) for name, value in changes.items()}
        if not await self._run.host.write_fields_of(self._run, values):
            raise RunLost(
                f"Cannot write fields of {self._run.ref}: its run was recovered by another "
                "process, so what it writes is no longer recorded."
            )


class Run:
    """One execution of a task in this process."""

    def __init__(
        self,
        host: RunHost,
        ref: TaskRef,
        token: str,
        attempt: int,
        first_id: int,
        behaviour: Behaviour | Exception,
        fields: Mapping[str, Any],
        timeout: float | None,
    ) -> None:
        self.host = host
        self.ref = ref
        self.task_id = int(ref.id)
        self.token = token
        self.attempt = attempt
        self.next_id = first_id
        self.timeout = timeout
        self.context = RunContext(self, fields)
        self.stop: Stop | None = None
        self.abandoned = False
        #: Its outcome is being written: a client joining now gets only the end.
        self.recording = False
        self._phase = _Phase.PENDING
        self._behaviour = behaviour
        self._timers: list[asyncio.TimerHandle] = []
        self._task: asyncio.Task[None] | None = None
        self._finisher: asyncio.Task[None] | None = None
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def __repr__(self) -> str:
        return f"<Run {self.ref} attempt={self.attempt} {self._phase.value}>"

    def _transition(self, to: _Phase) -> None:
        if to not in _ALLOWED[self._phase]:
            raise RuntimeError(
                f"Cannot move the run of {self.ref} from {self._phase.value} to {to.value}."
            )
        self._phase = to

    @property
    def decided(self) -> bool:
        return self._phase in (_Phase.CONCLUDING, _Phase.DONE)

    def launch(self) -> None:
        """Start the asyncio task; it begins on the loop's next turn."""
        name = f"independent:{self.ref.model}:{self.ref.id}"
        self._task = asyncio.create_task(self._execute(), name=name)

    def send(self, type: str, data: Mapping[str, Any] | None) -> None:
        """Publish an event of the body (TaskContext.send_event)."""
        check_event_type(type)
        if self.decided and not self.abandoned:
            raise RuntimeError(
                f"Cannot send {type!r}: the run of {self.ref} has ended. "
                "Send events before the task returns."
            )
        if data is None:
            data = {}
        elif not isinstance(data, Mapping):
            raise TypeError(f"Cannot send {type!r}: its data must be a mapping, not {data!r}.")
        check_json(repr(type), data)
        env = envelope(self.task_id, self.ref.model, self.next_id, type, data)
        self.next_id += 1
        self.host.publish(self, env)

    def request_stop(self, stop: Stop) -> bool:
        """Stop the run for ``stop``; False if its outcome is already decided or stopping."""
        if self._phase not in (_Phase.PENDING, _Phase.RUNNING):
            if stop.kind == "lost" and self._phase is _Phase.STOPPING:
                self.stop = stop  # nothing of it may be recorded now
            return False
        started = self._phase is _Phase.RUNNING
        self._transition(_Phase.STOPPING)
        self.stop = stop
        if started and self._task is not None:
            # A body not yet started is never entered: _execute checks the stop.
            self._task.cancel()
            loop = asyncio.get_running_loop()
            self._timers.append(loop.call_later(self.host.cancel_grace, self._force))
        return True

    def _on_timeout(self) -> None:
        assert self.timeout is not None
        self.request_stop(Stop("timeout", limit=self.timeout))

    def _force(self) -> None:
        """The grace period is over and the body still runs: cancel it again."""
        if self.decided or self._task is None or self._task.done():
            return
        logger.warning("Task %s ignored its cancellation; cancelling it again", self.ref)
        self._task.cancel()
        loop = asyncio.get_running_loop()
        self._timers.append(loop.call_later(_ABANDON_AFTER, self._abandon))

    def _abandon(self) -> None:
        """The body will not stop: record and announce its outcome without it."""
        if self.decided or self._task is None or self._task.done():
            return
        logger.error("Task %s will not stop; its run is abandoned", self.ref)
        self.abandoned = True
        outcome = self._decide(None, None)
        self._transition(_Phase.CONCLUDING)
        finisher = self.host.conclude(self, outcome)
        self._finisher = asyncio.get_running_loop().create_task(
            _finish(finisher, self), name=f"independent:{self.ref.model}:{self.ref.id}:abandoned"
        )

    async def _execute(self) -> None:
        """The asyncio task: run the body, decide the outcome, have it concluded."""
        error: BaseException | None = None
        result: Any = None
        if self._phase is _Phase.PENDING:
            self._transition(_Phase.RUNNING)
            if self.timeout is not None:
                loop = asyncio.get_running_loop()
                self._timers.append(loop.call_later(self.timeout, self._on_timeout))
            try:
                if isinstance(self._behaviour, Exception):
                    raise self._behaviour
                result = await self._behaviour(self.context)
            # Every exception ends the run as an outcome, SystemExit and
            # KeyboardInterrupt included (EDGE-1, EDGE-2): let through, they
            # would stop the event loop and every other task with it.
            except BaseException as exc:
                error = exc
        if self.abandoned:
            return
        if self.stop is not None:
            task = asyncio.current_task()
            while task is not None and task.cancelling():
                task.uncancel()  # our own cancels, now handled
        outcome = self._decide(error, result)
        self._transition(_Phase.CONCLUDING)
        await _finish(self.host.conclude(self, outcome), self)

    def _decide(self, error: BaseException | None, result: Any) -> Outcome:
        for timer in self._timers:
            timer.cancel()
        stop = self.stop
        if stop is not None:
            return _stopped(stop)
        if error is not None:
            return _failed(error)
        if result is None:
            data: dict[str, Any] = {}
        elif isinstance(result, Mapping):
            data = dict(result)
        else:
            data = {"result": result}
        try:
            check_json("the task's result", data)
        except ValueError as exc:
            return _failed(exc)
        return Outcome(
            TaskStatus.SUCCESSFUL, "complete", {"message": "Task completed successfully", **data}
        )

    def mark_done(self) -> None:
        self._transition(_Phase.DONE)
        if not self.done.done():
            self.done.set_result(None)


async def _finish(conclusion: Awaitable[None], run: Run) -> None:
    try:
        await conclusion
    finally:
        run.mark_done()


def _stopped(stop: Stop) -> Outcome:
    if stop.kind == "cancel":
        return Outcome(
            TaskStatus.CANCELLED,
            "cancelled",
            {"reason": stop.reason, "message": "Task cancelled"},
            f"Cancelled: {stop.reason}",
        )
    if stop.kind == "timeout":
        limit = stop.limit or 0.0
        return Outcome(
            TaskStatus.TIMED_OUT,
            "timeout",
            {"timeout": limit, "message": f"Task timed out after {limit:g} s"},
            f"Timed out after {limit:g} s",
        )
    if stop.kind == "interrupt":
        return Outcome(
            TaskStatus.INTERRUPTED,
            "interrupted",
            {"reason": stop.reason, "message": "Task interrupted"},
            f"Interrupted: {stop.reason}",
        )
    return Outcome(TaskStatus.INTERRUPTED, "", {})


def _leaves(error: BaseException) -> list[BaseException]:
    if isinstance(error, BaseExceptionGroup):
        return [leaf for inner in error.exceptions for leaf in _leaves(inner)]
    return [error]


def _failed(error: BaseException) -> Outcome:
    kind = type(error).__name__
    data: dict[str, Any] = {"error_type": kind, "message": str(error)}
    if isinstance(error, BaseExceptionGroup):
        data["errors"] = [
            {"error_type": type(leaf).__name__, "message": str(leaf)} for leaf in _leaves(error)
        ]
    return Outcome(TaskStatus.FAILED, "error", data, f"{kind}: {error}", error)
