"""One asyncio lock per key, dropped when nobody holds or awaits it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator


class KeyedLocks:
    """Serialise operations per key; :meth:`settled` waits until none is under way.

    The coordinator holds a task's lock for ``start_task`` and ``cancel_task``.
    Each is several awaits long (a read, a guarded UPDATE, the launch).
    Interleaved on one task, a cancel could find a run whose claim was still in
    flight, with no supervisor yet to cancel, and return False while the task
    then ran; or cancel the row under a claim that then ran anyway (RACE-19).
    A shutdown that looked for runs while a claim was in flight would miss the
    run it launched and leave it RUNNING (RACE-11).
    """

    def __init__(self) -> None:
        self._locks: dict[str, asyncio.Lock] = {}
        #: Holders and waiters per key: a key's lock is dropped when nobody needs it.
        self._users: dict[str, int] = {}
        self._idle = asyncio.Event()
        self._idle.set()

    @contextlib.asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        lock = self._locks.setdefault(key, asyncio.Lock())
        self._users[key] = self._users.get(key, 0) + 1
        self._idle.clear()
        try:
            async with lock:
                yield
        finally:
            self._users[key] -= 1
            if not self._users[key]:
                del self._users[key], self._locks[key]
                if not self._users:
                    self._idle.set()

    async def settled(self) -> None:
        """Return once no operation holds or awaits a lock."""
        await self._idle.wait()
