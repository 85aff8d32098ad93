"""The implementation contract: the only module an implementation imports.

An implementation is two objects. An :class:`Implementation` is created once
per test session; it says what the implementation can do (capabilities), which
cases it is known to fail (expected failures), and how to start a real server
process. A :class:`Runtime` is what :meth:`Implementation.start` returns on the
running event loop: it creates, starts, cancels and reads tasks, subscribes
in-process clients, serves ASGI and shuts down.

Task kinds come from *behaviours*: module-level async functions that the suite
supplies, each called with a :class:`TaskContext`. A behaviour is named by its
import path (:func:`behaviour_path`), never by its function name (two suites
may both have a ``park``), so an implementation can run it in another process
too, for the cases that start a real server. How the implementation names the
task kind in URLs (``TaskRef.model``) is its own choice.

Operations (OPS) need the implementation configured otherwise than the
other suites, which must not be limited: :meth:`Runtime.guarded_asgi_app`
serves the same interface with access control and the limits the
implementation declares in :attr:`Implementation.limits`, and
:meth:`Implementation.credentials_for` says which request headers grant an
action on a task. ``server_command`` takes nothing new.

Everything here is plain data or an abstract method; ``SPEC.md`` says what
each operation must do, and what the events the implementation sends itself
(terminal events, the farewell, ``overflow``, ``stream-reset``) carry.
"""

from __future__ import annotations

import contextlib
import enum
import importlib
import re
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeAlias

__all__ = [
    "CONTRACT_VERSION",
    "EVENT_TYPE_PATTERN",
    "FAREWELL_EVENT",
    "MAX_HEADER_BYTES",
    "OVERFLOW_EVENT",
    "STREAM_RESET_EVENT",
    "TERMINAL_EVENTS",
    "WAITING_EVENT",
    "ASGIApp",
    "Behaviour",
    "Budgets",
    "Capability",
    "Event",
    "Implementation",
    "Limits",
    "Runtime",
    "RuntimeClosed",
    "RuntimeStats",
    "ServerSpec",
    "Subscription",
    "TaskContext",
    "TaskRef",
    "TaskState",
    "TaskStatus",
    "Timings",
    "UnknownTask",
    "behaviour_path",
    "resolve_behaviour",
]


#: This contract's version, in semver: a new major version renames or removes
#: something an implementation uses, a new minor version only adds (with
#: defaults). An implementation declares the version it was written against
#: (:attr:`Implementation.contract_version`); ``MIGRATING.md``, beside this
#: module, says what changed, with code before and after.
CONTRACT_VERSION = "2.2.0"


class TaskStatus(enum.StrEnum):
    """Persisted task states, named after Django 6's ``TaskResultStatus``."""

    # Created, not started yet.
    READY = "READY"
    # Started; its process() is running somewhere.
    RUNNING = "RUNNING"
    # process() returned.
    SUCCESSFUL = "SUCCESSFUL"
    # process() raised.
    FAILED = "FAILED"
    # Stopped on request (cancel_task); Django has no such state.
    CANCELLED = "CANCELLED"
    # Stopped because it ran past its timeout; Django has no such state.
    TIMED_OUT = "TIMED_OUT"
    # Stopped by shutdown or a lost worker, not by request; may run again.
    INTERRUPTED = "INTERRUPTED"

    @property
    def is_finished(self) -> bool:
        """Whether no further transition is expected without a new start."""
        return self not in (TaskStatus.READY, TaskStatus.RUNNING)


#: Event types with which an implementation ends a run, and the stream of a
#: client watching it. Exactly one of them is recorded per run; behaviours may
#: not send them themselves. ``interrupted`` ends a run stopped by a shutdown
#: or lost with its process: the clients of a server that shuts down get the
#: farewell instead, and clients that come later get ``interrupted``.
TERMINAL_EVENTS = frozenset({"complete", "error", "cancelled", "timeout", "interrupted"})

#: The event a server sends every open stream when it shuts down.
FAREWELL_EVENT = "shutdown"
#: The event that ends the stream of a client that fell too far behind.
OVERFLOW_EVENT = "overflow"
#: The event that tells a resuming client some of the events it asked for are gone.
STREAM_RESET_EVENT = "stream-reset"
#: A notice (MAY) that the server is waiting on something before the task can
#: go on or end: a lost run's lease, say. It carries the id of the last event
#: before it, and a client reads it as news, not as one of the task's events.
WAITING_EVENT = "waiting"
#: What an event type may be (FUNC-19): 1 to 64 ASCII letters, digits, ``-``, ``_``
#: and ``.``. Anything else could break the SSE frame it is written into.
EVENT_TYPE_PATTERN = re.compile(r"[A-Za-z0-9_.-]{1,64}")
#: The longest request head (request line and headers) SPEC lets a server read (HTTP-10).
MAX_HEADER_BYTES = 1024 * 1024


