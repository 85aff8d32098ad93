"""SQLite persistence: tasks, their fields and their event log, shared by processes.

Each runtime uses two connections (:mod:`.db`): the *writer* for every
transaction that writes, the *reader* for plain reads, so a read never
queues behind a writer waiting for the lock.

Fields live one row per field, so concurrent writers of different fields
never overwrite each other (RACE-7, EDGE-23). Writes made by a run carry its
*token*; once the run is recovered by another process the token is gone and
its writes are fenced off (SPEC, *Leases*).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from conformance.contract import TaskStatus

from .db import Pool, StorageUnavailable, Transaction, run_once

__all__ = [
    "ID_BLOCK",
    "LogEntry",
    "RunGrant",
    "RunningRow",
    "StorageUnavailable",
    "Store",
    "TaskRow",
]

T = TypeVar("T")

#: Event ids a run reserves ahead: after a crash, the next id is above every
#: id the lost run may have sent (EDGE-5), without a write per event.
ID_BLOCK = 100_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS kinds (
    model TEXT PRIMARY KEY,
    path TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS tasks (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    model TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at TEXT NOT NULL,
    started_at TEXT,
    completed_at TEXT,
    error TEXT NOT NULL DEFAULT '',
    timeout REAL,
    max_attempts INTEGER NOT NULL DEFAULT 1,
    attempt INTEGER NOT NULL DEFAULT 0,
    owner TEXT,
    run_token TEXT,
    heartbeat INTEGER NOT NULL DEFAULT 0,
    cancel_reason TEXT,
    event_floor INTEGER NOT NULL DEFAULT 0,
    terminal TEXT
);
CREATE INDEX IF NOT EXISTS tasks_by_status ON tasks (status);
CREATE TABLE IF NOT EXISTS fields (
    task_id INTEGER NOT NULL,
    name TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (task_id, name)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS events (
    task_id INTEGER NOT NULL,
    id INTEGER NOT NULL,
    type TEXT NOT NULL,
    data TEXT NOT NULL,
    at TEXT NOT NULL,
    PRIMARY KEY (task_id, id)
) WITHOUT ROWID;
"""

_FINISHED = tuple(s.value for s in TaskStatus if s.is_finished)


@dataclass(frozen=True, slots=True)
class TaskRow:
    """A task as stored, with what the coordinator needs beside its public state."""

    id: int
    model: str
    status: TaskStatus
    created_at: str
    started_at: str | None
    completed_at: str | None
    error: str
    attempt: int
    max_attempts: int
    terminal: dict[str, Any] | None
    fields: dict[str, Any]


@dataclass(frozen=True, slots=True)
class RunGrant:
    """What a start that won the task's row gets to run it with."""

    first_id: int
    attempt: int
    path: str
    timeout: float | None
    fields: dict[str, Any]


@dataclass(frozen=True, slots=True)
class RunningRow:
    """A run another process owns, as the lease scan sees it."""

    id: int
    model: str
    owner: str | None
    heartbeat: int
    token: str | None
    attempt: int
    max_attempts: int


@dataclass(frozen=True, slots=True)
class LogEntry:
    """One event waiting to be written to the event log."""

    task_id: int
    token: str
    id: int
    type: str
    data: Mapping[str, Any]
    at: str


def _dumps(value: Any) -> str:
    return json.dumps(value, default=str)


def _text(value: str) -> str:
    """Text SQLite can bind: lone surrogates (from hostile JSON) become escapes."""
    return value.encode("utf-8", "backslashreplace").decode("utf-8")


