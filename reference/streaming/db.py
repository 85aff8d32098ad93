"""Database calls that survive a dropped connection, and the database's health.

Django closes broken connections at the edges of a request
(``close_old_connections``); a streaming server never goes through that
cycle, so one connection dropped by the database (a restart, a terminated
backend) would fail every later query. :func:`run` closes a connection that
an error left unusable and tries once more, so the next call reconnects; if
that fails too, the database is unavailable and the caller gets
:class:`DatabaseUnavailable`, which the server answers with 503.

All ORM calls run in the one thread ``sync_to_async`` keeps for them, which
owns the connections: recovery runs there too.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import TypeVar

from asgiref.sync import sync_to_async
from django.db import DatabaseError, InterfaceError, OperationalError, connections
from django.db import connection as default_connection

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Errors that say the database cannot be reached or used right now, not that a
#: query was wrong: a refused or dropped connection, a locked SQLite file.
AVAILABILITY_ERRORS = (OperationalError, InterfaceError)


class DatabaseUnavailable(RuntimeError):
    """The database cannot be used right now; the call may succeed later."""


def describe(exc: BaseException) -> str:
    """One line on what went wrong, for a 503 body or a log line."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:300]


#: Seconds calls fail at once after the database was found unavailable, before
#: one is let through to see whether it is back.
COOL_DOWN = 1.0


class _Breaker:
    """Fails calls at once while the database is known to be away.

    Every ORM call runs in one thread, so without it each call would wait
    out the database's own timeouts (a SQLite busy timeout, a connect
    timeout) one after another, and a request that could be told 503 at
    once would wait for all of them.
    """

    def __init__(self) -> None:
        self.open_until = 0.0
        self.error = ""

    def check(self) -> None:
        if time.monotonic() < self.open_until:
            raise DatabaseUnavailable(self.error)

    def trip(self, error: str) -> None:
        self.error = error
        self.open_until = time.monotonic() + COOL_DOWN

    def reset(self) -> None:
        self.open_until = 0.0


_breaker = _Breaker()


def _recover() -> bool:
    """Close the connections an error left unusable; whether a second try may succeed.

    It may on a database server, whose failed session is now closed or found
    to work again (a new session is opened at the next use). On SQLite the
    error is a lock or the file itself, and trying again at once would only
    wait out the same busy timeout a second time.
    """
    retry = False
    for connection in connections.all(initialized_only=True):
        # Not close_if_unusable_or_obsolete(): a failed transaction's rollback
        # clears the flag it goes by, and can leave a dead connection looking fine.
        if connection.connection is not None and not connection.is_usable():
            connection.close()
        retry |= connection.vendor != "sqlite"
    return retry


async def recover() -> bool:
    """:func:`_recover`, in the thread that owns the connections."""
    return await sync_to_async(_recover, thread_sensitive=True)()


async def listed(rows: Iterable[T]) -> list[T]:
    """Evaluate ``rows`` (a queryset) in the ORM's thread, as sync_to_async runs the ORM."""

    def evaluate() -> list[T]:
        return list(rows)

    return await sync_to_async(evaluate, thread_sensitive=True)()


async def run(operation: Callable[[], Awaitable[T]]) -> T:
    """Await ``operation()``; after a dropped connection, reconnect and await it once more.

    Meant for operations that can run twice without harm: reads, guarded
    UPDATEs (a repeat changes nothing), inserts that ignore conflicts. While
    the database is known to be away (see :class:`_Breaker`) it raises
    :class:`DatabaseUnavailable` without trying.
    """
    _breaker.check()
    try:
        result = await operation()
    except AVAILABILITY_ERRORS as exc:
        failure: BaseException = exc
        if await recover():
            try:
                result = await operation()
            except AVAILABILITY_ERRORS as again:
                failure = again
            else:
                _breaker.reset()
                return result
        await recover()
        _breaker.trip(describe(failure))
        raise DatabaseUnavailable(describe(failure)) from failure
    _breaker.reset()
    return result


async def run_until_available(
    operation: Callable[[], Awaitable[T]],
    *,
    what: str,
    keep_trying: Callable[[], bool] = lambda: True,
    first_delay: float = 0.1,
    max_delay: float = 5.0,
) -> T:
    """:func:`run` ``operation`` until the database takes it, waiting longer each time.

    For writes that must not be lost, such as how a run ended. Gives up, with
    the last :class:`DatabaseUnavailable`, once ``keep_trying()`` is false.
    """
    delay = first_delay
    logged = False
    while True:
        try:
            result = await run(operation)
        except DatabaseUnavailable as exc:
            if not keep_trying():
                raise
            if not logged:
                logger.warning("%s: database unavailable (%s); retrying", what, exc)
                logged = True
            await asyncio.sleep(delay)  # back off while the database is away
            delay = min(delay * 2, max_delay)
            continue
        if logged:
            logger.info("%s: done once the database was back", what)
        return result


async def aside(function: Callable[[], T]) -> T:
    """Run sync ORM code in a thread and on a connection of its own, closed after.

    For a slow read (a scrape's counts) that must not hold the one thread
    every other ORM call waits behind. Raises :class:`DatabaseUnavailable`
    as :func:`run` does, without retrying.
    """

    def call() -> T:
        try:
            return function()
        finally:
            connections.close_all()  # this thread's connections only

    try:
        return await asyncio.to_thread(call)
    except AVAILABILITY_ERRORS as exc:
        raise DatabaseUnavailable(describe(exc)) from exc


def _probe() -> None:
    with default_connection.cursor() as cursor:
        if default_connection.vendor == "sqlite":
            # Reads succeed on a SQLite file another process holds locked; only
            # taking the write lock shows whether it can be written.
            cursor.execute("BEGIN IMMEDIATE")
            cursor.execute("ROLLBACK")
        else:
            cursor.execute("SELECT 1")


async def check() -> None:
    """Raise :class:`DatabaseUnavailable` unless the database could take a write now."""
    await run(lambda: sync_to_async(_probe, thread_sensitive=True)())


async def probe(timeout: float) -> str | None:
    """None if the database answers :func:`check` within ``timeout``; else why not."""
    try:
        async with asyncio.timeout(timeout):
            await check()
    except DatabaseUnavailable as exc:
        return f"database unavailable: {exc}"
    except TimeoutError:
        return f"database unavailable: no answer within {timeout:g}s"
    except DatabaseError as exc:
        return f"database error: {describe(exc)}"
    return None