class Capability(enum.StrEnum):
    """What an implementation may declare it supports; cases require these."""

    #: Runtime.asgi_app() serves the HTTP/SSE interface.
    HTTP = "http"
    #: Implementation.server_command() starts a real server process.
    PROCESS = "process"
    #: Task state survives in a database another connection can read.
    PERSISTENCE = "persistence"
    #: Runtime.cancel_task() stops a running task and tells its clients.
    CANCEL = "cancel"
    #: Tasks honour a timeout.
    TIMEOUTS = "timeouts"
    #: A server process shuts down gracefully on SIGTERM/SIGINT.
    SIGNALS = "signals"
    #: Clients resume with Last-Event-ID / last_event_id.
    RESUME = "resume"
    #: Several worker processes share tasks safely.
    MULTI_WORKER = "multi_worker"
    #: Runtime.retry_task() runs a failed, cancelled, timed-out or interrupted task again.
    RETRY = "retry"
    #: A run whose process died is found and recorded INTERRUPTED within
    #: ``Timings.orphan_timeout`` by any live runtime or server on the same storage.
    RECOVERY = "recovery"
    #: Implementation.database_outage() and drop_database_connections() inject
    #: real faults into the implementation's own database, so cases can watch it survive.
    FAULT_INJECTION = "fault_injection"
    #: Runtime.guarded_asgi_app() asks for credentials (401/403 with a reason)
    #: that Implementation.credentials_for() gives, and every HTTP interface
    #: refuses state changes from another origin and requests for a host it
    #: does not serve (OPS).
    AUTHORIZATION = "authorization"
    #: Runtime.guarded_asgi_app() enforces Implementation.limits: 429 with
    #: Retry-After past one (OPS).
    RATE_LIMITS = "rate_limits"
    #: GET /metrics answers the Prometheus text format with the series SPEC.md
    #: names, and they move as tasks run and events reach clients (OPS).
    METRICS = "metrics"
    #: GET /live (the process answers) and GET /ready (it can serve: accepting
    #: work, storage reachable) are told apart (OPS).
    READINESS = "readiness"


@dataclass(frozen=True, slots=True)
class Event:
    """One event as a client sees it."""

    #: Increases by one per event within a task, starting at 1.
    id: int
    type: str
    data: Mapping[str, Any]
    task_id: str
    model: str
    #: ISO 8601 with a UTC offset.
    timestamp: str

    @property
    def is_terminal(self) -> bool:
        return self.type in TERMINAL_EVENTS


@dataclass(frozen=True, slots=True)
class TaskRef:
    """Names one task: its model (task kind) and id, as in ``/stream/<model>/<id>``."""

    #: The name of the task's kind, chosen by the implementation: one URL path
    #: segment (letters, digits, ``_`` and ``-``).
    model: str
    #: The task's id: a non-negative integer in plain decimal digits, as text.
    id: str

    @property
    def stream_path(self) -> str:
        return f"/stream/{self.model}/{self.id}"

    def __str__(self) -> str:
        return f"{self.model} {self.id}"


@dataclass(frozen=True, slots=True)
class TaskState:
    """A task's persisted state, as a fresh read from storage returns it."""

    status: TaskStatus
    created_at: str | None = None
    started_at: str | None = None
    completed_at: str | None = None
    error: str = ""
    fields: Mapping[str, Any] = field(default_factory=dict)
    #: How many runs of the task have started: 0 while READY, 1 after the
    #: first start, one more for every retry or recovery that runs it again.
    attempt: int = 0


@dataclass(frozen=True, slots=True)
class Timings:
    """Deadlines an implementation keeps under the suite, in seconds.

    Cases that wait for one of these to pass wait for the declared value plus
    a margin, so an implementation states what it promises rather than the
    suite guessing. The values are what its runtimes and ``server_command``
    use while the suite runs; production settings may differ.
    """

    #: A client whose connection is gone (reset, process killed) is unregistered
    #: within this; idle streams carry a keep-alive at least this often.
    keepalive: float = 15.0
    #: A stream whose client stopped reading is closed within this once its
    #: writes stall.
    write_deadline: float = 10.0
    #: A task that swallows cancellation is recorded CANCELLED within this.
    cancel_grace: float = 5.0
    #: A run whose process died is recorded INTERRUPTED within this
    #: (capability ``recovery``).
    orphan_timeout: float = 60.0
    #: A connection to a server process (``server_command``) that has not
    #: sent a whole request head within this, from its opening or from the
    #: end of its previous response, is closed or answered 408 (EDGE-24).
    #: SPEC allows at most 60 seconds.
    header_timeout: float = 60.0


