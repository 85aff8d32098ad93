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
from collections.abc import Awaitable, Callable
from typing import TypeVar

from asgiref.sync import sync_to_async
from django.db import DatabaseError, InterfaceError, OperationalError, close_old_connections
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


async def recover() -> None:
    """Close the connections an error left unusable, in the thread that owns them."""
    await sync_to_async(close_old_connections, thread_sensitive=True)()


async def run(operation: Callable[[], Awaitable[T]]) -> T:
    """Await ``operation()``; after a connection error, reconnect and await it once more.

    Meant for operations that can run twice without harm: reads, guarded
    UPDATEs (a repeat changes nothing), inserts that ignore conflicts.
    """
    try:
        return await operation()
    except AVAILABILITY_ERRORS:
        await recover()
    try:
        return await operation()
    except AVAILABILITY_ERRORS as exc:
        await recover()
        raise DatabaseUnavailable(describe(exc)) from exc


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


def _probe() -> None:
    with default_connection.cursor() as cursor:
        if default_connection.vendor == "sqlite":
            # Reads succeed on a SQLite file another process holds locked; only
            # taking the write lock shows whether it can be written.
            cursor.execute("BEGIN IMMEDIATE")
            cursor.execute("ROLLBACK")
        else:
            cursor.execute("SELECT 1")


async def probe(timeout: float) -> str | None:
    """None if the database answers a write-capable probe within ``timeout``; else why not."""
    try:
        async with asyncio.timeout(timeout):
            await run(lambda: sync_to_async(_probe, thread_sensitive=True)())
    except DatabaseUnavailable as exc:
        return f"database unavailable: {exc}"
    except TimeoutError:
        return f"database unavailable: no answer within {timeout:g}s"
    except DatabaseError as exc:
        return f"database error: {describe(exc)}"
    return None