class Store:
    """The coordinator's view of the database: one method per query, all async."""

    def __init__(self, path: str, busy_timeout: float) -> None:
        self.path = path
        self._busy_ms = int(busy_timeout * 1000)
        self._pool: Pool | None = None

    @staticmethod
    def initialize(path: str) -> None:
        """Create the schema (idempotent) and switch the file to WAL, once per file."""
        conn = sqlite3.connect(path, isolation_level=None)
        try:
            conn.execute("PRAGMA busy_timeout = 10000")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.executescript(_SCHEMA)
        finally:
            conn.close()

    async def open(self) -> None:
        self._pool = Pool.acquire(self.path, self._busy_ms)
        await self._pool.writer.ready()
        await self._pool.reader.ready()

    async def close(self) -> None:
        """Let go of the connections; later calls borrow another runtime's, or open one."""
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.release()

    def _current(self) -> Pool | None:
        return self._pool or Pool.existing(self.path)

    async def _write(self, fn: Callable[..., T], *args: Any) -> T:
        pool = self._current()
        if pool is not None:
            return await pool.writer.call(fn, *args)
        return await self._once(fn, *args)

    async def _read(self, fn: Callable[..., T], *args: Any) -> T:
        pool = self._current()
        if pool is not None:
            return await pool.reader.call(fn, *args)
        return await self._once(fn, *args)

    async def _once(self, fn: Callable[..., T], *args: Any) -> T:
        """A call when no runtime of this process is open (a state read after shutdown)."""
        return await run_once(self.path, self._busy_ms, fn, *args)

    # -- tasks ------------------------------------------------------------------

    async def create_task(
        self,
        model: str,
        path: str,
        fields: Mapping[str, str],
        timeout: float | None,
        max_attempts: int,
        created_at: str,
    ) -> int:
        def create(conn: sqlite3.Connection) -> int:
            with Transaction(conn):
                conn.execute(
                    "INSERT OR IGNORE INTO kinds (model, path) VALUES (?, ?)", (model, path)
                )
                cursor = conn.execute(
                    "INSERT INTO tasks (model, status, created_at, timeout, max_attempts) "
                    "VALUES (?, 'READY', ?, ?, ?)",
                    (model, created_at, timeout, max_attempts),
                )
                task_id = int(cursor.lastrowid or 0)
                conn.executemany(
                    "INSERT INTO fields (task_id, name, value) VALUES (?, ?, ?)",
                    [(task_id, _text(name), value) for name, value in fields.items()],
                )
            return task_id

        return await self._write(create)

    async def read_task(self, task_id: int, model: str) -> TaskRow | None:
        """The task with its fields, in one snapshot; None if no such task of ``model``."""

        def read(conn: sqlite3.Connection) -> TaskRow | None:
            conn.execute("BEGIN")
            try:
                row = conn.execute(
                    "SELECT status, created_at, started_at, completed_at, error, attempt, "
                    "max_attempts, terminal FROM tasks WHERE id = ? AND model = ?",
                    (task_id, model),
                ).fetchone()
                fields = _fields(conn, task_id) if row else {}
            finally:
                conn.execute("COMMIT")
            if row is None:
                return None
            status, created, started, completed, error, attempt, max_attempts, terminal = row
            return TaskRow(
                task_id,
                model,
                TaskStatus(status),
                created,
                started,
                completed,
                error,
                attempt,
                max_attempts,
                json.loads(terminal) if terminal else None,
                fields,
            )

        return await self._read(read)

    async def begin_run(
        self,
        task_id: int,
        model: str,
        allowed: Sequence[TaskStatus],
        owner: str,
        token: str,
        started_at: str,
        *,
        only_with_attempts_left: bool = False,
    ) -> RunGrant | TaskStatus | None:
        """Claim the task for a new run if its status is in ``allowed``.

        The grant, or the status that refused it, or None for no such task.
        The single UPDATE under the write lock is what makes exactly one of
        any number of concurrent starts win, in any process (RACE-4..6).
        """

        def begin(conn: sqlite3.Connection) -> RunGrant | TaskStatus | None:
            with Transaction(conn):
                row = conn.execute(
                    "SELECT status, event_floor, attempt, max_attempts, timeout FROM tasks "
                    "WHERE id = ? AND model = ?",
                    (task_id, model),
                ).fetchone()
                if row is None:
                    return None
                status, floor, attempt, max_attempts, timeout = row
                if status not in {s.value for s in allowed}:
                    return TaskStatus(status)
                if only_with_attempts_left and attempt >= max_attempts:
                    return TaskStatus(status)
                conn.execute(
                    "UPDATE tasks SET status = 'RUNNING', started_at = ?, completed_at = NULL, "
                    "error = '', attempt = attempt + 1, owner = ?, run_token = ?, heartbeat = 0, "
                    "cancel_reason = NULL, terminal = NULL, event_floor = ? WHERE id = ?",
                    (started_at, owner, token, floor + ID_BLOCK, task_id),
                )
                path = conn.execute("SELECT path FROM kinds WHERE model = ?", (model,)).fetchone()
                return RunGrant(
                    first_id=floor + 1,
                    attempt=attempt + 1,
                    path=path[0] if path else "",
                    timeout=timeout,
                    fields=_fields(conn, task_id),
                )

        return await self._write(begin)

    async def cancel(
        self, task_id: int, model: str, owner: str, reason: str, terminal: Callable[[int], Any]
    ) -> tuple[str, dict[str, Any] | None]:
        """Cancel in the database: ``("cancelled", record)`` for a READY task, else a verdict.

        ``("local", None)``: it runs here; ``("remote", None)``: it runs
        elsewhere and its owner was asked; ``("finished"|"unknown", None)``.
        ``terminal(id)`` builds the ``cancelled`` record once its id is known.
        """

        def cancel(conn: sqlite3.Connection) -> tuple[str, dict[str, Any] | None]:
            with Transaction(conn):
                row = conn.execute(
                    "SELECT status, owner, event_floor, cancel_reason FROM tasks "
                    "WHERE id = ? AND model = ?",
                    (task_id, model),
                ).fetchone()
                if row is None:
                    return "unknown", None
                status, run_owner, floor, requested = row
                if status == TaskStatus.READY:
                    record = terminal(floor + 1)
                    _finish(conn, task_id, TaskStatus.CANCELLED, f"Cancelled: {reason}", record)
                    return "cancelled", record
                if status != TaskStatus.RUNNING:
                    return "finished", None
                if run_owner == owner:
                    return "local", None
                if requested is not None:
                    return "finished", None
                conn.execute(
                    "UPDATE tasks SET cancel_reason = ? WHERE id = ?", (_text(reason), task_id)
                )
                return "remote", None

        return await self._write(cancel)

    async def record_outcome(
        self,
        task_id: int,
        token: str,
        status: TaskStatus,
        error: str,
        record: dict[str, Any],
        pending: Sequence[LogEntry],
        log_size: int,
    ) -> bool:
        """Record how a run ended, with its unlogged events; False if the run was fenced."""

        def finish(conn: sqlite3.Connection) -> bool:
            # Clients hear of an outcome only once it is written: written
            # durably, so what a client was told survives a power cut too.
            conn.execute("PRAGMA synchronous = FULL")
            try:
                with Transaction(conn):
                    _append(conn, pending, log_size)
                    current = conn.execute(
                        "SELECT run_token, status FROM tasks WHERE id = ?", (task_id,)
                    ).fetchone()
                    if current is None or tuple(current) != (token, TaskStatus.RUNNING.value):
                        return False
                    _finish(conn, task_id, status, error, record)
                    _trim(conn, task_id, log_size)
                    return True
            finally:
                conn.execute("PRAGMA synchronous = NORMAL")

        return await self._write(finish)

    async def recover(
        self, seen: RunningRow, reason: str, terminal: Callable[[int], dict[str, Any]]
    ) -> dict[str, Any] | None:
        """Record a lost run INTERRUPTED if it is still exactly as the scan saw it."""

        def recover(conn: sqlite3.Connection) -> dict[str, Any] | None:
            with Transaction(conn):
                row = conn.execute(
                    "SELECT event_floor FROM tasks WHERE id = ? AND status = 'RUNNING' "
                    "AND owner IS ? AND heartbeat = ? AND run_token IS ?",
                    (seen.id, seen.owner, seen.heartbeat, seen.token),
                ).fetchone()
                if row is None:
                    return None
                record = terminal(row[0] + 1)
                _finish(conn, seen.id, TaskStatus.INTERRUPTED, f"Interrupted: {reason}", record)
                conn.execute("UPDATE tasks SET run_token = NULL WHERE id = ?", (seen.id,))
                return record

        return await self._write(recover)

    # -- fields -------------------------------------------------------------------

    async def write_fields(
        self, task_id: int, model: str | None, values: Mapping[str, str], token: str | None
    ) -> bool:
        """Merge fields; False if there is no such task, or ``token`` is fenced off."""

        def write(conn: sqlite3.Connection) -> bool:
            with Transaction(conn):
                if token is not None:
                    found = conn.execute(
                        "SELECT 1 FROM tasks WHERE id = ? AND run_token = ?", (task_id, token)
                    ).fetchone()
                else:
                    found = conn.execute(
                        "SELECT 1 FROM tasks WHERE id = ? AND model = ?", (task_id, model)
                    ).fetchone()
                if found is None:
                    return False
                conn.executemany(
                    "INSERT INTO fields (task_id, name, value) VALUES (?, ?, ?) "
                    "ON CONFLICT (task_id, name) DO UPDATE SET value = excluded.value",
                    [(task_id, _text(name), value) for name, value in values.items()],
                )
                return True

        return await self._write(write)

    async def read_fields(self, task_id: int) -> dict[str, Any]:
        return await self._read(_fields, task_id)

    # -- event log ------------------------------------------------------------------

    async def append_events(self, entries: Sequence[LogEntry], log_size: int) -> None:
        def append(conn: sqlite3.Connection) -> None:
            with Transaction(conn):
                _append(conn, entries, log_size)

        await self._write(append)

    async def read_events(self, task_id: int, after: int, limit: int) -> list[dict[str, Any]]:
        """The newest ``limit`` logged events with ids above ``after``, oldest first."""

        def read(conn: sqlite3.Connection) -> list[dict[str, Any]]:
            rows = conn.execute(
                "SELECT id, type, data, at FROM events WHERE task_id = ? AND id > ? "
                "ORDER BY id DESC LIMIT ?",
                (task_id, after, limit),
            ).fetchall()
            return [
                {"id": i, "type": t, "data": json.loads(d), "at": a}
                for i, t, d, a in reversed(rows)
            ]

        return await self._read(read)

    # -- leases ---------------------------------------------------------------------

    async def renew(
        self, owner: str, runs: Mapping[int, str]
    ) -> tuple[list[int], list[tuple[int, str]]]:
        """Beat the heartbeat of each of our runs; return the lost ones and cancel requests."""

        def renew(conn: sqlite3.Connection) -> tuple[list[int], list[tuple[int, str]]]:
            lost = []
            with Transaction(conn):
                for task_id, token in runs.items():
                    row = conn.execute(
                        "SELECT run_token FROM tasks WHERE id = ?", (task_id,)
                    ).fetchone()
                    if row is None or row[0] != token:
                        lost.append(task_id)
                        continue
                    conn.execute(
                        "UPDATE tasks SET heartbeat = heartbeat + 1 "
                        "WHERE id = ? AND status = 'RUNNING'",
                        (task_id,),
                    )
                requests = conn.execute(
                    "SELECT id, cancel_reason FROM tasks WHERE owner = ? AND status = 'RUNNING' "
                    "AND cancel_reason IS NOT NULL",
                    (owner,),
                ).fetchall()
            return lost, [(i, r) for i, r in requests]

        return await self._write(renew)

    async def scan(self, owner: str) -> tuple[list[RunningRow], list[RunningRow]]:
        """Runs others own, and interrupted tasks with runs left.

        It runs under the write lock on purpose: a scan that succeeds proves
        the database takes writes, so a heartbeat that did not move meanwhile
        was not kept from moving by an outage.
        """

        def scan(conn: sqlite3.Connection) -> tuple[list[RunningRow], list[RunningRow]]:
            with Transaction(conn):
                columns = "id, model, owner, heartbeat, run_token, attempt, max_attempts"
                running = conn.execute(
                    f"SELECT {columns} FROM tasks WHERE status = 'RUNNING' AND owner IS NOT ?",
                    (owner,),
                ).fetchall()
                rerun = conn.execute(
                    f"SELECT {columns} FROM tasks WHERE status = 'INTERRUPTED' "
                    "AND attempt < max_attempts"
                ).fetchall()
            return [RunningRow(*r) for r in running], [RunningRow(*r) for r in rerun]

        return await self._write(scan)

    async def finished(self, task_ids: Iterable[int]) -> dict[int, dict[str, Any]]:
        """The terminal records of those of ``task_ids`` that have finished."""
        ids = list(task_ids)

        def read(conn: sqlite3.Connection) -> dict[int, dict[str, Any]]:
            marks = ",".join("?" * len(ids))
            rows = conn.execute(
                f"SELECT id, terminal FROM tasks WHERE id IN ({marks}) "
                f"AND status IN ({','.join('?' * len(_FINISHED))}) AND terminal IS NOT NULL",
                (*ids, *_FINISHED),
            ).fetchall()
            return {i: json.loads(t) for i, t in rows}

        return await self._read(read) if ids else {}

    async def probe(self) -> None:
        """Take and release the write lock: raises StorageUnavailable if it cannot."""

        def probe(conn: sqlite3.Connection) -> None:
            with Transaction(conn):
                pass

        await self._write(probe)

    @staticmethod
    def interrupt_owned(path: str, owner: str, reason: str, at: str) -> None:
        """Record every run of ``owner`` INTERRUPTED at once, best effort: for a hard exit.

        Synchronous and short on purpose: it runs on the way out of a process
        told twice to stop, which must not wait (SHUT-11).
        """
        conn = sqlite3.connect(path, isolation_level=None, timeout=0.5)
        try:
            message = f"Interrupted: {reason}"
            conn.execute(
                "UPDATE tasks SET status = 'INTERRUPTED', completed_at = ?, error = ?, "
                "event_floor = event_floor + 1, run_token = NULL, owner = NULL, "
                "terminal = json_object('id', event_floor + 1, 'type', 'interrupted', "
                "'data', json_object('reason', ?, 'message', ?), 'at', ?) "
                "WHERE owner = ? AND status = 'RUNNING'",
                (at, message, reason, message, at, owner),
            )
        finally:
            conn.close()


