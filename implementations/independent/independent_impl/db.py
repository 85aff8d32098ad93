"""SQLite connections: a thread per connection, shared by the runtimes of a process.

sqlite3 blocks, so each connection lives on a thread of its own and the event
loop only awaits its results; calls on one connection run in order. Every
runtime and server process of a session opens the same file: WAL lets
readers go on while one writer commits, and a busy timeout makes a writer
wait for the lock instead of failing at the first contention.

A call that cannot get the lock within the busy timeout fails with
:class:`StorageUnavailable`. After one such failure a connection waits only
briefly until a call succeeds again: while another process holds the lock
(``Implementation.database_outage()``) calls fail fast instead of piling up
behind each other (EDGE-11), and the first call after the outage restores
the full timeout.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

__all__ = ["Pool", "StorageUnavailable", "Transaction", "connect", "run_once"]

T = TypeVar("T")

#: Milliseconds a call waits for the lock while the database is known to be away.
_FAST_BUSY_MS = 100


class StorageUnavailable(Exception):
    """The database refused a call (locked past the busy timeout, or gone)."""


class Transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT``, rolled back on any exception."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self._conn.execute("BEGIN IMMEDIATE")
        return self._conn

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self._conn.execute("COMMIT")
        elif self._conn.in_transaction:
            self._conn.execute("ROLLBACK")


def connect(path: str, busy_ms: int) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout = {busy_ms}")
    conn.execute("PRAGMA synchronous = NORMAL")
    return conn


class _Worker:
    """One connection and the one thread that uses it; calls run in order."""

    def __init__(self, path: str, name: str, busy_ms: int) -> None:
        self._busy_ms = busy_ms
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self._conn: sqlite3.Connection | None = None
        self._degraded = False
        # The first job opens the connection; every call queues behind it.
        self._opened = self._executor.submit(self._open, path)

    def _open(self, path: str) -> None:
        self._conn = connect(path, self._busy_ms)

    async def ready(self) -> None:
        await asyncio.wrap_future(self._opened)

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._run, fn, args)

    def _run(self, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        conn = self._conn
        if conn is None:
            raise StorageUnavailable("The database is unavailable: it could not be opened.")
        if self._degraded:
            conn.execute(f"PRAGMA busy_timeout = {_FAST_BUSY_MS}")
        try:
            result = fn(conn, *args)
        except sqlite3.OperationalError as exc:
            self._degraded = True
            raise StorageUnavailable(f"The database is unavailable: {exc}.") from None
        if self._degraded:
            self._degraded = False
            conn.execute(f"PRAGMA busy_timeout = {self._busy_ms}")
        return result

    def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    async def close(self) -> None:
        closed = self._executor.submit(self._close)
        self._executor.shutdown(wait=False)
        await asyncio.wrap_future(closed)


class Pool:
    """The two connections of this process to one file, shared by all its runtimes.

    POSIX locks belong to a process, not a connection, so SQLite cannot close
    a connection's file descriptor while another connection of the same
    process holds a lock on that file: it keeps the descriptor until the last
    one closes. Runtimes that each opened and closed connections of their own
    would leave descriptors behind; sharing one pair per process opens none.
    """

    #: The process-wide registry, by file.
    _open: dict[str, Pool] = {}

    def __init__(self, path: str, busy_ms: int) -> None:
        self.path = path
        self.writer = _Worker(path, "independent-db-writer", busy_ms)
        self.reader = _Worker(path, "independent-db-reader", busy_ms)
        self.users = 0

    @classmethod
    def acquire(cls, path: str, busy_ms: int) -> Pool:
        pool = cls._open.get(path)
        if pool is None:
            pool = cls._open[path] = cls(path, busy_ms)
        pool.users += 1
        return pool

    @classmethod
    def existing(cls, path: str) -> Pool | None:
        return cls._open.get(path)

    async def release(self) -> None:
        self.users -= 1
        if self.users > 0:
            return
        if self._open.get(self.path) is self:
            del self._open[self.path]
        await self.writer.close()
        await self.reader.close()


async def run_once(path: str, busy_ms: int, fn: Callable[..., T], *args: Any) -> T:
    """``fn(connection, *args)`` on a connection of its own, opened and closed around it."""

    def run() -> T:
        conn = connect(path, busy_ms)
        try:
            return fn(conn, *args)
        except sqlite3.OperationalError as exc:
            raise StorageUnavailable(f"The database is unavailable: {exc}.") from None
        finally:
            conn.close()

    return await asyncio.get_running_loop().run_in_executor(None, run)
