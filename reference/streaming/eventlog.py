"""Each task's recent events in the database, for clients that resume after a restart.

The hub keeps recent events in memory; a restart loses them. The log keeps
the last ``history_size`` events of every task in the ``StreamEvent`` table,
written in batches by one writer task, off the publishing path: publishing
appends a message to a list, nothing more. While the database is away the
writer keeps what it has (up to ``buffer_limit`` events; past that the
oldest are dropped, and a client resuming over them is told ``stream-reset``)
and writes it once the database is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import deque
from functools import partial
from typing import Any

from asgiref.sync import sync_to_async
from django.db import transaction
from django.db.models import Max

from . import db
from .events import Event
from .hub import Message
from .models import StreamEvent

logger = logging.getLogger(__name__)

#: Rows written per INSERT.
BATCH = 500


class EventLog:
    """Writes published events to ``StreamEvent`` in batches, and reads them back."""

    def __init__(
        self, *, keep: int, max_event_bytes: int, enabled: bool = True, buffer_limit: int = 20_000
    ) -> None:
        self.keep = keep
        self.max_event_bytes = max_event_bytes
        self.enabled = enabled
        self._pending: deque[Message] = deque(maxlen=buffer_limit)
        self._wanted = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._writer: asyncio.Task[None] | None = None
        self._closing = False
        #: Events of the batch being written: no longer pending, not yet stored.
        self._writing = 0
        #: Events dropped because the buffer was full while the database was away.
        self.dropped = 0

    def append(self, message: Message) -> None:
        """Queue a published event for writing; never waits."""
        if not self.enabled or message.size > self.max_event_bytes:
            return
        if len(self._pending) == self._pending.maxlen:
            self.dropped += 1
        self._pending.append(message)
        self._idle.clear()
        self._wanted.set()

    def start(self) -> None:
        if self.enabled and self._writer is None:
            self._writer = asyncio.create_task(self._write_forever(), name="streaming:event-log")

    async def settled(self, timeout: float) -> None:
        """Wait (up to ``timeout`` seconds) until everything appended so far is written.

        A resuming client reads the log: events published a moment ago should
        be there, not reported gone because the writer was a batch behind.
        """
        if self._writer is None or self._idle.is_set():
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._idle.wait()

    async def close(self, timeout: float) -> None:
        """Write what is pending (for up to ``timeout`` seconds), then stop the writer."""
        if self._writer is None:
            return
        try:
            async with asyncio.timeout(timeout):
                await self._idle.wait()
        except TimeoutError:
            unwritten = self._writing + len(self._pending)
            logger.warning("event log: %d event(s) not written at shutdown", unwritten)
        self._closing = True
        self._writer.cancel()
        await asyncio.gather(self._writer, return_exceptions=True)
        self._writer = None

    async def _write_forever(self) -> None:
        while True:
            await self._wanted.wait()
            self._wanted.clear()
            while self._pending:
                # Taken off the buffer first: if the buffer overflows while this
                # batch waits for the database, what is dropped is newer events.
                batch = [self._pending.popleft() for _ in range(min(BATCH, len(self._pending)))]
                self._writing = len(batch)
                await db.run_until_available(
                    partial(sync_to_async(_write, thread_sensitive=True), batch, self.keep),
                    what=f"event log ({len(batch)} events)",
                    keep_trying=lambda: not self._closing,
                )
                self._writing = 0
            self._idle.set()

    async def read(
        self, model: str, task_id: Any, *, after: int, before: int | None
    ) -> list[Message]:
        """The stored events of one task with ids in (``after``, ``before``), oldest first."""
        if not self.enabled:
            return []
        rows = StreamEvent.objects.filter(model=model, task_id=task_id, event_id__gt=after)
        if before is not None:
            rows = rows.filter(event_id__lt=before)
        values = rows.order_by("event_id").values_list("event_id", "type", "data", "timestamp")
        found = await db.run(partial(db.listed, values))
        return [
            Message(Event(event_id, type, json.loads(data), task_id, model, ts), json_data=data)
            for event_id, type, data, ts in found
        ]


def _write(batch: list[Message], keep: int) -> None:
    rows = [
        StreamEvent(
            model=m.event.model,
            task_id=m.event.task_id,
            event_id=m.event.id,
            type=m.event.type,
            data=m.json,
            timestamp=m.event.timestamp,
        )
        for m in batch
    ]
    with transaction.atomic():
        StreamEvent.objects.bulk_create(rows, ignore_conflicts=True)
        for model, task_id in {(m.event.model, m.event.task_id) for m in batch}:
            mine = StreamEvent.objects.filter(model=model, task_id=task_id)
            newest = mine.aggregate(newest=Max("event_id"))["newest"]
            if newest is not None and newest > keep:
                mine.filter(event_id__lte=newest - keep).delete()
