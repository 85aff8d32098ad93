"""``python -m conformance bench``: an implementation's server against a raw ASGI broadcaster.

The suites assert bounds; this measures. It starts the implementation's real
server (``Implementation.server_command``) and, in the same run and under the
same uvicorn, the minimal broadcaster of :mod:`conformance.bench_baseline`,
drives both from a separate client process (:mod:`conformance.bench_client`)
over 127.0.0.1, and reports each figure with its ratio to the baseline:

- server CPU per delivered event, and events delivered per second, with 10,
  100 and 1,000 clients (about 100,000 deliveries each);
- server memory per idle stream (1,000 open, before anything has streamed:
  the first run on the server the fan-out is then measured on, the others
  each on a fresh one);
- connect to first event for a task that is running (p50, p99);
- cancel to every client told, with 1,000 clients (p50, p99), against the
  broadcaster's one event to each of as many clients;
- SIGTERM with 1,000 open streams: how many were told, and the time to exit;
- events lost, and clients that saw them out of order, over every run;
- for an implementation declaring ``multi_worker``: the CPU of both workers
  per event delivered to 100 clients on the worker that does not run the task.

Each figure is measured ``--repeat`` times (3 unless told), and every run
is kept: :mod:`conformance.bench_report` summarises them (median, lowest,
highest) and writes ``bench.json``, ``bench.md`` and, with matplotlib
installed, ``bench.png`` to ``--output`` (``reports/``); ``--save`` copies
them to ``results/``. The broadcaster has no late joiners, no cancel and no
drain: those figures have no ratio.

While it measures, this process's stderr, its client processes' and the
servers' output go to ``bench.log`` in ``--output``: the terminal shows the
table. ``--repeat 2`` took under a minute on two cores (more on a loaded machine).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import os
import platform
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import psutil

from . import behaviours
from .bench_report import LOG, SAVED, describe_commit, render_markdown, summarise, write_reports
from .clients import http_client
from .contract import Capability, Implementation, Runtime, ServerSpec, TaskRef
from .processes import HasServerCommand, ServerProcess, with_default_signals

DESCRIPTION = "Measure an implementation's server against a raw ASGI broadcaster."
#: (clients, events): about 100,000 deliveries each.
FAN_OUTS = ((10, 10_000), (100, 1_000), (1000, 100))
IDLE_STREAMS = 1000
CANCEL_CLIENTS = 1000
#: (clients, events) with the clients on a second worker (``multi_worker`` only).
OTHER_WORKER = (100, 1_000)
#: (clients, events) of the row that sets an implementation's tasks against
#: another way of making tasks on the same server (``bench_variants``).
VARIANT = (100, 1_000)
#: What the latency figures keep of each run.
LATENCIES = ("p50_ms", "p99_ms")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--impl", default="reference", help="implementation (default: %(default)s)")
    parser.add_argument(
        "--output", default="reports", help="directory, ignored by git (default: %(default)s)"
    )
    parser.add_argument(
        "--repeat", type=_runs, default=3, help="runs of each figure, all kept (default: 3)"
    )
    parser.add_argument(
        "--save",
        nargs="?",
        type=Path,
        const=SAVED,
        metavar="DIR",
        help=f"also keep a copy in DIR (alone: {SAVED}/, tracked, where the README links it)",
    )


def _runs(text: str) -> int:
    runs = int(text)
    if runs < 1:
        raise argparse.ArgumentTypeError(f"{runs} runs: each figure needs at least 1.")
    return runs


def run(args: argparse.Namespace) -> int:
    from .plugin import load_implementation

    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    log_path = output / LOG
    impl = load_implementation(args.impl)
    try:
        with stderr_to(log_path) as log:
            try:
                figures = asyncio.run(_bench(impl, args.repeat, log))
            finally:
                impl.close()
    except BaseException:
        print(f"The benchmark stopped; the servers' output is in {log_path}.", file=sys.stderr)
        raise
    written = write_reports(figures, output, args.save)
    print(render_markdown(figures))
    print(f"-> {', '.join(map(str, written))} (the servers' output: {log_path})")
    return 0


# -- where the output goes --------------------------------------------------------


@contextlib.contextmanager
def stderr_to(path: Path) -> Iterator[TextIO]:
    """Send this process's stderr, and so its children's, to ``path`` (a new file) until the end.

    At the file descriptor: log handlers made before (Django's console
    handler holds ``sys.stderr``) and client processes started meanwhile
    (they inherit it) write there too.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", buffering=1) as log:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(log.fileno(), 2)
        try:
            yield log
        finally:
            sys.stderr.flush()
            if sys.__stderr__ is not None:
                sys.__stderr__.flush()
            os.dup2(saved, 2)
            os.close(saved)