@dataclass(frozen=True, slots=True)
class Limits:
    """What the guarded HTTP interface allows one client, declared for the suite (OPS).

    A client is one address (the peer of the connection). A limit left None
    is not enforced, and the cases that need it are graded unsupported.
    Rates are token buckets: a client may spend ``burst`` at once, and gets
    one more every ``1 / per_second`` seconds. Past any limit the answer is
    429 with ``Retry-After``, at once: never a request left waiting.
    """

    #: Streams one client may hold open at once.
    streams_per_client: int | None = None
    #: Streams one task may have open at once, from all clients.
    subscribers_per_task: int | None = None
    #: New streams (``GET /stream/...``) one client may open in a burst ...
    stream_burst: int | None = None
    #: ... and how many more per second after that.
    streams_per_second: float | None = None
    #: Commands (``POST /tasks/...``) one client may send in a burst ...
    command_burst: int | None = None
    #: ... and how many more per second after that.
    commands_per_second: float | None = None


@dataclass(frozen=True, slots=True)
class Budgets:
    """Memory a server process (``server_command``) keeps, declared for the suite.

    The memory cases (EDGE-20, PERF-4) derive their bounds from these, so a
    budget that is not kept shows, however large or small it is. Declare
    what the implementation's server keeps under the suite: a smaller budget
    makes the cases cheaper.
    """

    #: Bytes of events kept, for all finished tasks together (latest events,
    #: for late joiners and resumes). SPEC allows at most 64 MiB.
    finished_events: int = 64 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class RuntimeStats:
    """Counts the hygiene checks read after every case."""

    running_tasks: int
    #: Clients registered now. A client whose stream has ended (terminal,
    #: overflow or farewell queued) no longer counts, even before it has read
    #: its last events.
    subscribers: int
    topics: int


@dataclass(frozen=True, slots=True)
class ServerSpec:
    """How to start an implementation's server as a real process."""

    argv: list[str]
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: str | None = None
    #: Path that answers 200 once the server accepts work.
    ready_path: str = "/health"


class UnknownTask(LookupError):
    """Raised by a Runtime for a task (or task kind) that does not exist."""


class RuntimeClosed(RuntimeError):
    """Raised by a Runtime asked to start work after :meth:`Runtime.shutdown`."""


class TaskContext(Protocol):
    """What a behaviour receives: its task's identity, fields and event channel."""

    @property
    def task_id(self) -> str: ...

    @property
    def fields(self) -> Mapping[str, Any]: ...

    async def send_event(self, type: str, data: Mapping[str, Any] | None = None) -> None:
        """Deliver an event to every subscriber of this task.

        It may yield to the event loop, so that clients that keep up are not
        overflowed by a task sending in a loop that never awaits anything else.
        It raises, and sends nothing, for a ``type`` that
        :data:`EVENT_TYPE_PATTERN` does not match (FUNC-19) and for ``data``
        that is not strict JSON: a float that is NaN or infinite (FUNC-20).
        """

    async def read_fields(self) -> Mapping[str, Any]:
        """Re-read this task's fields from storage and return them.

        While storage is unavailable it raises an ``Exception`` the task can
        catch and carry on from.
        """

    async def write_fields(self, **changes: Any) -> None:
        """Merge ``changes`` into the stored fields (for example, progress reached).

        Fields merge one by one: a concurrent write of other fields, from
        anywhere, is kept. Raises like :meth:`read_fields` while storage is away.
        """


#: A task kind's body. Its return value (a mapping or None) is merged into the
#: ``complete`` event's data.
Behaviour: TypeAlias = Callable[[TaskContext], Awaitable[Mapping[str, Any] | None]]

ASGIApp: TypeAlias = Callable[[Any, Any, Any], Awaitable[None]]


def behaviour_path(behaviour: Behaviour) -> str:
    """Return ``module:qualname`` for a module-level behaviour."""
    qualname = behaviour.__qualname__
    if "<locals>" in qualname:
        raise ValueError(
            f"Cannot name behaviour {qualname!r}: it is local to a function; "
            "define it at module level so another process can import it."
        )
    return f"{behaviour.__module__}:{qualname}"


