"""The reference implementation seen through ``conformance.contract``.

Kept apart so the coordinator never learns the contract's types. The
implementation sets Django up on first use, against a database of its own
made for the session: a temporary SQLite file by default, or a new PostgreSQL
database on the server that ``DATABASE_URL`` names, dropped at the end. Server
processes it starts get the same database through their environment.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import platform
import shutil
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from asgiref.sync import sync_to_async

from conformance.contract import (
    ASGIApp,
    Behaviour,
    Budgets,
    Capability,
    Event,
    Implementation,
    Limits,
    Runtime,
    RuntimeClosed,
    RuntimeStats,
    ServerSpec,
    Subscription,
    TaskRef,
    TaskState,
    TaskStatus,
    Timings,
    UnknownTask,
    behaviour_path,
)

if TYPE_CHECKING:
    from .coordinator import Coordinator

SETTINGS_MODULE = "streaming_project.settings"

#: The coordinator's settings under the suite: short, so that a case waiting
#: for a deadline to pass is short too. Timings below states what they give.
#: Limits are off: the suites open a thousand streams from one address, and
#: start a hundred tasks at once. The OPS cases reach them through the
#: guarded app instead (GUARDED_CONFIG).
SUITE_CONFIG: Mapping[str, Any] = {
    "cancel_grace": 2.0,
    "keepalive": 1.0,
    "write_deadline": 2.0,
    "lease": 3.0,
    "max_connections_per_client": None,
    "max_subscribers_per_task": None,
    "streams_per_second": None,
    "posts_per_second": None,
}
#: The same for server processes, as the environment settings.py reads.
SUITE_ENVIRONMENT: Mapping[str, str] = {
    "STREAMING_CANCEL_GRACE": "2",
    "STREAMING_KEEPALIVE": "1",
    "STREAMING_WRITE_DEADLINE": "2",
    "STREAMING_LEASE": "3",
    "STREAMING_MAX_CONNECTIONS_PER_CLIENT": "off",
    "STREAMING_MAX_SUBSCRIBERS_PER_TASK": "off",
    "STREAMING_STREAMS_PER_SECOND": "off",
    "STREAMING_POSTS_PER_SECOND": "off",
    # A locked SQLite file (database_outage) fails a write after this many
    # seconds instead of twenty, so the outage shows within a case.
    "STREAMING_SQLITE_TIMEOUT": "3",
    # Unfinished requests are closed after this (EDGE-24), instead of a minute.
    "STREAMING_HEADER_TIMEOUT": "2",
    # What finished tasks' events may keep (Budgets.finished_events): the
    # memory cases send four times this, so a smaller budget is a cheaper case.
    "STREAMING_CLOSED_HISTORY_BYTES": str(8 * 1024 * 1024),
}


#: What the guarded app allows (the contract's Limits), small so that a case
#: reaches each limit in a few requests; one stream or command more a second.
GUARDED_LIMITS = Limits(
    streams_per_client=4,
    subscribers_per_task=2,
    stream_burst=8,
    streams_per_second=1.0,
    command_burst=10,
    commands_per_second=1.0,
)
#: The guarded app's settings: signed task tokens, and GUARDED_LIMITS. Every
#: request in progress counts towards the connections of its client, and
#: the cases hold streams only while they count them.
GUARDED_CONFIG: Mapping[str, Any] = {
    "authorization": "streaming.ops.policy.SignedTokens",
    "max_connections_per_client": GUARDED_LIMITS.streams_per_client,
    "max_subscribers_per_task": GUARDED_LIMITS.subscribers_per_task,
    "stream_burst": GUARDED_LIMITS.stream_burst,
    "streams_per_second": GUARDED_LIMITS.streams_per_second,
    "post_burst": GUARDED_LIMITS.command_burst,
    "posts_per_second": GUARDED_LIMITS.commands_per_second,
}


class ReferenceImplementation(Implementation):
    """Django models + asgineer on uvicorn: the implementation every case is built against.

    With ``REDIS_URL`` set, every runtime and server of the session shares
    events through Redis (under a prefix of the session's own), so its server
    processes are workers of one deployment and it declares ``multi_worker``.
    Without Redis the multi-worker cases are unsupported; under ``CI=true`` a
    ``REDIS_URL`` that does not answer is an error, not a skip.
    """

    name = "reference"
    version = "0.3.0"
    contract_version = "2.2"
    capabilities = frozenset(
        {
            Capability.HTTP,
            Capability.PROCESS,
            Capability.PERSISTENCE,
            Capability.RESUME,
            Capability.CANCEL,
            Capability.TIMEOUTS,
            Capability.SIGNALS,
            Capability.RETRY,
            Capability.RECOVERY,
            Capability.FAULT_INJECTION,
            Capability.AUTHORIZATION,
            Capability.RATE_LIMITS,
            Capability.METRICS,
            Capability.READINESS,
        }
    )
    limits = GUARDED_LIMITS
    expected_failures: Mapping[str, str] = {}
    # A lost run is found within a lease plus a keeper period (3 + 1 s); the
    # rest is room for the database's clock against the process's.
    timings = Timings(
        keepalive=1.0, write_deadline=2.0, cancel_grace=2.0, orphan_timeout=6.0, header_timeout=2.0
    )
    #: The server's default (settings STREAMING_HEADER_BYTES).
    max_header_bytes = 64 * 1024
    budgets = Budgets(finished_events=8 * 1024 * 1024)

    def __init__(self) -> None:
        self.redis_url = _reachable_redis(os.environ.get("REDIS_URL", ""))
        self.redis_prefix = f"conformance-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        if self.redis_url:
            self.capabilities = self.capabilities | {Capability.MULTI_WORKER}

    def _config(self) -> dict[str, Any]:
        redis = {"redis_url": self.redis_url or None, "redis_prefix": self.redis_prefix}
        return {**SUITE_CONFIG, **redis}

    async def start(self) -> Runtime:
        await sync_to_async(setup_django, thread_sensitive=True)()
        from .coordinator import Coordinator

        coordinator = Coordinator(**self._config())
        await coordinator.started()
        return ReferenceRuntime(coordinator)

    def credentials_for(self, ref: TaskRef, action: str) -> Mapping[str, str]:
        """A signed task token for ``action`` on ``ref`` only (ops.policy.SignedTokens)."""
        setup_django()
        from .ops.policy import task_token

        return {"authorization": f"Bearer {task_token(ref.model, ref.id, [action])}"}

    def server_command(self, host: str, port: int, *, grace: float = 5.0) -> ServerSpec:
        database_url = setup_django()
        return ServerSpec(
            argv=[
                sys.executable,
                "-m",
                "django",
                "runserver_stream",
                "--host",
                host,
                "--port",
                str(port),
                "--log-level",
                "warning",
                "--grace",
                str(grace),
            ],
            env={
                "DATABASE_URL": database_url,
                "DJANGO_SETTINGS_MODULE": SETTINGS_MODULE,
                "PYTHONPATH": _import_path(),
                "STREAMING_REDIS_URL": self.redis_url,
                "STREAMING_REDIS_PREFIX": self.redis_prefix,
                **SUITE_ENVIRONMENT,
            },
        )

    @contextlib.asynccontextmanager
    async def database_outage(self) -> AsyncIterator[None]:
        """PostgreSQL refuses connections and ends every session; SQLite is held locked."""
        url = setup_django()
        if _admin_url is None:
            # SQLite: a write lock nobody else can wait out (reads still work),
            # held by a process of its own. In this one, SQLite would keep the
            # file open after the holder closes (POSIX locks are per process).
            holder = await asyncio.create_subprocess_exec(
                sys.executable,
                "-c",
                _HOLD_SQLITE_LOCK,
                url.removeprefix("sqlite:///"),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
            )
            assert holder.stdin is not None and holder.stdout is not None
            try:
                assert await holder.stdout.readline() == b"locked\n", "the lock was not taken"
                yield
            finally:
                holder.stdin.close()
                await holder.wait()
            return
        name = url.rpartition("/")[2]
        await sync_to_async(_postgres_admin)(name, allow_connections=False)
        try:
            yield
        finally:
            await sync_to_async(_postgres_admin)(name, allow_connections=True)

    async def drop_database_connections(self) -> bool:
        url = setup_django()
        if _admin_url is None:
            return False  # SQLite: no server, no sessions to end
        await sync_to_async(_postgres_admin)(url.rpartition("/")[2])
        return True

    def environment(self) -> Mapping[str, str]:
        import django

        url = os.environ.get("DATABASE_URL", "")
        bus = " + Redis" if self.redis_url else ""
        return {
            "stack": f"Django {django.get_version()}{bus}",
            "database": "postgresql" if url.startswith("postgres") else "sqlite",
            "platform": f"{platform.system()}-{platform.machine()}",
        }

    def close(self) -> None:
        teardown_django()
        if self.redis_url:
            _forget_redis_keys(self.redis_url, self.redis_prefix)


#: Takes SQLite's write lock on the file named by argv[1] until stdin closes.
_HOLD_SQLITE_LOCK = """
import sqlite3, sys
holder = sqlite3.connect(sys.argv[1], isolation_level=None)
holder.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
sys.stdin.read()
holder.execute("ROLLBACK")
"""


def _reachable_redis(url: str) -> str:
    """``url`` if a Redis answers there; '' if none is configured, or none answers off CI."""
    if not url:
        return ""
    import redis

    try:
        with redis.Redis.from_url(url, socket_connect_timeout=2) as client:
            client.ping()
    except redis.RedisError as exc:
        if os.environ.get("CI") == "true":
            raise RuntimeError(f"REDIS_URL={url} does not answer ({exc}); CI needs it.") from exc
        return ""
    return url


def _forget_redis_keys(url: str, prefix: str) -> None:
    """Delete what the session left in Redis: its streams, under its own prefix."""
    import redis

    with redis.Redis.from_url(url) as client:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        if keys:
            client.delete(*keys)


def _import_path() -> str:
    """PYTHONPATH for a server process: the same reference and suite code as this session.

    Whatever this process imported them from (an installed copy, a checkout
    on PYTHONPATH, a mutation tool's copy), the server imports too.
    """
    import conformance

    from . import __file__ as package

    here = [str(Path(package).resolve().parents[1]), str(Path(conformance.__file__).parents[1])]
    inherited = os.environ.get("PYTHONPATH", "")
    return os.pathsep.join(dict.fromkeys([*here, *filter(None, inherited.split(os.pathsep))]))


def _postgres_admin(name: str, *, allow_connections: bool | None = None) -> None:
    """Change whether database ``name`` takes connections, or else end its sessions.

    Run on a connection to the server's maintenance database: the session
    database's own connections are the ones being ended.
    """
    import psycopg

    assert _admin_url is not None
    with psycopg.connect(_admin_url, autocommit=True) as admin:
        if allow_connections is not None:
            admin.execute(
                f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS {str(allow_connections).lower()}'
            )
        if not allow_connections:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()",
                (name,),
            )


#: The session's database: set up once per process, whichever instance asks first.
_database_url: str | None = None
#: The PostgreSQL server's URL the session database was made on (None: SQLite).
_admin_url: str | None = None
_cleanup: list[Callable[[], None]] = []


def setup_django() -> str:
    """Point Django at a database made for this process, migrate it; return its URL.

    Idempotent: Django is configured once per process, so every instance of
    the implementation (the plugin's, a test's own) shares this database.
    """
    global _database_url, _admin_url
    if _database_url is not None:
        return _database_url
    import django

    base = os.environ.get("DATABASE_URL", "")
    if base.startswith(("postgres://", "postgresql://")):
        url = _create_postgres_database(base, _cleanup)
        _admin_url = base
    else:
        directory = tempfile.mkdtemp(prefix="conformance-")
        _cleanup.append(lambda: shutil.rmtree(directory, ignore_errors=True))
        url = f"sqlite:///{directory}/reference.sqlite3"
    os.environ["DATABASE_URL"] = url
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", SETTINGS_MODULE)
    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0, interactive=False)
    _database_url = url
    return url


def teardown_django() -> None:
    """Drop what :func:`setup_django` made (the test database); idempotent."""
    global _database_url, _admin_url
    if _database_url is None:
        return
    from django.db import connections

    connections.close_all()
    while _cleanup:
        _cleanup.pop()()
    _database_url = _admin_url = None


def _create_postgres_database(base_url: str, cleanup: list[Callable[[], None]]) -> str:
    import psycopg

    name = f"conformance_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    prefix, _, _ = base_url.rpartition("/")
    with psycopg.connect(base_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        with psycopg.connect(base_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    cleanup.append(drop)
    return f"{prefix}/{name}"


class ReferenceSubscription(Subscription):
    """A hub subscriber as contract events.

    A plain iterator, not an async generator: cancelling a pending ``anext()``
    (``asyncio.wait_for`` around it) must leave the subscription usable, and
    an async generator is closed for good by the CancelledError thrown into it.
    """

    def __init__(self, subscriber: Any | None) -> None:
        #: None: a resume from the end of a finished task, which has nothing to send.
        self._subscriber = subscriber

    def __aiter__(self) -> ReferenceSubscription:
        return self

    async def __anext__(self) -> Event:
        if self._subscriber is None:
            raise StopAsyncIteration
        event = (await self._subscriber.get()).event
        return Event(
            id=event.id,
            type=event.type,
            data=dict(event.data),
            task_id=str(event.task_id),
            model=event.model,
            timestamp=event.timestamp,
        )

    async def aclose(self) -> None:
        if self._subscriber is not None:
            self._subscriber.close()


class ReferenceRuntime(Runtime):
    def __init__(self, coordinator: Coordinator) -> None:
        self.coordinator = coordinator
        self._app: ASGIApp | None = None
        self._guarded: ASGIApp | None = None

    async def create_task(
        self,
        kind: Behaviour | str,
        fields: Mapping[str, Any] | None = None,
        *,
        timeout: float | None = None,
        max_attempts: int | None = None,
    ) -> TaskRef:
        from . import db
        from .models import BehaviourTask

        limits = {"timeout_seconds": timeout, "max_attempts": max_attempts}
        if callable(kind):
            path = behaviour_path(kind)
            task = await db.run(
                lambda: BehaviourTask.objects.acreate(
                    behaviour=path, fields=dict(fields or {}), **limits
                )
            )
        else:
            model = _model(kind)
            task = await db.run(lambda: model._default_manager.acreate(**(fields or {}), **limits))
        return TaskRef(type(task).__name__, str(task.pk))

    async def start_task(self, ref: TaskRef) -> bool:
        with _contract_errors():
            return await self.coordinator.start_task(ref.model, _pk(ref))

    async def retry_task(self, ref: TaskRef) -> bool:
        with _contract_errors():
            return await self.coordinator.retry_task(ref.model, _pk(ref))

    async def cancel_task(self, ref: TaskRef, reason: str | None = None) -> bool:
        from .errors import UnknownTask as ReferenceUnknownTask

        try:
            return await self.coordinator.cancel_task(ref.model, _pk(ref), reason)
        except ReferenceUnknownTask:
            return False  # the contract: nothing to cancel

    async def get_state(self, ref: TaskRef) -> TaskState:
        from . import db

        model = _model(ref.model)
        task = await db.run(lambda: model._default_manager.filter(pk=_pk(ref)).afirst())
        if task is None:
            raise UnknownTask(f"{ref} does not exist.")
        fields = getattr(task, "fields", None)
        if not isinstance(fields, dict):
            fields = {f.name: getattr(task, f.name) for f in model._meta.concrete_fields}
        return TaskState(
            status=TaskStatus(task.status),
            created_at=_iso(task.created_at),
            started_at=_iso(task.started_at),
            completed_at=_iso(task.completed_at),
            error=task.error,
            fields=fields,
            attempt=task.attempt,
        )

    async def write_fields(self, ref: TaskRef, **fields: Any) -> None:
        from . import db
        from .models import BehaviourTask

        model = _model(ref.model)
        if model is BehaviourTask:
            merge = sync_to_async(BehaviourTask.merge_fields, thread_sensitive=True)
            await db.run(lambda: merge(_pk(ref), fields))
        elif not await db.run(lambda: model._default_manager.filter(pk=_pk(ref)).aupdate(**fields)):
            raise UnknownTask(f"{ref} does not exist.")

    async def subscribe(self, ref: TaskRef, *, last_event_id: int | None = None) -> Subscription:
        from .errors import NothingMissed

        with _contract_errors():
            try:
                subscriber = await self.coordinator.subscribe(
                    ref.model, _pk(ref), last_event_id=last_event_id
                )
            except NothingMissed:
                subscriber = None
        return ReferenceSubscription(subscriber)

    def asgi_app(self) -> ASGIApp:
        if self._app is None:
            from .server import make_app

            self._app = make_app(self.coordinator)
        return self._app

    def guarded_asgi_app(self) -> ASGIApp:
        if self._guarded is None:
            from .server import make_app

            config = dataclasses.replace(self.coordinator.config, **GUARDED_CONFIG)
            self._guarded = make_app(self.coordinator, config=config)
        return self._guarded

    def stats(self) -> RuntimeStats:
        counts = self.coordinator.stats()
        return RuntimeStats(counts["running_tasks"], counts["subscribers"], counts["topics"])

    async def shutdown(self, grace: float = 5.0) -> None:
        await self.coordinator.shutdown(grace)


@contextlib.contextmanager
def _contract_errors() -> Iterator[None]:
    """Raise the reference's refusals as the contract's (imported late: they need Django)."""
    from .errors import CoordinatorClosed
    from .errors import UnknownTask as ReferenceUnknownTask

    try:
        yield
    except ReferenceUnknownTask as exc:
        raise UnknownTask(str(exc)) from None
    except CoordinatorClosed as exc:
        raise RuntimeClosed(str(exc)) from None


def _model(name: str) -> Any:
    from .kinds import resolve_model

    with _contract_errors():
        return resolve_model(name)


def _pk(ref: TaskRef) -> int:
    try:
        return int(ref.id)
    except ValueError:
        raise UnknownTask(f"{ref}: task ids are integers.") from None


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None