@contextlib.asynccontextmanager
async def logged_server(
    impl: HasServerCommand, log: TextIO, *, grace: float = 5.0
) -> AsyncIterator[ServerProcess]:
    """As :func:`~conformance.processes.running_server`; its output goes to ``log`` at the end."""
    server = ServerProcess(impl, grace=grace)
    try:
        await server.start()
        yield server
    finally:
        await server.stop()
        _log_output(log, server)


def _log_output(log: TextIO, server: ServerProcess) -> None:
    try:
        pid = server.pid
    except RuntimeError:  # it was never started
        log.write(f"=== {server.impl.name} on {server.url}: not started ===\n")
        return
    log.write(
        f"=== {server.impl.name} on {server.url}, pid {pid}, exit status {server.returncode} ===\n"
    )
    for stream in ("stdout", "stderr"):
        if text := server.text(stream):
            log.write(f"--- {stream} ---\n{text}\n")


# -- the two servers --------------------------------------------------------------


class Broadcaster(Implementation):
    """The yardstick as a server command, so both servers start the same way."""

    name = "raw ASGI broadcaster"

    async def start(self) -> Runtime:
        raise NotImplementedError("The broadcaster has no runtime; it only serves.")

    def server_command(self, host: str, port: int, *, grace: float = 5.0) -> ServerSpec:
        argv = [sys.executable, "-m", "conformance.bench_baseline", "--host", host]
        return ServerSpec(argv=[*argv, "--port", str(port)])


@dataclass
class Target:
    """A server under measurement, and how to make it stream."""

    name: str
    server: ServerProcess
    runtime: Runtime | None = None
    figures: dict[str, Any] = field(default_factory=dict)

    async def burst(self, events: int) -> tuple[str, Callable[[], Awaitable[None]]]:
        """A stream path, and the call that makes ``events`` events flow on it."""
        if self.runtime is None:
            key = uuid.uuid4().hex
            return f"/stream/{key}", lambda: _post(self.server, f"/publish/{key}?count={events}")
        ref = await self.runtime.create_task(behaviours.burst, {"count": events})
        return ref.stream_path, lambda: self.server.start_task(ref)

    async def parked(self) -> TaskRef:
        assert self.runtime is not None
        ref = await self.runtime.create_task(behaviours.park)
        await self.server.start_task(ref)
        return ref


async def _post(server: ServerProcess, path: str) -> None:
    response = await server.request("POST", path)
    assert response.status_code in (200, 202), (response.status_code, response.text)


# -- the client process ------------------------------------------------------------


