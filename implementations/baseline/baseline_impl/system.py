"""The seed's coordinator, as seed 000 describes it before any fix.

A task kind's ``process()`` sends events with ``send_event``; every client of
the task is an unbounded ``asyncio.Queue`` in the task's ``_clients``; the
task keeps its ``_latest_data`` for a client that joins late. The
coordinator keeps running tasks in ``_task_instances`` by key, starts each as
a bare asyncio task, and forgets it when ``process()`` ends.

What it lacks is deliberate, and is what the conformance suite must catch:
no cancel API, no timeouts, no shutdown handling, no event ids, no status
column (a task is READY, running in memory, or has a ``completed_at``), no
record of a failure, no final event kept for a client that comes later, and
fields saved whole, so two writers lose each other's updates.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import sqlite3
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from conformance.contract import Behaviour, TaskContext, resolve_behaviour

TERMINAL = ("complete", "error")


def now_iso() -> str:
    return datetime.now(UTC).isoformat()


class Store:
    """Task rows in a SQLite file: kind, fields (JSON), created and completed times."""

    def __init__(self, path: Path) -> None:
        self.path = path
        # One thread and one connection, as the seed's ORM calls had (Django
        # runs them all in one thread): the calls wait in line, off the loop.
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="baseline-db")
        self._db: sqlite3.Connection | None = None

    def _connection(self) -> sqlite3.Connection:
        if self._db is None:
            self._db = sqlite3.connect(self.path, timeout=20, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS task (id INTEGER PRIMARY KEY, behaviour TEXT, "
                "fields TEXT, created_at TEXT, completed_at TEXT)"
            )
        return self._db

    async def call(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        def run() -> list[tuple[Any, ...]]:
            cursor = self._connection().execute(sql, params)
            rows = cursor.fetchall()
            if cursor.lastrowid and sql.startswith("INSERT"):
                return [(cursor.lastrowid,)]
            return rows

        return await asyncio.get_running_loop().run_in_executor(self._thread, run)

    def close(self) -> None:
        def close_connection() -> None:
            if self._db is not None:
                self._db.close()
                self._db = None

        self._thread.submit(close_connection).result()
        self._thread.shutdown()

    async def create(self, behaviour: str, fields: Mapping[str, Any]) -> int:
        [(pk,)] = await self.call(
            "INSERT INTO task (behaviour, fields, created_at) VALUES (?, ?, ?)",
            behaviour,
            json.dumps(dict(fields)),
            now_iso(),
        )
        return int(pk)

    async def row(self, pk: int) -> tuple[str, dict[str, Any], str, str | None] | None:
        rows = await self.call(
            "SELECT behaviour, fields, created_at, completed_at FROM task WHERE id = ?", pk
        )
        if not rows:
            return None
        behaviour, fields, created, completed = rows[0]
        return behaviour, json.loads(fields), created, completed

    async def save_fields(self, pk: int, fields: Mapping[str, Any]) -> None:
        # The whole object, as the seed's asave() did: a concurrent writer's
        # fields are overwritten.
        await self.call("UPDATE task SET fields = ? WHERE id = ?", json.dumps(dict(fields)), pk)

    async def complete(self, pk: int) -> None:
        await self.call("UPDATE task SET completed_at = ? WHERE id = ?", now_iso(), pk)


class StreamTask:
    """One task as the seed's model instance saw it: its clients and its latest event."""

    MODEL = "StreamTask"

    def __init__(self, store: Store, pk: int, behaviour: Behaviour, fields: dict[str, Any]) -> None:
        self.store = store
        self.pk = pk
        self.behaviour = behaviour
        self.fields = fields
        self._clients: set[asyncio.Queue[dict[str, Any]]] = set()
        self._latest_data: dict[str, Any] | None = None

    async def add_client(self, queue: asyncio.Queue[dict[str, Any]]) -> None:
        self._clients.add(queue)
        if self._latest_data is not None:
            await queue.put(self._latest_data)

    async def remove_client(self, queue: asyncio.Queue[dict[str, Any]]) -> None:
        self._clients.discard(queue)

    async def send_event(self, type: str, data: Mapping[str, Any] | None = None) -> None:
        event = {
            "type": type,
            "data": {
                **(data or {}),
                "_task_id": self.pk,
                "_model": self.MODEL,
                "_timestamp": now_iso(),
            },
        }
        self._latest_data = event
        for queue in list(self._clients):
            await queue.put(event)

    async def process(self) -> Mapping[str, Any] | None:
        return await self.behaviour(_Context(self))


class _Context(TaskContext):
    def __init__(self, task: StreamTask) -> None:
        self._task = task

    @property
    def task_id(self) -> str:
        return str(self._task.pk)

    @property
    def fields(self) -> Mapping[str, Any]:
        return self._task.fields

    async def send_event(self, type: str, data: Mapping[str, Any] | None = None) -> None:
        await self._task.send_event(type, data)

    async def read_fields(self) -> Mapping[str, Any]:
        row = await self._task.store.row(self._task.pk)
        assert row is not None
        self._task.fields = row[1]
        return self._task.fields

    async def write_fields(self, **changes: Any) -> None:
        self._task.fields = {**self._task.fields, **changes}
        await self._task.store.save_fields(self._task.pk, self._task.fields)


class TaskCoordinator:
    """Runs tasks by key; nothing stops one once it has started."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._task_instances: dict[str, StreamTask] = {}
        #: Every task ever loaded, so its clients and its latest event are found
        #: again; never emptied (the seed's memory did not shrink either).
        self._loaded: dict[str, StreamTask] = {}
        self._runners: set[asyncio.Task[None]] = set()
        self._names = itertools.count(1)

    @staticmethod
    def get_task_key(model: str, pk: int) -> str:
        return f"{model}:{pk}"

    async def load(self, pk: int) -> StreamTask | None:
        """The instance of task ``pk`` this process knows, or a new one from its row."""
        key = self.get_task_key(StreamTask.MODEL, pk)
        if key in self._loaded:
            return self._loaded[key]
        row = await self.store.row(pk)
        if row is None:
            return None
        behaviour, fields, _, _ = row
        return self._loaded.setdefault(
            key, StreamTask(self.store, pk, resolve_behaviour(behaviour), fields)
        )

    async def start_task(self, task: StreamTask) -> bool:
        key = self.get_task_key(StreamTask.MODEL, task.pk)
        if key in self._task_instances:
            return False
        self._task_instances[key] = task
        runner = asyncio.create_task(self._run(key, task), name=f"Task-{next(self._names)}")
        self._runners.add(runner)
        runner.add_done_callback(self._runners.discard)
        return True

    async def _run(self, key: str, task: StreamTask) -> None:
        try:
            result = await task.process()
        except Exception as exc:
            await task.send_event("error", {"error_type": type(exc).__name__, "message": str(exc)})
        else:
            await task.store.complete(task.pk)
            await task.send_event(
                "complete", {"message": "Task completed successfully", **(result or {})}
            )
        finally:
            del self._task_instances[key]
