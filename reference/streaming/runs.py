"""One run of one task: its event ids, its lease's fate, how it is being stopped.

A :class:`Run` is what a running task's events go through (it is the task's
:class:`~streaming.models.EventSink`): it checks each event, numbers it and
hands it to its host to publish. Ids come from blocks the run reserves in
the task's row (``StreamTask.event_id_ceiling``) before it uses them, so a
run that dies with its process cannot have sent an id the next run sends
again.

The run knows its host only as a :class:`RunHost`: something that spawns
tracked work, publishes events and stops a run that lost its task. The
coordinator is one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Mapping
from typing import Any, Protocol

from . import db
from .events import CONTROL_TYPES, EVENT_TYPE, TERMINAL_TYPES, Event, encode_data, now_iso
from .hub import Message
from .keys import TaskKey
from .models import StreamTask
from .states import TaskStatus

#: Event ids a run reserves at a time (see ``StreamTask.event_id_ceiling``).
ID_BLOCK = 1000
#: Events a task may send in a row before it gives its clients' writers a turn.
YIELD_EVERY = 16


class RunHost(Protocol):
    """What a run needs of whoever runs it."""

    def spawn(self, work: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        """Run ``work`` as a task the host tracks (and waits for when it shuts down)."""
        ...

    async def publish(
        self, key: TaskKey, event: Event, *, final: bool = False, json_data: str | None = None
    ) -> Message:
        """Send ``event`` to every client of task ``key``."""
        ...

    def lose(self, run: Run, why: str) -> None:
        """``run``'s task was taken from it: stop it, record nothing."""
        ...


class Run:
    """One run of one task, from its claim to its recorded ending."""

    __slots__ = (
        "attempt",
        "cancel_reason",
        "finished",
        "host",
        "key",
        "lost",
        "model",
        "next_id",
        "reserved",
        "reserving",
        "supervisor",
        "task",
        "timeout",
        "unyielded",
    )

    def __init__(
        self, host: RunHost, task: StreamTask, *, attempt: int, timeout: float | None
    ) -> None:
        self.host = host
        self.task = task
        self.model = type(task).__name__
        self.key = TaskKey(self.model, task.pk)
        self.attempt = attempt
        #: Seconds process() may take; None: no limit.
        self.timeout = timeout
        #: Ids continue above every id an earlier run may have sent.
        self.next_id = task.event_id_ceiling + 1
        #: The highest id this run has reserved in the database.
        self.reserved = task.event_id_ceiling + ID_BLOCK
        self.reserving: asyncio.Task[None] | None = None
        #: Events sent since the run last let the loop turn.
        self.unyielded = 0
        #: Set by a cancel; the reason clients are told.
        self.cancel_reason: str | None = None
        #: Its lease was found lost: another coordinator recorded how it ended.
        self.lost = False
        #: The outcome is recorded; nothing more is sent for this run.
        self.finished = False
        self.supervisor: asyncio.Task[Any] | None = None

    def event(self, type: str, data: Mapping[str, Any]) -> Event:
        """The run's next event: the next id is used."""
        event = Event(self.next_id, type, data, self.task.pk, self.model, now_iso())
        self.next_id += 1
        return event

    async def send(self, type: str, data: Mapping[str, Any]) -> None:
        """Check, number and publish an event the task sends (``StreamTask.send_event``)."""
        if type in TERMINAL_TYPES or type in CONTROL_TYPES:
            raise ValueError(
                f"Cannot send {type!r} from {self.key}: the coordinator sends terminal "
                "and control events itself (when process() returns, raises or is stopped; "
                "when a stream is cut, resumed or waits)."
            )
        if not isinstance(type, str) or not EVENT_TYPE.fullmatch(type):
            raise ValueError(
                f"Cannot send event type {type!r} from {self.key}: a type is 1 to 64 ASCII "
                "letters, digits, '-', '_' or '.'."
            )
        try:
            data_json = encode_data(data)
        except ValueError as exc:
            raise ValueError(
                f"Cannot send {type!r} from {self.key}: its data is not strict JSON ({exc}); "
                "JSON has no NaN or infinity."
            ) from None
        if self.finished:
            # The run was given up on (it ignored cancellation past the grace
            # period): every further await of send_event is a cancellation point.
            raise asyncio.CancelledError(f"{self.key} was stopped")
        running_low = self.next_id > self.reserved - ID_BLOCK // 2
        if running_low and self.reserving is None and not self.lost:
            self.reserving = self.host.spawn(self._reserve(), f"streaming:reserve:{self.key}")
        while self.next_id > self.reserved:
            # Every reserved id is used: an id the database has not reserved
            # could be sent again by the next run if this process died now.
            if self.reserving is None:  # the reservation found the task taken over
                raise asyncio.CancelledError(f"{self.key} lost its task")
            await asyncio.shield(self.reserving)
        await self.host.publish(self.key, self.event(type, data), json_data=data_json)
        # Publishing to the in-memory hub never suspends: a task sending in a
        # tight loop would starve its clients' writers until their bounded
        # queues overflowed. A turn of the loop every few events keeps them
        # level, and lets each writer send those events in one write instead
        # of one write per event.
        self.unyielded += 1
        if self.unyielded >= YIELD_EVERY:
            self.unyielded = 0
            await asyncio.sleep(0)

    async def _reserve(self) -> None:
        """Raise the task's id ceiling by a block, for the run to go on sending."""
        model = type(self.task)
        ceiling = self.reserved + ID_BLOCK
        try:
            reserved = await db.run_until_available(
                lambda: model._default_manager.filter(
                    pk=self.task.pk, attempt=self.attempt, status=TaskStatus.RUNNING
                ).aupdate(event_id_ceiling=ceiling),
                what=f"{self.key}: reserving event ids",
                keep_trying=lambda: not self.finished,
            )
        finally:
            self.reserving = None
        if reserved:
            self.reserved = ceiling
        else:
            self.host.lose(self, "its task was taken over while it reserved event ids")

    def __repr__(self) -> str:
        return f"<Run {self.key} attempt={self.attempt} next_id={self.next_id}>"
