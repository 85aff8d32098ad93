"""Drive an implementation's workers with the workload and the fault schedule; record it all.

One :class:`Soak` owns everything it starts: the workers (real server
processes of the implementation), a relay in front of each that clients and
commands go through, a relay between the workers and PostgreSQL, a private
Redis, an in-process runtime that creates the tasks and reads their rows.
It records (:mod:`.history`) and never judges: :mod:`.checker` does, after.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import random
import signal
import time
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
import psutil

from ..contract import (
    FAREWELL_EVENT,
    OVERFLOW_EVENT,
    STREAM_RESET_EVENT,
    TERMINAL_EVENTS,
    Implementation,
    Runtime,
    ServerSpec,
    TaskRef,
    TaskStatus,
    behaviour_path,
)
from ..processes import ServerProcess
from ..waiting import MARGIN
from .faults import Fault, PrivateRedis, Relay
from .history import History
from .workload import ClientPlan, TaskPlan, plan_task

__all__ = ["Soak", "SoakOptions"]

#: Seconds a soak waits, after the run, for every task to end and every client to be told.
DRAIN = 90.0
#: Seconds between two samples of the workers' memory.
MEMORY_PERIOD = 2.0
#: Tasks running at once, at most: two cores shared with other work.
MAX_ACTIVE = 16
#: Seconds a read of a task's state may take before it counts as failed.
STATE_TIMEOUT = 10.0
#: Statuses a task may be retried from (EDGE-4).
RETRYABLE = frozenset({"FAILED", "CANCELLED", "TIMED_OUT", "INTERRUPTED"})
#: Events whose data the history keeps: the ids they name.
NAMED_IDS = ("last_event_id", "oldest_available_id")


@dataclass
class SoakOptions:
    """What one soak runs: for how long, from which seed, on how many workers."""

    duration: float
    seed: int
    workers: int = 1
    grace: float = 3.0


@dataclass
class Worker:
    """One worker: its server process (None while it is down) behind a relay of the harness."""

    index: int
    relay: Relay
    server: ServerProcess | None = None
    restarts: int = 0
    #: Sent a signal, and not yet back: draining is going down, not up.
    stopping: bool = False

    @property
    def alive(self) -> bool:
        """Its process runs (draining, perhaps): clients and commands may still reach it."""
        return self.server is not None and self.server.returncode is None

    @property
    def up(self) -> bool:
        """Alive and not going down: what the fault schedule keeps at least one of."""
        return self.alive and not self.stopping


class _ServerCommand:
    """The implementation's server command, its database reached through the harness's relay."""

    def __init__(self, impl: Implementation, database: Relay | None) -> None:
        self.impl = impl
        self.name = impl.name
        self.database = database

    def server_command(self, host: str, port: int, *, grace: float) -> ServerSpec:
        spec = self.impl.server_command(host, port, grace=grace)
        url = spec.env.get("DATABASE_URL", "")
        if self.database is None or not url.startswith(("postgres://", "postgresql://")):
            return spec
        parts = urllib.parse.urlsplit(url)
        userinfo = parts.netloc.rpartition("@")[0]
        netloc = f"{userinfo}@" if userinfo else ""
        netloc += f"127.0.0.1:{self.database.port}"
        env = {**spec.env, "DATABASE_URL": parts._replace(netloc=netloc).geturl()}
        return dataclasses.replace(spec, env=env)


def database_address(url: str) -> tuple[str, int] | None:
    """Where the workers' PostgreSQL listens, from ``url``; None if it is no PostgreSQL."""
    if not url.startswith(("postgres://", "postgresql://")):
        return None
    parts = urllib.parse.urlsplit(url)
    return (parts.hostname or "127.0.0.1", parts.port or 5432)


@dataclass
class _Chain:
    """What one client has received so far, across its connections."""

    last_id: int | None = None
    terminal: bool = False
    received: int = 0
    left_once: bool = False


