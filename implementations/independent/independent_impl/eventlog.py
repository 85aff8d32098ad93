"""The event log writer: events go to the database in batches, behind the fan-out.

Clients get an event at once, from memory; the log is for clients that
resume after this process has gone (EDGE-13). Writing each event before
sending it would make every event wait for a disk, and stop streams while
the database is away (EDGE-11), so one background task writes whatever has
gathered, one transaction at a time. A run's own outcome takes its unwritten
events with it (:meth:`EventLog.take`), so a finished task's log is complete
up to its terminal event.

Events larger than ``log_event_bytes`` are not logged: a client resuming
across one is told with ``stream-reset``, as for any other gap.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from .events import Envelope
from .settings import Settings
from .store import LogEntry, StorageUnavailable, Store

__all__ = ["EventLog"]

logger = logging.getLogger("independent_impl.eventlog")

#: Seconds between attempts while the database refuses writes.
_RETRY = 0.25
#: Unwritten events kept while the database is away; older ones are dropped
#: (a client resuming across them is told of the gap).
_MAX_PENDING = 50_000


class EventLog:
    """Batches events for the database; one long-lived task writes them."""

    def __init__(self, store: Store, settings: Settings) -> None:
        self._store = store
        self._settings = settings
        self._pending: list[LogEntry] = []
        self._wakeup = asyncio.Event()
        self._written = asyncio.Condition()
        self._in_flight = False
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="independent:event-log")

    def append(self, task_id: int, token: str, env: Envelope) -> None:
        if env.size > self._settings.log_event_bytes:
            return
        event = env.event
        self._pending.append(
            LogEntry(task_id, token, event.id, event.type, event.data, event.timestamp)
        )
        if len(self._pending) > _MAX_PENDING:
            del self._pending[: len(self._pending) - _MAX_PENDING]
        self._wakeup.set()

    def take(self, task_id: int) -> list[LogEntry]:
        """Remove and return the unwritten events of ``task_id`` (for its outcome's write)."""
        taken = [e for e in self._pending if e.task_id == task_id]
        if taken:
            self._pending = [e for e in self._pending if e.task_id != task_id]
        return taken

    def restore(self, entries: list[LogEntry]) -> None:
        """Put back events :meth:`take` took, when the write they went with failed."""
        if entries:
            self._pending[:0] = entries
            self._wakeup.set()

    async def flushed(self, timeout: float) -> None:
        """Wait (at most ``timeout``) until nothing appended so far is left unwritten."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout), self._written:
                await self._written.wait_for(lambda: not self._pending and not self._in_flight)

    async def _run(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            await self._flush_pending(give_up=None)

    async def _flush_pending(self, give_up: float | None) -> None:
        loop = asyncio.get_running_loop()
        while self._pending:
            batch, self._pending = self._pending, []
            self._in_flight = True
            try:
                await self._store.append_events(batch, self._settings.log_size)
            except StorageUnavailable:
                self._pending[:0] = batch
                if give_up is not None and loop.time() >= give_up:
                    logger.warning("Dropped %d unlogged events: the database is away", len(batch))
                    self._pending = []
                    break
                await asyncio.sleep(_RETRY)
            except Exception:
                logger.exception("Could not log %d events; they are dropped", len(batch))
            finally:
                self._in_flight = False
        async with self._written:
            self._written.notify_all()

    async def close(self, timeout: float) -> None:
        """Stop the writer after a last flush (given up after ``timeout`` without a database)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        loop = asyncio.get_running_loop()
        await self._flush_pending(give_up=loop.time() + timeout)