def _fields(conn: sqlite3.Connection, task_id: int) -> dict[str, Any]:
    rows = conn.execute("SELECT name, value FROM fields WHERE task_id = ?", (task_id,))
    return {name: json.loads(value) for name, value in rows}


def _finish(
    conn: sqlite3.Connection, task_id: int, status: TaskStatus, error: str, record: dict[str, Any]
) -> None:
    """Set a final status with its terminal event, and log the event."""
    conn.execute(
        "UPDATE tasks SET status = ?, completed_at = ?, error = ?, terminal = ?, "
        "event_floor = ?, owner = NULL, cancel_reason = NULL WHERE id = ?",
        (status.value, record["at"], _text(error), _dumps(record), record["id"], task_id),
    )
    conn.execute(
        "INSERT OR REPLACE INTO events (task_id, id, type, data, at) VALUES (?, ?, ?, ?, ?)",
        (task_id, record["id"], record["type"], _dumps(record["data"]), record["at"]),
    )


def _append(conn: sqlite3.Connection, entries: Sequence[LogEntry], log_size: int) -> None:
    """Log events of runs still current, and keep each run's reserved ids ahead of them."""
    highest: dict[tuple[int, str], int] = {}
    for entry in entries:
        conn.execute(
            "INSERT OR IGNORE INTO events (task_id, id, type, data, at) "
            "SELECT ?, ?, ?, ?, ? WHERE EXISTS "
            "(SELECT 1 FROM tasks WHERE id = ? AND run_token = ?)",
            (
                entry.task_id,
                entry.id,
                entry.type,
                _dumps(entry.data),
                entry.at,
                entry.task_id,
                entry.token,
            ),
        )
        key = (entry.task_id, entry.token)
        highest[key] = max(highest.get(key, 0), entry.id)
    for (task_id, token), top in highest.items():
        conn.execute(
            "UPDATE tasks SET event_floor = MAX(event_floor, ?) "
            "WHERE id = ? AND run_token = ? AND status = 'RUNNING'",
            (top + ID_BLOCK, task_id, token),
        )
        _trim(conn, task_id, log_size)


def _trim(conn: sqlite3.Connection, task_id: int, log_size: int) -> None:
    conn.execute(
        "DELETE FROM events WHERE task_id = ? AND id <= "
        "(SELECT MAX(id) FROM events WHERE task_id = ?) - ?",
        (task_id, task_id, log_size),
    )