class Clients:
    """A ``bench_client`` process: its connections, then what they saw."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    @classmethod
    async def open(cls, url: str, path: str, count: int) -> Clients:
        process = await asyncio.create_subprocess_exec(
            *with_default_signals([sys.executable, "-m", "conformance.bench_client"]),
            "--url",
            url,
            "--path",
            path,
            "--clients",
            str(count),
            stdout=asyncio.subprocess.PIPE,
            limit=2**24,  # one summary line per run, about 150 bytes a client
        )
        clients = cls(process)
        assert (await clients._line()).get("ready") == count, "the clients did not connect"
        return clients

    async def _line(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        async with asyncio.timeout(120):
            line = await self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"bench_client ended with {await self.process.wait()}")
        return json.loads(line)  # type: ignore[no-any-return]

    async def results(self) -> list[dict[str, Any]]:
        summary = await self._line()
        await self.process.wait()
        return summary["streams"]  # type: ignore[no-any-return]


def cpu_seconds(server: ServerProcess) -> float:
    times = psutil.Process(server.pid).cpu_times()
    return float(times.user + times.system)


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


# -- the figures ---------------------------------------------------------------------
#
# Each measures one run and returns it; the loops in _bench repeat them, and
# bench_report.summarise keeps every run beside its median and range.


async def fan_out_run(target: Target, clients: int, events: int) -> dict[str, Any]:
    """CPU per delivered event and events per second of one burst; what was lost or reordered."""
    path, trigger = await target.burst(events)
    connected = await Clients.open(target.server.url, path, clients)
    before = cpu_seconds(target.server)
    await trigger()
    streams = await connected.results()
    spent = cpu_seconds(target.server) - before
    delivered = sum(s["events"] for s in streams)
    took = max(s["last"] for s in streams) - min(s["first"] for s in streams)
    return {
        "cpu_us_per_event": spent / delivered * 1e6,
        "events_per_second": delivered / took,
        "lost": clients * (events + 1) - delivered,
        "out_of_order": sum(not s["in_order"] for s in streams),
    }


async def fan_out(target: Target, clients: int, events: int, repeat: int) -> dict[str, Any]:
    """``repeat`` bursts to ``clients`` clients, one after another on the same server."""
    runs = [await fan_out_run(target, clients, events) for _ in range(repeat)]
    return {
        "clients": clients,
        "events": events,
        **summarise(
            runs,
            spread_over=("cpu_us_per_event", "events_per_second"),
            total_over=("lost", "out_of_order"),
        ),
    }


async def fan_out_elsewhere(
    target: Target, other: ServerProcess, clients: int, events: int, repeat: int
) -> dict[str, Any]:
    """CPU of both workers per delivered event, the task on one and its clients on the other."""
    runs = []
    for _ in range(repeat):
        path, trigger = await target.burst(events)
        connected = await Clients.open(other.url, path, clients)
        before = cpu_seconds(target.server) + cpu_seconds(other)
        await trigger()
        streams = await connected.results()
        spent = cpu_seconds(target.server) + cpu_seconds(other) - before
        delivered = sum(s["events"] for s in streams)
        runs.append(
            {
                "cpu_us_per_event": spent / delivered * 1e6,
                "lost": clients * (events + 1) - delivered,
            }
        )
    summary = summarise(runs, spread_over=("cpu_us_per_event",), total_over=("lost",))
    return {"clients": clients, "events": events, **summary}


async def idle_memory(target: Target) -> dict[str, float]:
    """Server resident memory per open idle stream, in KB (on a server that has not streamed yet).

    Measured before any fan-out: memory a burst left free would hold the
    streams' allocations and hide their cost.
    """
    if target.runtime is not None:
        path = (await target.parked()).stream_path
    else:
        path = f"/stream/{uuid.uuid4().hex}"
    warm = await Clients.open(target.server.url, path, 100)  # buffers and pools, first
    warm.process.kill()
    await warm.process.wait()
    before = psutil.Process(target.server.pid).memory_info().rss
    idle = await Clients.open(target.server.url, path, IDLE_STREAMS)
    grown = psutil.Process(target.server.pid).memory_info().rss - before
    idle.process.kill()
    await idle.process.wait()
    return {"kb_per_stream": grown / IDLE_STREAMS / 1024}


async def first_event(target: Target, count: int) -> dict[str, float]:
    """Connect to the first event of a running task, ``count`` times: p50 and p99 in ms."""
    ref = await target.parked()
    process = await asyncio.create_subprocess_exec(
        *with_default_signals([sys.executable, "-m", "conformance.bench_client"]),
        "--url",
        target.server.url,
        "--path",
        ref.stream_path,
        "--first",
        str(count),
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await process.communicate()
    waits = [w * 1000 for w in json.loads(out)["first_event"]]
    return {"p50_ms": percentile(waits, 0.5), "p99_ms": percentile(waits, 0.99)}


async def cancel_to_everyone(target: Target) -> dict[str, float]:
    """From the cancel request to each of 1,000 clients seeing ``cancelled``, in ms."""
    return await _to_everyone(target, cancel=True)


async def _to_everyone(target: Target, *, cancel: bool) -> dict[str, float]:
    """From one POST to each of the clients seeing the stream's end, p50 and p99 in ms.

    For the implementation the POST cancels a parked task; for the broadcaster,
    which has no cancel, it publishes one event and the end: the same request,
    fan-out and client reads, as the floor to hold the cancel against.
    """
    # A connection opened beforehand: a new client would add its own set-up
    # (an SSL context, a TCP handshake: about 25 ms here) to every figure.
    async with http_client(target.server.url, timeout=30) as http:
        await http.get("/health")
        if cancel:
            ref = await target.parked()
            path, post = ref.stream_path, f"/tasks/{ref.model}/{ref.id}/cancel"
        else:
            key = uuid.uuid4().hex
            path, post = f"/stream/{key}", f"/publish/{key}?count=1"
        clients = await Clients.open(target.server.url, path, CANCEL_CLIENTS)
        sent = time.monotonic()
        response = await http.post(post)
        assert response.status_code in (200, 202), (response.status_code, response.text)
        streams = await clients.results()
    latencies = [(s["terminal_at"] - sent) * 1000 for s in streams if s["terminal_at"]]
    return {"p50_ms": percentile(latencies, 0.5), "p99_ms": percentile(latencies, 0.99)}


async def sigterm(impl: Implementation, runtime: Runtime, log: TextIO) -> dict[str, Any]:
    """SIGTERM to a server with 1,000 open streams: how many were told, time to exit."""
    async with logged_server(impl, log, grace=2.0) as server:
        target = Target(impl.name, server, runtime)
        ref = await target.parked()
        clients = await Clients.open(server.url, ref.stream_path, IDLE_STREAMS)
        sent = time.monotonic()
        server.send_signal(signal.SIGTERM)
        status = await server.wait_exit(60)
        exited = time.monotonic() - sent
        streams = await clients.results()
    told = sum(s["terminal"] == "shutdown" for s in streams)
    return {"streams": len(streams), "told": told, "exit_status": status, "exit_s": exited}


async def _bench(impl: Implementation, repeat: int, log: TextIO) -> dict[str, Any]:
    runtime = await impl.start()
    figures: dict[str, Any] = {
        "implementation": impl.name,
        "version": impl.version,
        "date": datetime.date.today().isoformat(),
        "commit": describe_commit(Path.cwd()),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "repeat": repeat,
    }
    try:
        async with (
            logged_server(impl, log) as server,
            logged_server(Broadcaster(), log) as yardstick,
        ):
            await _settle(server)
            ours, base = Target(impl.name, server, runtime), Target("baseline", yardstick)
            idle = [[await idle_memory(target)] for target in (ours, base)]
            for target in (ours, base):
                await fan_out(target, 10, 100, 1)  # warm up
                target.figures["fan_out"] = [
                    await fan_out(target, clients, events, repeat) for clients, events in FAN_OUTS
                ]
            runs = [await first_event(ours, 200) for _ in range(repeat)]
            ours.figures["first_event"] = summarise(runs, spread_over=LATENCIES)
            runs = [await cancel_to_everyone(ours) for _ in range(repeat)]
            ours.figures["cancel_to_everyone"] = summarise(runs, spread_over=LATENCIES)
            runs = [await _to_everyone(base, cancel=False) for _ in range(repeat)]
            base.figures["cancel_to_everyone"] = summarise(runs, spread_over=LATENCIES)
            await _variants(impl, runtime, ours, repeat)
            if Capability.MULTI_WORKER in impl.capabilities:
                async with logged_server(impl, log) as other:
                    await fan_out_elsewhere(ours, other, 10, 100, 1)  # warm up
                    ours.figures["other_worker"] = await fan_out_elsewhere(
                        ours, other, *OTHER_WORKER, repeat
                    )
        # Memory per idle stream needs a server that has not streamed: one each.
        for _ in range(repeat - 1):
            async with logged_server(impl, log) as fresh:
                idle[0].append(await idle_memory(Target(impl.name, fresh, runtime)))
            async with logged_server(Broadcaster(), log) as fresh:
                idle[1].append(await idle_memory(Target(base.name, fresh)))
        for target, runs in zip((ours, base), idle, strict=True):
            target.figures["idle_memory"] = summarise(runs, spread_over=("kb_per_stream",))
        runs = [await sigterm(impl, runtime, log) for _ in range(repeat)]
        ours.figures["sigterm"] = summarise(runs, spread_over=("told", "exit_s"))
    finally:
        await runtime.shutdown(2.0)
    figures["implementation_figures"] = ours.figures
    figures["baseline_figures"] = base.figures
    return figures


async def _variants(impl: Implementation, runtime: Runtime, ours: Target, repeat: int) -> None:
    """CPU per event of this implementation's tasks against its other ways of making them.

    An implementation may offer ``bench_variants(runtime)``: runtimes, by
    label, whose tasks the same server runs another way (the reference's
    ``@task`` functions and its model tasks). Their bursts alternate with
    ours, run by run, so a busy machine weighs on both alike.
    """
    offered = getattr(impl, "bench_variants", None)
    if offered is None:
        return
    rows = []
    for label, other in offered(runtime).items():
        theirs = Target(label, ours.server, other)
        await fan_out(theirs, 10, 100, 1)  # warm up
        mine_runs, their_runs = [], []
        for _ in range(repeat):
            mine_runs.append(await fan_out_run(ours, *VARIANT))
            their_runs.append(await fan_out_run(theirs, *VARIANT))
        spread = ("cpu_us_per_event", "events_per_second")
        totals = ("lost", "out_of_order")
        rows.append(
            {
                "label": label,
                "clients": VARIANT[0],
                "events": VARIANT[1],
                "ours": summarise(mine_runs, spread_over=spread, total_over=totals),
                "theirs": summarise(their_runs, spread_over=spread, total_over=totals),
            }
        )
    ours.figures["variants"] = rows


async def _settle(server: ServerProcess) -> None:
    async with http_client(server.url) as http:
        assert (await http.get("/health")).status_code == 200
