"""django-eventstream seen through ``conformance.contract``.

The runtime is the glue's runner (tasks) plus the library's stream view
(events). An in-process subscription is a client of that view: it calls
the Django ASGI application in this process, as a socket would, and reads
the library's SSE frames. So every client, in process or over HTTP, sees
what the library sends.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import shutil
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from conformance.contract import (
    FAREWELL_EVENT,
    ASGIApp,
    Behaviour,
    Capability,
    Event,
    Implementation,
    Runtime,
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

from .runner import MODEL, Runner, db, merge_fields, set_current_runner

SETTINGS_MODULE = "eventstream_impl.settings"

#: The runner's cancel grace under the suite, in seconds.
CANCEL_GRACE = 1.0

#: Frames that end a client's reading: it leaves, as a page would close its EventSource.
_ENDING = {"complete", "error", "cancelled", "timeout", "interrupted", FAREWELL_EVENT}


class EventstreamImplementation(Implementation):
    """django-eventstream 5.3.4's view and storage, with the glue's task runner."""

    name = "eventstream"
    version = "5.3.4"
    contract_version = "2.2"
    capabilities = frozenset(
        {
            Capability.HTTP,
            Capability.PERSISTENCE,
            Capability.RESUME,
            Capability.CANCEL,
            Capability.TIMEOUTS,
            Capability.PROCESS,
        }
    )
    # The library sends a keep-alive every 20 s (views.stream: asyncio.wait timeout=20),
    # fixed in its code. It keeps no write deadline (EDGE-17 fails): 2 s is only how long
    # the suite waits before it judges. Request heads: uvicorn's, left at the default.
    timings = Timings(keepalive=20.0, write_deadline=2.0, cancel_grace=CANCEL_GRACE)

    def __init__(self) -> None:
        from .expected import EXPECTED_FAILURES, RACY_FAILURES

        self.expected_failures = EXPECTED_FAILURES
        self.racy_failures = RACY_FAILURES

    async def start(self) -> Runtime:
        await db(setup_django)
        runner = Runner(CANCEL_GRACE)
        set_current_runner(runner)
        await db(_touch)  # the glue's connection is opened now, not during a case
        return EventstreamRuntime(runner, self.client_queue_size)

    def server_command(self, host: str, port: int, *, grace: float = 5.0) -> ServerSpec:
        database = setup_django()
        return ServerSpec(
            argv=[
                sys.executable,
                "-m",
                "uvicorn",
                "eventstream_impl.asgi:application",
                "--host",
                host,
                "--port",
                str(port),
                "--lifespan",
                "off",
                "--log-level",
                "warning",
            ],
            env={
                "DJANGO_SETTINGS_MODULE": SETTINGS_MODULE,
                "EVENTSTREAM_IMPL_DB": database,
                "PYTHONPATH": _import_path(),
            },
        )

    def environment(self) -> Mapping[str, str]:
        import django
        import uvicorn

        return {
            "stack": f"django-eventstream 5.3.4, Django {django.get_version()}, "
            f"uvicorn {uvicorn.__version__}",
            "database": "sqlite",
            "platform": f"{platform.system()}-{platform.machine()}",
        }

    def close(self) -> None:
        teardown_django()


def _touch() -> None:
    from .models import Task

    Task.objects.exists()


class EventstreamRuntime(Runtime):
    def __init__(self, runner: Runner, queue_size: int) -> None:
        from .asgi import application

        self.runner = runner
        self.app: ASGIApp = application
        self.queue_size = queue_size
        #: In-process clients still open: the runtime's own, closed at its shutdown.
        self.subscriptions: set[StreamSubscription] = set()

    async def create_task(
        self,
        kind: Behaviour,
        fields: Mapping[str, Any] | None = None,
        *,
        timeout: float | None = None,
        max_attempts: int | None = None,
    ) -> TaskRef:
        from .models import Task

        path = behaviour_path(kind)
        task = await db(
            Task.objects.create, behaviour=path, fields=dict(fields or {}), timeout_seconds=timeout
        )
        return TaskRef(MODEL, str(task.pk))

    async def start_task(self, ref: TaskRef) -> bool:
        from .models import Task

        try:
            return await self.runner.start(_pk(ref))
        except Task.DoesNotExist:
            raise UnknownTask(f"{ref} does not exist.") from None

    async def cancel_task(self, ref: TaskRef, reason: str | None = None) -> bool:
        try:
            pk = _pk(ref)
        except UnknownTask:
            return False
        return await self.runner.cancel(pk, reason)

    async def get_state(self, ref: TaskRef) -> TaskState:
        from .models import Task

        task = await db(Task.objects.filter(pk=_pk(ref)).first)
        if task is None:
            raise UnknownTask(f"{ref} does not exist.")
        return TaskState(
            status=TaskStatus(task.status),
            created_at=_iso(task.created_at),
            started_at=_iso(task.started_at),
            completed_at=_iso(task.completed_at),
            error=task.error,
            fields=dict(task.fields),
            attempt=task.attempt,
        )

    async def write_fields(self, ref: TaskRef, **fields: Any) -> None:
        from .models import Task

        try:
            await db(merge_fields, _pk(ref), fields)
        except Task.DoesNotExist:
            raise UnknownTask(f"{ref} does not exist.") from None

    async def subscribe(self, ref: TaskRef, *, last_event_id: int | None = None) -> Subscription:
        subscription = StreamSubscription(self.app, ref, last_event_id, self.queue_size)
        await subscription.open()
        self.subscriptions.add(subscription)
        return subscription

    def asgi_app(self) -> ASGIApp:
        return self.app

    def stats(self) -> RuntimeStats:
        from django_eventstream.views import get_listener_manager

        # The library's own registry of local listeners, read, never changed.
        listeners = get_listener_manager().listeners_by_channel
        return RuntimeStats(
            running_tasks=len(self.runner.runs),
            subscribers=sum(len(channel) for channel in listeners.values()),
            topics=len(listeners),
        )

    async def shutdown(self, grace: float = 5.0) -> None:
        await self.runner.shutdown(grace)
        # The glue's own clients leave once the farewell reached them. One that did
        # not get it (one that stopped reading, whose writes the library waits on)
        # is disconnected with the runtime; what it had received stays readable.
        open_ = [s for s in self.subscriptions if not s.ended]
        if open_:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await asyncio.gather(*(s.finished.wait() for s in open_))
        for subscription in open_:
            await subscription.disconnect()
        self.subscriptions.clear()


class StreamSubscription(Subscription):
    """A client of the library's stream view, called in process through Django's ASGI app.

    It reads what the view writes, frame by frame: the library's ids
    (``task-7:3``, channel and number) become the number, frames without data
    (``stream-open``, ``keep-alive``) dispatch nothing, as in a browser. After
    a terminal event or the farewell it stops reading and disconnects. Its
    buffer is bounded: a reader that falls behind holds up the view's writes,
    as a socket's would.
    """

    def __init__(
        self, app: ASGIApp, ref: TaskRef, last_event_id: int | None, queue_size: int
    ) -> None:
        self.app, self.ref = app, ref
        headers = [(b"host", b"127.0.0.1"), (b"accept", b"text/event-stream")]
        if last_event_id is not None:
            channel = f"task-{ref.id}"
            headers.append((b"last-event-id", f"{channel}:{last_event_id}".encode()))
        self.scope: dict[str, Any] = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": ref.stream_path,
            "raw_path": ref.stream_path.encode(),
            "root_path": "",
            "query_string": b"",
            "headers": headers,
            "client": ("127.0.0.1", 0),
            "server": ("127.0.0.1", 80),
        }
        self._queue: asyncio.Queue[Event | None] = asyncio.Queue(maxsize=queue_size)
        self._opened = asyncio.Event()
        self._gone = asyncio.Event()
        #: Set once the stream has ended for this client (terminal event, farewell, close).
        self.finished = asyncio.Event()
        self._status = 0
        self._body = b""
        self._buffer = ""
        self._request_sent = False
        self._ended = False
        self._app_task: asyncio.Task[None] | None = None

    async def open(self) -> None:
        """Send the request; return once the view has registered the listener (its first write)."""
        self._app_task = asyncio.create_task(
            self._serve(), name=f"eventstream client {self.ref.model} {self.ref.id}"
        )
        opened = asyncio.create_task(self._opened.wait())
        await asyncio.wait({opened, self._app_task}, return_when=asyncio.FIRST_COMPLETED)
        opened.cancel()
        if self._status != 200:
            await self._leave()
            if self._status == 404:
                raise UnknownTask(f"{self.ref}: {self._body.decode(errors='replace')}")
            raise RuntimeError(f"The stream answered {self._status}: {self._body!r}")

    async def _serve(self) -> None:
        try:
            await self.app(self.scope, self._receive, self._send)
        finally:
            self._opened.set()
            self._end()

    async def _receive(self) -> dict[str, Any]:
        if not self._request_sent:
            self._request_sent = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await self._gone.wait()
        return {"type": "http.disconnect"}

    async def _send(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            self._status = message["status"]
            return
        body = message.get("body", b"")
        if self._status != 200:
            self._body += body
            return
        self._opened.set()
        self._buffer += body.decode()
        *frames, self._buffer = self._buffer.replace("\r\n", "\n").split("\n\n")
        for frame in frames:
            event = self._parse(frame)
            if event is None or self._ended:
                continue
            await self._queue.put(event)
            if event.type in _ENDING or event.type == "stream-error":
                self._end()
                self._gone.set()  # the client leaves, as an EventSource closed by the page

    def _parse(self, frame: str) -> Event | None:
        fields: dict[str, str] = {}
        data: list[str] = []
        for line in frame.split("\n"):
            if not line or line.startswith(":"):
                continue
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "data":
                data.append(value)
            else:
                fields[name] = value
        text = "\n".join(data)
        if not text:
            return None  # stream-open, keep-alive: no data, nothing dispatched
        import json

        payload = json.loads(text)
        if not isinstance(payload, dict):
            payload = {"data": payload}
        meta = {k: payload.pop(k, "") for k in ("_task_id", "_model", "_timestamp")}
        number = fields.get("id", "").rpartition(":")[2]
        return Event(
            id=int(number) if number.isdigit() else 0,
            type=fields.get("event", "message"),
            data=payload,
            task_id=str(meta["_task_id"]),
            model=str(meta["_model"]),
            timestamp=str(meta["_timestamp"]),
        )

    @property
    def ended(self) -> bool:
        return self._ended

    def _end(self) -> None:
        if not self._ended:
            self._ended = True
            self.finished.set()
            try:
                self._queue.put_nowait(None)
            except asyncio.QueueFull:
                pass  # nobody is waiting on a full queue; __anext__ sees _ended after it

    def __aiter__(self) -> StreamSubscription:
        return self

    async def __anext__(self) -> Event:
        if self._queue.empty() and self._ended:
            raise StopAsyncIteration
        item = await self._queue.get()
        if item is None:
            raise StopAsyncIteration
        return item

    async def _leave(self) -> None:
        self._gone.set()
        if self._app_task is not None:
            await asyncio.gather(self._app_task, return_exceptions=True)

    async def disconnect(self) -> None:
        """Leave without dropping what was received: it stays readable, then the end."""
        self._end()
        await self._leave()

    async def aclose(self) -> None:
        while not self._queue.empty():
            self._queue.get_nowait()
        await self.disconnect()


def _pk(ref: TaskRef) -> int:
    if ref.model != MODEL or not ref.id.isascii() or not ref.id.isdigit():
        raise UnknownTask(f"{ref} does not exist.")
    return int(ref.id)


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


def _import_path() -> str:
    """PYTHONPATH for a server process: this package and the suite, as this process has them."""
    import conformance

    here = [str(Path(__file__).resolve().parents[1]), str(Path(conformance.__file__).parents[1])]
    inherited = os.environ.get("PYTHONPATH", "")
    return os.pathsep.join(dict.fromkeys([*here, *filter(None, inherited.split(os.pathsep))]))


#: The session's database file, made once per process.
_database: str | None = None
_directory: str | None = None


def setup_django() -> str:
    """Point Django at a fresh SQLite file, migrate it; return its path. Idempotent."""
    global _database, _directory
    if _database is not None:
        return _database
    import django

    # In memory where the machine has it: the library writes every event in
    # transactions of its own, and a disk's fsync would make the grading slow,
    # not the library wrong. SQLite's behaviour is the same either way.
    shm = "/dev/shm" if os.path.isdir("/dev/shm") else None
    _directory = tempfile.mkdtemp(prefix="conformance-eventstream-", dir=shm)
    path = f"{_directory}/eventstream.sqlite3"
    os.environ["EVENTSTREAM_IMPL_DB"] = path
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", SETTINGS_MODULE)
    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0, interactive=False)
    _database = path
    return path


def teardown_django() -> None:
    global _database, _directory
    if _database is None:
        return
    from django.db import connections

    connections.close_all()
    if _directory is not None:
        shutil.rmtree(_directory, ignore_errors=True)
    _database = _directory = None