def resolve_behaviour(path: str) -> Behaviour:
    """Import the behaviour that :func:`behaviour_path` named."""
    module_name, sep, qualname = path.partition(":")
    if not sep or not module_name or not qualname:
        raise ValueError(f"Cannot resolve behaviour {path!r}: expected 'module:function'.")
    target: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
        target = getattr(target, part)
    if not callable(target):
        raise TypeError(f"Cannot use behaviour {path!r}: it is not callable.")
    return target  # type: ignore[no-any-return]


class Subscription(ABC):
    """An in-process client: iterate it for events; it ends after a terminal one.

    Waiting for the next event must be cancellation-safe: a cancelled
    ``anext()`` (say, under ``asyncio.wait_for``) loses no event and leaves the
    subscription usable. An async generator is not: implement ``__anext__``.
    """

    @abstractmethod
    def __aiter__(self) -> AsyncIterator[Event]: ...

    @abstractmethod
    async def aclose(self) -> None:
        """Unsubscribe. Idempotent; the iterator ends."""


class Runtime(ABC):
    """An implementation running on the current event loop."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # A runtime written against contract 1.x names write_fields
        # update_fields; it is given the new name before ABCMeta counts the
        # abstract methods (conformance/compat.py).
        super().__init_subclass__(**kwargs)
        from .compat import shim_runtime_class

        shim_runtime_class(cls)

    @abstractmethod
    async def create_task(
        self,
        kind: Behaviour,
        fields: Mapping[str, Any] | None = None,
        *,
        timeout: float | None = None,
        max_attempts: int | None = None,
    ) -> TaskRef:
        """Store a new READY task that runs ``kind``, with ``fields`` as its data.

        ``timeout`` limits each run, in seconds. ``max_attempts`` (capability
        ``recovery``) is how many runs the implementation may start on its own:
        a run INTERRUPTED by a shutdown or a lost process is run again, by any
        live runtime or server, while the task has had fewer runs than this.
        None takes the kind's or the implementation's default (one run).
        """

    @abstractmethod
    async def start_task(self, ref: TaskRef) -> bool:
        """Start a READY task; False if it was not READY (already started or finished).

        Returns once the task runs, without waiting for its work. After
        :meth:`shutdown` it returns False or raises :class:`RuntimeClosed`.
        """

    @abstractmethod
    async def cancel_task(self, ref: TaskRef, reason: str | None = None) -> bool:
        """Cancel a READY or RUNNING task; False if there was nothing to cancel."""

    async def retry_task(self, ref: TaskRef) -> bool:
        """Run a FAILED, CANCELLED, TIMED_OUT or INTERRUPTED task again, as a new run.

        False for a task in any other state. Capability ``retry``.
        """
        raise NotImplementedError("This implementation does not declare the 'retry' capability.")

    @abstractmethod
    async def get_state(self, ref: TaskRef) -> TaskState:
        """Read the task's persisted state afresh."""

    @abstractmethod
    async def write_fields(self, ref: TaskRef, **fields: Any) -> None:
        """Merge ``fields`` into the task's stored fields from outside the task.

        As :meth:`TaskContext.write_fields`: other fields written at the same
        time, by the task or another process, are kept; the last write of one
        field wins.
        """

    @abstractmethod
    async def subscribe(self, ref: TaskRef, *, last_event_id: int | None = None) -> Subscription:
        """Register a client; on return it is registered and will see every later event.

        Without ``last_event_id`` the client gets the task's latest event
        first. With it (capability ``resume``), every event after that id, a
        ``stream-reset`` first where some are gone; a subscription resumed at
        or past a finished task's terminal event ends at once, with no event.
        """

    @abstractmethod
    def asgi_app(self) -> ASGIApp:
        """The HTTP interface: ``GET /stream/<model>/<id>``, ``GET /health``, ...

        The suite serves it with uvicorn on 127.0.0.1 (its httptools protocol
        where installed). ASGI has no portable way to drop a connection whose
        client stopped reading (EDGE-17), so an app may use what uvicorn gives
        it for that: the transport behind ``send``.
        """

    def guarded_asgi_app(self) -> ASGIApp:
        """The same HTTP interface, with access control and the declared limits in force.

        Every stream and command on a task needs the credentials
        :meth:`Implementation.credentials_for` gives: without any, the answer
        is 401 or 403 with a reason; credentials for another task or another
        action get 403. It enforces :attr:`Implementation.limits` (capability
        ``rate_limits``). ``/health`` and the probes answer without
        credentials. Capability ``authorization`` or ``rate_limits``.
        """
        raise NotImplementedError("This implementation does not declare an 'authorization' app.")

    @abstractmethod
    def stats(self) -> RuntimeStats:
        """Current counts of running tasks, subscribers and topics."""

    @abstractmethod
    async def shutdown(self, grace: float = 5.0) -> None:
        """Stop gracefully: let tasks finish within ``grace``, then interrupt them.

        Afterwards the runtime starts nothing (``start_task`` raises
        :class:`RuntimeClosed` or returns false), but ``get_state`` and
        ``write_fields`` still work: cases read what the shutdown recorded.
        """


