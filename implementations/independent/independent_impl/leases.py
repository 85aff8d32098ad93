"""Leases: a run's owner proves it is alive; anyone else notices when it is not.

Every ``lease_interval`` each runtime or server process, in one long-lived
task:

1. beats the heartbeat of each run it owns, learning in the same
   transaction whether one was recovered by another process (then it stops
   it, recording nothing: the run is fenced) and whether another process
   asked for one to be cancelled;
2. scans the runs others own. A run whose heartbeat has not moved for
   ``lease_ttl`` seconds *of successful scans* is taken for lost and
   recorded INTERRUPTED (EDGE-6), with a compare-and-set on the heartbeat it
   saw. The scan runs under the write lock, and a failed one forgets every
   observation: a database outage stops every heartbeat, and must not make
   live runs look dead once it is over (EDGE-11);
3. runs interrupted tasks with runs left (``max_attempts``) again (EDGE-9);
4. tells clients waiting here on a task that runs elsewhere how it ended,
   once it has (EDGE-7).

Staleness is measured on this process's own clock, never by comparing
clocks of two processes.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from .store import RunningRow, StorageUnavailable, Store

if TYPE_CHECKING:
    from .coordinator import Coordinator

__all__ = ["LeaseKeeper"]

logger = logging.getLogger("independent_impl.leases")


class LeaseKeeper:
    """Renews, recovers and watches, for one coordinator."""

    def __init__(self, coordinator: Coordinator, store: Store, ttl: float, interval: float) -> None:
        self._coordinator = coordinator
        self._store = store
        self._ttl = ttl
        self._interval = interval
        #: task id -> (what the scan saw, loop time it was first seen unchanged)
        self._seen: dict[int, tuple[tuple[object, ...], float]] = {}
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="independent:leases")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            try:
                await self.tick()
            except StorageUnavailable:
                self._seen.clear()
            except Exception:  # a bug here must not end lease renewal for good
                logger.exception("Lease round failed")
                self._seen.clear()
            await asyncio.sleep(self._interval)

    async def tick(self) -> None:
        coordinator = self._coordinator
        lost, cancels = await self._store.renew(coordinator.owner, coordinator.owned_runs())
        for task_id in lost:
            coordinator.on_run_lost(task_id)
        for task_id, reason in cancels:
            coordinator.on_cancel_requested(task_id, reason)

        running, rerunnable = await self._store.scan(coordinator.owner)
        now = asyncio.get_running_loop().time()
        seen: dict[int, tuple[tuple[object, ...], float]] = {}
        expired: list[RunningRow] = []
        for row in running:
            key = (row.owner, row.heartbeat, row.token)
            previous = self._seen.get(row.id)
            since = previous[1] if previous is not None and previous[0] == key else now
            seen[row.id] = (key, since)
            if now - since >= self._ttl:
                expired.append(row)
        self._seen = seen
        for row in expired:
            await coordinator.recover(row)
        if not coordinator.closing:
            for row in rerunnable:
                await coordinator.rerun(row)

        watched = coordinator.watched_task_ids()
        if watched:
            coordinator.deliver_outcomes(await self._store.finished(watched))