@dataclass
class Soak:
    """One soak run: call :meth:`run`, then judge ``history``."""

    impl: Implementation
    options: SoakOptions
    history: History
    redis: PrivateRedis | None = None
    database: tuple[str, int] | None = None
    faults: list[Fault] = field(default_factory=list)
    bounds: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.workers: list[Worker] = []
        self.db_relay: Relay | None = None
        self.runtime: Runtime | None = None
        self.tasks: list[TaskRef] = []
        self._clients = 0
        self._rng = random.Random(f"{self.options.seed}:choices")
        self._background: set[asyncio.Task[Any]] = set()
        self._active = asyncio.Semaphore(MAX_ACTIVE)
        self._end = 0.0  # monotonic time the workload stops
        self._deadline = 0.0  # monotonic time everything must have ended
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(10.0),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=0),
        )
        self._streams = httpx.AsyncClient(
            timeout=httpx.Timeout(10.0, read=60.0),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=0),
        )

    # -- the run ----------------------------------------------------------------------

    async def run(self) -> None:
        """Start the workers, run the workload under the faults, drain, read the final rows."""
        try:
            await self._set_up()
            began = time.monotonic()
            self._end = began + self.options.duration
            self._deadline = self._end + DRAIN
            faults = asyncio.create_task(self._faults(), name="soak-faults")
            memory = asyncio.create_task(self._sample_memory(), name="soak-memory")
            scenarios = await self._workload()
            await faults
            await asyncio.gather(*scenarios, return_exceptions=True)
            await self._final_rows()
            memory.cancel()
            await asyncio.gather(memory, return_exceptions=True)
        finally:
            await self._tear_down()

    async def _set_up(self) -> None:
        self.runtime = await self.impl.start()
        if self.database is not None:
            self.db_relay = Relay("database", self.database)
            await self.db_relay.start()
        for index in range(self.options.workers):
            relay = Relay(f"worker-{index}")
            await relay.start()
            worker = Worker(index, relay)
            self.workers.append(worker)
            await self._start_worker(worker)

    async def _start_worker(self, worker: Worker) -> bool:
        """Start ``worker``'s server, again and again until it answers or the run is over."""
        command = _ServerCommand(self.impl, self.db_relay)
        while time.monotonic() < self._deadline or not self._deadline:
            server = ServerProcess(command, grace=self.options.grace)
            try:
                await server.start()
            except AssertionError as exc:
                await server.stop()
                self.history.write(
                    "worker", worker=worker.index, phase="failed", error=str(exc)[:300]
                )
                await asyncio.sleep(1.0)
                continue
            worker.server = server
            worker.relay.upstream = ("127.0.0.1", server.port)
            self.history.write("worker", worker=worker.index, phase="up", pid=server.pid)
            return True
        return False

    async def _tear_down(self) -> None:
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        for worker in self.workers:
            if worker.server is not None:
                code = await worker.server.stop(signal.SIGTERM, timeout=self.options.grace + 10)
                self.history.write("worker", worker=worker.index, phase="exit", code=code)
                self._keep_output(worker)
            await worker.relay.close()
        if self.db_relay is not None:
            await self.db_relay.close()
        if self.runtime is not None:
            with contextlib.suppress(Exception):
                await self.runtime.shutdown(grace=2.0)
        await self._http.aclose()
        await self._streams.aclose()

    def _keep_output(self, worker: Worker) -> None:
        """Append what the worker's process printed to the log beside the history."""
        if worker.server is None:
            return
        log = self.history.path.with_suffix(".log")
        with log.open("a", encoding="utf-8") as file:
            file.write(f"=== worker {worker.index}: {worker.server!r}\n{worker.server.output()}\n")

    def _spawn(self, coro: Any, name: str) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    def _pick(self) -> Worker:
        """A worker to talk to: one that is alive, if any is."""
        return self._rng.choice([w for w in self.workers if w.alive] or self.workers)

    # -- the workload -------------------------------------------------------------------

    async def _workload(self) -> list[asyncio.Task[Any]]:
        """Start task scenarios until the run's end; the scenarios, to be awaited."""
        rng = random.Random(f"{self.options.seed}:arrivals")
        scenarios = []
        number = 0
        while time.monotonic() < self._end:
            await self._active.acquire()
            if time.monotonic() >= self._end:
                self._active.release()
                break
            number += 1
            plan = plan_task(self.options.seed, number)
            scenarios.append(self._spawn(self._scenario(plan), f"soak-task-{number}"))
            await asyncio.sleep(rng.uniform(0.1, 0.8))
        return scenarios

    async def _scenario(self, plan: TaskPlan) -> None:
        try:
            ref = await self._create(plan)
            if ref is None:
                return
            clients = [
                self._spawn(self._client(ref, c), f"soak-client-{ref}")
                for c in plan.clients
                if c.role != "late"
            ]
            cancel = None
            if plan.cancel_after == 0.0:
                cancel = self._spawn(self._cancel(ref, plan), f"soak-cancel-{ref}")
            started = await self._command_until_answered(ref, "start")
            if started:
                await self._read_state(ref)
            clients += [
                self._spawn(self._late(ref, c), f"soak-late-{ref}")
                for c in plan.clients
                if c.role == "late"
            ]
            if plan.cancel_after:
                cancel = self._spawn(self._cancel(ref, plan), f"soak-cancel-{ref}")
            if cancel is not None:
                await cancel
            status = await self._until_finished(ref)
            if plan.retry and status in RETRYABLE:
                if await self._command_until_answered(ref, "retry"):
                    await self._read_state(ref)
                    late = ClientPlan("late", delay=0.2)
                    clients.append(self._spawn(self._late(ref, late), f"soak-late-{ref}"))
                    await self._until_finished(ref)
            await asyncio.gather(*clients, return_exceptions=True)
        finally:
            self._active.release()

    async def _create(self, plan: TaskPlan) -> TaskRef | None:
        assert self.runtime is not None
        while time.monotonic() < self._end:
            try:
                ref = await self.runtime.create_task(
                    plan.behaviour,
                    plan.fields,
                    timeout=plan.timeout,
                    max_attempts=plan.max_attempts,
                )
            except Exception as exc:  # the database may be away: try again
                self.history.write("error", op="create", error=repr(exc)[:300])
                await asyncio.sleep(0.5)
                continue
            self.tasks.append(ref)
            self.history.write(
                "task",
                task=_name(ref),
                number=plan.number,
                plan=plan.kind,
                behaviour=behaviour_path(plan.behaviour),
                timeout=plan.timeout,
                max_attempts=plan.max_attempts,
                clients=[c.role for c in plan.clients],
                cancel_after=plan.cancel_after,
                retry=plan.retry,
            )
            return ref
        return None

    async def _command(
        self, ref: TaskRef, op: str, worker: Worker, body: Mapping[str, Any] | None = None
    ) -> int | None:
        """One command on one worker, recorded with its answer; its status (None: no answer)."""
        t0 = self.history.now()
        path = f"/tasks/{ref.model}/{ref.id}/{op}"
        try:
            response = await self._http.post(worker.relay.url + path, json=dict(body or {}))
        except httpx.HTTPError as exc:
            self.history.write(
                "request",
                t0=t0,
                task=_name(ref),
                op=op,
                worker=worker.index,
                status=None,
                error=type(exc).__name__,
            )
            return None
        try:
            answer: Any = response.json()
        except ValueError:
            answer = response.text[:200]
        self.history.write(
            "request",
            t0=t0,
            task=_name(ref),
            op=op,
            worker=worker.index,
            status=response.status_code,
            answer=answer,
        )
        return response.status_code

    async def _command_until_answered(self, ref: TaskRef, op: str) -> bool:
        """Send ``op`` until a worker accepts (202) or refuses it (409); whether it was accepted."""
        while time.monotonic() < self._deadline:
            status = await self._command(ref, op, self._pick())
            if status == 202:
                return True
            if status in (404, 409):
                return False
            await asyncio.sleep(0.5)
        return False

    async def _cancel(self, ref: TaskRef, plan: TaskPlan) -> None:
        await asyncio.sleep(plan.cancel_after or 0.0)
        body = {"reason": f"soak cancel of task {plan.number}"}
        targets = self.workers if plan.cancel_everywhere else [self._pick()]
        await asyncio.gather(*(self._command(ref, "cancel", w, body) for w in targets))

    async def _read_state(self, ref: TaskRef, *, final: bool = False) -> str | None:
        assert self.runtime is not None
        t0 = self.history.now()
        try:
            async with asyncio.timeout(STATE_TIMEOUT):
                state = await self.runtime.get_state(ref)
        except Exception as exc:
            self.history.write("error", op="state", task=_name(ref), error=repr(exc)[:300])
            return None
        extra = {"final": True} if final else {}
        self.history.write(
            "state",
            t0=t0,
            task=_name(ref),
            status=str(state.status),
            attempt=state.attempt,
            **extra,
        )
        return str(state.status)

    async def _until_finished(self, ref: TaskRef) -> str | None:
        """Read the task's state every second until it is finished or the run's deadline."""
        status = None
        while time.monotonic() < self._deadline:
            status = await self._read_state(ref)
            if status is not None and TaskStatus(status).is_finished:
                return status
            if status == "READY" and time.monotonic() > self._end + MARGIN:
                await self._settle_unstarted(ref)
            await asyncio.sleep(1.0)
        return status

    async def _settle_unstarted(self, ref: TaskRef) -> None:
        """A task no worker would start during the run: cancel it, so that it ends."""
        await self._command(ref, "cancel", self._pick(), {"reason": "soak over"})

    # -- clients ------------------------------------------------------------------------

    async def _late(self, ref: TaskRef, plan: ClientPlan) -> None:
        await asyncio.sleep(plan.delay)
        await self._client(ref, plan)

    async def _client(self, ref: TaskRef, plan: ClientPlan) -> None:
        """One client: connections until it has its terminal event, leaves, or the run is over."""
        self._clients += 1
        client = f"c{self._clients}"
        chain = _Chain()
        conn = 0
        done = False
        while not done and time.monotonic() < self._deadline:
            conn += 1
            where = {"client": client, "conn": conn, "task": _name(ref)}
            try:
                # A stream may never end (a run nobody finds lost): the run's deadline ends it.
                async with asyncio.timeout(self._deadline - time.monotonic()):
                    done = await self._connection(ref, plan, client, conn, chain)
            except TimeoutError:
                self.history.write("close", **where, how="deadline")
                break
            if not done:
                await asyncio.sleep(
                    self._rng.uniform(0.3, 1.0) if not chain.left_once else plan.pause
                )
        stayed = plan.stays
        self.history.write("client", client=client, task=_name(ref), role=plan.role, stayed=stayed)

    async def _connection(
        self, ref: TaskRef, plan: ClientPlan, client: str, conn: int, chain: _Chain
    ) -> bool:
        """One connection of a client; whether the client is done."""
        worker = self._pick()
        headers = {} if chain.last_id is None else {"Last-Event-ID": str(chain.last_id)}
        where = {"client": client, "conn": conn, "task": _name(ref)}
        how = "end"
        try:
            async with self._streams.stream(
                "GET", worker.relay.url + ref.stream_path, headers=headers
            ) as response:
                self.history.write(
                    "open",
                    **where,
                    worker=worker.index,
                    last_event_id=chain.last_id,
                    status=response.status_code,
                )
                if response.status_code == 204:
                    self.history.write("close", **where, how="end")
                    return True
                if response.status_code != 200:
                    self.history.write("close", **where, how="refused")
                    return False
                if plan.role == "never-read":
                    await asyncio.sleep(min(20.0, max(0.0, self._deadline - time.monotonic())))
                    self.history.write("close", **where, how="left")
                    return True
                async for event in _events(response):
                    self.history.write("event", **where, **event)
                    if event["type"] in (FAREWELL_EVENT, OVERFLOW_EVENT, STREAM_RESET_EVENT):
                        continue
                    if event["type"] == "waiting":
                        continue
                    chain.last_id = event["id"]
                    chain.received += 1
                    if event["type"] in TERMINAL_EVENTS:
                        chain.terminal = True
                    elif plan.role in ("leaver", "resumer") and not chain.left_once:
                        if chain.received >= plan.leave_after:
                            chain.left_once = True
                            how = "left"
                            break
                    if plan.role == "slow":
                        await asyncio.sleep(plan.pause)  # a client that reads slowly
        except (httpx.HTTPError, OSError) as exc:
            how = "error"
            self.history.write("close", **where, how=how, error=type(exc).__name__)
            return chain.terminal
        self.history.write("close", **where, how=how)
        if how == "left":
            return plan.role == "leaver"
        return chain.terminal

    # -- faults -------------------------------------------------------------------------

    async def _faults(self) -> None:
        began = self._end - self.options.duration
        pending = []
        for fault in self.faults:
            await asyncio.sleep(max(0.0, began + fault.at - time.monotonic()))
            pending.append(self._spawn(self._fault(fault), f"soak-fault-{fault.kind}"))
        await asyncio.gather(*pending, return_exceptions=True)

    async def _fault(self, fault: Fault) -> None:
        record = {"fault": fault.kind, "target": fault.target, "hold": fault.hold}
        if fault.kind in ("sigkill", "sigterm"):
            assert fault.target is not None
            worker = self.workers[fault.target % len(self.workers)]
            others_down = any(not w.up for w in self.workers if w is not worker)
            if not worker.up or others_down:
                self.history.write("fault", **record, phase="skipped")
                return
            assert worker.server is not None
            sig = signal.SIGKILL if fault.kind == "sigkill" else signal.SIGTERM
            # One worker down at a time: a worker draining after SIGTERM
            # counts as down, or a kill of the other during its drain would
            # leave no live worker to recover the killed one's runs.
            worker.stopping = True
            self.history.write("fault", **record, phase="start", pid=worker.server.pid)
            try:
                code = await worker.server.stop(sig, timeout=self.options.grace + 15)
                self.history.write("worker", worker=worker.index, phase="exit", code=code)
                self._keep_output(worker)
                worker.server = None
                await asyncio.sleep(fault.hold)
                await self._start_worker(worker)
                worker.restarts += 1
            finally:
                worker.stopping = False
        elif fault.kind == "client-cut":
            assert fault.target is not None
            relay = self.workers[fault.target % len(self.workers)].relay
            self.history.write("fault", **record, phase="start")
            record["cut"] = relay.cut()
        elif fault.kind == "redis-stop":
            assert self.redis is not None
            self.history.write("fault", **record, phase="start")
            await self.redis.stop()
            await asyncio.sleep(fault.hold)
            await self.redis.start()
        elif fault.kind == "db-sessions":
            self.history.write("fault", **record, phase="start")
            record["ended"] = await self.impl.drop_database_connections()
        elif fault.kind == "db-away":
            self.history.write("fault", **record, phase="start")
            if self.db_relay is not None:
                self.db_relay.refusing = True
                record["cut"] = self.db_relay.cut()
                await asyncio.sleep(fault.hold)
                self.db_relay.refusing = False
            else:
                async with self.impl.database_outage():
                    await asyncio.sleep(fault.hold)
        self.history.write("fault", **record, phase="end")

    # -- measures -----------------------------------------------------------------------

    async def _sample_memory(self) -> None:
        while True:
            for worker in self.workers:
                server = worker.server
                if server is None or server.returncode is not None:
                    continue
                with contextlib.suppress(psutil.Error):
                    rss = psutil.Process(server.pid).memory_info().rss
                    self.history.write("memory", worker=worker.index, pid=server.pid, rss=rss)
            await asyncio.sleep(MEMORY_PERIOD)

    async def _final_rows(self) -> None:
        for ref in self.tasks:
            for _ in range(10):
                if await self._read_state(ref, final=True) is not None:
                    break
                await asyncio.sleep(1.0)


async def _events(response: httpx.Response) -> Any:
    """The events of an SSE response as the history records them: id, type, named ids."""
    kind, data, event_id = "message", "", None
    async for line in response.aiter_lines():
        if line == "":
            if event_id is not None or data:
                event: dict[str, Any] = {"id": _int(event_id), "type": kind}
                if kind in (FAREWELL_EVENT, OVERFLOW_EVENT, STREAM_RESET_EVENT):
                    with contextlib.suppress(ValueError):
                        parsed = json.loads(data)
                        event.update({k: parsed.get(k) for k in NAMED_IDS if k in parsed})
                yield event
            kind, data, event_id = "message", "", None
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            kind = value
        elif name == "data":
            data = f"{data}\n{value}" if data else value
        elif name == "id":
            event_id = value


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _name(ref: TaskRef) -> str:
    """A task as the history names it: ``model/id``."""
    return f"{ref.model}/{ref.id}"