class Implementation(ABC):
    """An implementation under test, created once per session by its factory."""

    #: Registered name, as given to ``--impl``.
    name: str = "unnamed"
    version: str = "0"
    #: The contract version this implementation was written against, such as
    #: ``"2.1"``. The suite grades one of the previous major version through
    #: shims that forward the old names, and refuses an older or a newer one
    #: with one message saying what to do. None: not declared (contract 1.x
    #: had no such attribute).
    contract_version: str | None = None
    capabilities: frozenset[Capability] = frozenset()
    #: Case ID (or ``ID:part``, for its tests whose node ID contains ``part``)
    #: -> reason. Such cases must fail; an unexpected pass is an error.
    expected_failures: Mapping[str, str] = {}
    #: Cases (keyed as above) failed in some interleavings only: graded xfail
    #: whether they fail or pass this time. Use sparingly: a race it loses.
    racy_failures: Mapping[str, str] = {}
    #: The deadlines its runtimes and servers keep under the suite.
    timings: Timings = Timings()
    #: Events a client may fall behind before it is sent ``overflow`` and its
    #: stream ends; every client's queue must be bounded.
    client_queue_size: int = 1000
    #: What :meth:`Runtime.guarded_asgi_app` allows one client (capability
    #: ``rate_limits``); the interfaces of ``asgi_app`` and ``server_command``
    #: may allow more, so that the other suites are not limited.
    limits: Limits = Limits()
    #: Bytes of a request head (request line and headers) a server process
    #: (``server_command``) reads before it refuses the request (HTTP-10); at
    #: most :data:`MAX_HEADER_BYTES`.
    max_header_bytes: int = MAX_HEADER_BYTES
    #: What its server process keeps in memory (EDGE-20, PERF-4).
    budgets: Budgets = Budgets()

    def credentials_for(self, ref: TaskRef, action: str) -> Mapping[str, str]:
        """HTTP request headers that let a client do ``action`` on ``ref``, and only that.

        ``action`` is ``"stream"`` (``GET /stream/...``), ``"start"``,
        ``"cancel"`` or ``"retry"`` (``POST /tasks/.../<action>``). The
        headers are what :meth:`Runtime.guarded_asgi_app` asks for: a token,
        a session cookie. Capability ``authorization``.
        """
        raise NotImplementedError(f"{self.name} does not declare the 'authorization' capability.")

    @abstractmethod
    async def start(self) -> Runtime:
        """Start a fresh runtime bound to the running event loop."""

    def server_command(self, host: str, port: int, *, grace: float = 5.0) -> ServerSpec:
        """The command that serves this implementation on ``host:port`` until a signal.

        It uses the same storage as this session's runtimes, so a case can
        create a task in process and watch the server run it.

        On the first SIGTERM or SIGINT it drains (SHUT): new streams, starts
        and ``/health`` answer 503; running tasks get ``grace`` seconds, the
        rest are recorded INTERRUPTED; every open stream gets the farewell
        and ends; then it exits with status 0. A second signal makes it exit
        at once, also with 0. A server on uvicorn must take over uvicorn's
        first reaction to the signal, which stops accepting and then waits
        for open connections, and an open stream never closes by itself.
        """
        raise NotImplementedError(f"{self.name} does not declare the 'process' capability.")

    def database_outage(self) -> contextlib.AbstractAsyncContextManager[None]:
        """Make this implementation's database unavailable while the context is open.

        Every runtime and server process of the session loses it: new
        connections are refused and open ones fail (a server that is stopped,
        or a lock nobody can wait out). On exit the database is available
        again. Capability ``fault_injection``.
        """
        raise NotImplementedError(f"{self.name} does not declare the 'fault_injection' capability.")

    async def drop_database_connections(self) -> bool:
        """Have the database server end every session this implementation holds.

        The database stays available: a survivor reconnects. False when the
        database has no server-side sessions to end (SQLite). Capability
        ``fault_injection``.
        """
        raise NotImplementedError(f"{self.name} does not declare the 'fault_injection' capability.")

    def environment(self) -> Mapping[str, str]:
        """Facts for the report: database, framework versions."""
        return {}

    def close(self) -> None:  # noqa: B027 - optional hook, deliberately empty
        """Release session resources (a test database, temporary files)."""
