"""``python -m conformance bench``: an implementation's server against a raw ASGI broadcaster.

The suites assert bounds; this measures. It starts the implementation's real
server (``Implementation.server_command``) and, in the same run and under the
same uvicorn, the minimal broadcaster of :mod:`conformance.bench_baseline`,
drives both from a separate client process (:mod:`conformance.bench_client`)
over 127.0.0.1, and reports each figure with its ratio to the baseline:

- server CPU per delivered event, and events delivered per second, with 10,
  100 and 1,000 clients (about 100,000 deliveries each, median of 3 runs);
- server memory per idle stream (1,000 open, before anything has streamed);
- connect to first event for a task that is running (p50, p99);
- cancel to every client told, with 1,000 clients (p50, p99), against the
  broadcaster's one event to each of as many clients;
- SIGTERM with 1,000 open streams: how many were told, and the time to exit;
- events lost, and clients that saw them out of order, over every run;
- for an implementation declaring ``multi_worker``: the CPU of both workers
  per event delivered to 100 clients on the worker that does not run the task.

The broadcaster has no late joiners, no cancel and no drain: those figures
have no ratio. It writes ``bench.json``, ``bench.md`` and, with matplotlib
installed, ``bench.png`` (CPU per event against clients) to ``--output``.
A full run takes about a minute on two cores (more with a loaded machine).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import signal
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from . import behaviours
from .clients import http_client
from .contract import Capability, Implementation, Runtime, ServerSpec, TaskRef
from .processes import ServerProcess, running_server, with_default_signals

DESCRIPTION = "Measure an implementation's server against a raw ASGI broadcaster."
#: (clients, events): about 100,000 deliveries each.
FAN_OUTS = ((10, 10_000), (100, 1_000), (1000, 100))
IDLE_STREAMS = 1000
CANCEL_CLIENTS = 1000
#: (clients, events) with the clients on a second worker (``multi_worker`` only).
OTHER_WORKER = (100, 1_000)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--impl", default="reference", help="implementation (default: %(default)s)")
    parser.add_argument("--output", default="reports", help="directory (default: %(default)s)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure (default: 3)")


def run(args: argparse.Namespace) -> int:
    from .plugin import load_implementation

    impl = load_implementation(args.impl)
    try:
        figures = asyncio.run(_bench(impl, args.repeat))
    finally:
        impl.close()
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    (output / "bench.json").write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    (output / "bench.md").write_text(render_markdown(figures), encoding="utf-8")
    plotted = _plot(figures, output / "bench.png")
    written = ["bench.json", "bench.md", *(["bench.png"] if plotted else [])]
    print(render_markdown(figures))
    print(f"-> {', '.join(str(output / name) for name in written)}")
    return 0


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


async def fan_out(target: Target, clients: int, events: int, repeat: int) -> dict[str, Any]:
    """Median CPU per delivered event and events per second; what was lost or reordered."""
    cpu_per_event, per_second, lost, disorder = [], [], 0, 0
    for _ in range(repeat):
        path, trigger = await target.burst(events)
        connected = await Clients.open(target.server.url, path, clients)
        before = cpu_seconds(target.server)
        await trigger()
        streams = await connected.results()
        spent = cpu_seconds(target.server) - before
        delivered = sum(s["events"] for s in streams)
        lost += clients * (events + 1) - delivered
        disorder += sum(not s["in_order"] for s in streams)
        took = max(s["last"] for s in streams) - min(s["first"] for s in streams)
        cpu_per_event.append(spent / delivered * 1e6)
        per_second.append(delivered / took)
    return {
        "clients": clients,
        "events": events,
        "cpu_us_per_event": statistics.median(cpu_per_event),
        "events_per_second": statistics.median(per_second),
        "lost": lost,
        "out_of_order": disorder,
    }


async def fan_out_elsewhere(
    target: Target, other: ServerProcess, clients: int, events: int, repeat: int
) -> dict[str, Any]:
    """CPU of both workers per delivered event, the task on one and its clients on the other."""
    cpu_per_event, lost = [], 0
    for _ in range(repeat):
        path, trigger = await target.burst(events)
        connected = await Clients.open(other.url, path, clients)
        before = cpu_seconds(target.server) + cpu_seconds(other)
        await trigger()
        streams = await connected.results()
        spent = cpu_seconds(target.server) + cpu_seconds(other) - before
        delivered = sum(s["events"] for s in streams)
        lost += clients * (events + 1) - delivered
        cpu_per_event.append(spent / delivered * 1e6)
    return {
        "clients": clients,
        "events": events,
        "cpu_us_per_event": statistics.median(cpu_per_event),
        "lost": lost,
    }


async def idle_memory(target: Target) -> float:
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
    return float(grown / IDLE_STREAMS / 1024)


async def first_event(target: Target, count: int) -> dict[str, float]:
    """Connect to the first event of a running task, p50 and p99 in ms."""
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


async def cancel_to_everyone(target: Target, repeat: int) -> dict[str, float]:
    """From the cancel request to each of 1,000 clients seeing ``cancelled``, in ms."""
    return await _to_everyone(target, repeat, cancel=True)


async def _to_everyone(target: Target, repeat: int, *, cancel: bool) -> dict[str, float]:
    """From one POST to each of the clients seeing the stream's end, p50 and p99 in ms.

    For the implementation the POST cancels a parked task; for the broadcaster,
    which has no cancel, it publishes one event and the end: the same request,
    fan-out and client reads, as the floor to hold the cancel against.
    """
    latencies: list[float] = []
    # A connection opened beforehand: a new client would add its own set-up
    # (an SSL context, a TCP handshake: about 25 ms here) to every figure.
    async with http_client(target.server.url, timeout=30) as http:
        await http.get("/health")
        for _ in range(repeat):
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
            latencies += [(s["terminal_at"] - sent) * 1000 for s in streams if s["terminal_at"]]
    return {"p50_ms": percentile(latencies, 0.5), "p99_ms": percentile(latencies, 0.99)}


async def sigterm(impl: Implementation, runtime: Runtime) -> dict[str, Any]:
    """SIGTERM to a server with 1,000 open streams: how many were told, time to exit."""
    async with running_server(impl, grace=2.0) as server:
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


async def _bench(impl: Implementation, repeat: int) -> dict[str, Any]:
    runtime = await impl.start()
    figures: dict[str, Any] = {
        "implementation": impl.name,
        "version": impl.version,
        "date": datetime.date.today().isoformat(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "repeat": repeat,
    }
    try:
        async with running_server(impl) as server, running_server(Broadcaster()) as yardstick:
            await _settle(server)
            ours, base = Target(impl.name, server, runtime), Target("baseline", yardstick)
            for target in (ours, base):
                target.figures["idle_kb_per_stream"] = await idle_memory(target)
            for target in (ours, base):
                await fan_out(target, 10, 100, 1)  # warm up
                target.figures["fan_out"] = [
                    await fan_out(target, clients, events, repeat) for clients, events in FAN_OUTS
                ]
            ours.figures["first_event"] = await first_event(ours, 200)
            ours.figures["cancel_to_everyone"] = await cancel_to_everyone(ours, repeat)
            base.figures["cancel_to_everyone"] = await _to_everyone(base, repeat, cancel=False)
            if Capability.MULTI_WORKER in impl.capabilities:
                async with running_server(impl) as other:
                    await fan_out_elsewhere(ours, other, 10, 100, 1)  # warm up
                    ours.figures["other_worker"] = await fan_out_elsewhere(
                        ours, other, *OTHER_WORKER, repeat
                    )
        ours.figures["sigterm"] = await sigterm(impl, runtime)
    finally:
        await runtime.shutdown(2.0)
    figures["implementation_figures"] = ours.figures
    figures["baseline_figures"] = base.figures
    return figures


async def _settle(server: ServerProcess) -> None:
    async with http_client(server.url) as http:
        assert (await http.get("/health")).status_code == 200


# -- reporting ----------------------------------------------------------------------


def render_markdown(figures: dict[str, Any]) -> str:
    ours, base = figures["implementation_figures"], figures["baseline_figures"]
    name = figures["implementation"]
    lines = [
        f"# Benchmark: {name} against a raw ASGI broadcaster",
        "",
        f"{figures['date']}, Python {figures['python']}, {figures['cpus']} CPUs, median of "
        f"{figures['repeat']} runs. Ratios are {name} / broadcaster: below 1 is better.",
        "",
        f"| figure | {name} | broadcaster | ratio |",
        "|---|---|---|---|",
    ]
    for mine, theirs in zip(ours["fan_out"], base["fan_out"], strict=True):
        n = mine["clients"]
        lines.append(
            _row(
                f"server CPU per event, {n} clients (us)",
                mine["cpu_us_per_event"],
                theirs["cpu_us_per_event"],
            )
        )
        lines.append(
            _row(
                f"events per second, {n} clients",
                mine["events_per_second"],
                theirs["events_per_second"],
                digits=0,
            )
        )
    lines.append(
        _row(
            "server memory per idle stream (KB)",
            ours["idle_kb_per_stream"],
            base["idle_kb_per_stream"],
        )
    )
    first, cancel, term = ours["first_event"], ours["cancel_to_everyone"], ours["sigterm"]
    floor = base["cancel_to_everyone"]
    lines += [
        f"| connect to first event, running task (ms) | p50 {first['p50_ms']:.2f}, "
        f"p99 {first['p99_ms']:.2f} | n/a | |",
        _row(
            f"cancel to every one of {CANCEL_CLIENTS} clients, p50 (ms; broadcaster: one "
            "event to each)",
            cancel["p50_ms"],
            floor["p50_ms"],
            digits=2,
        ),
        _row(
            f"cancel to every one of {CANCEL_CLIENTS} clients, p99 (ms)",
            cancel["p99_ms"],
            floor["p99_ms"],
            digits=2,
        ),
        f"| SIGTERM with {term['streams']} streams | {term['told']} told, exit "
        f"{term['exit_status']} after {term['exit_s']:.2f} s | n/a | |",
        "| events lost, clients out of order | "
        f"{sum(r['lost'] for r in ours['fan_out'])}, "
        f"{sum(r['out_of_order'] for r in ours['fan_out'])} | "
        f"{sum(r['lost'] for r in base['fan_out'])}, "
        f"{sum(r['out_of_order'] for r in base['fan_out'])} | |",
    ]
    elsewhere = ours.get("other_worker")
    if elsewhere is not None:
        n = elsewhere["clients"]
        same = next(r for r in ours["fan_out"] if r["clients"] == n)
        lines.append(
            f"| both workers' CPU per event, {n} clients on the other worker (us) | "
            f"{elsewhere['cpu_us_per_event']:.1f} ({same['cpu_us_per_event']:.1f} on one "
            f"worker; {elsewhere['lost']} lost) | n/a | |"
        )
    return "\n".join(lines) + "\n"


def _row(label: str, mine: float, theirs: float, digits: int = 1) -> str:
    ratio = mine / theirs if theirs else float("nan")
    return f"| {label} | {mine:.{digits}f} | {theirs:.{digits}f} | {ratio:.2f} |"


def _plot(figures: dict[str, Any], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot", file=sys.stderr)
        return False
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, key in (
        (figures["implementation"], "implementation_figures"),
        ("raw ASGI broadcaster", "baseline_figures"),
    ):
        rows = figures[key]["fan_out"]
        ax.plot(
            [r["clients"] for r in rows], [r["cpu_us_per_event"] for r in rows], "o-", label=label
        )
    ax.set_xscale("log")
    ax.set_xlabel("clients of one task")
    ax.set_ylabel("server CPU per delivered event (us)")
    ax.set_ylim(bottom=0)
    ax.legend()
    ax.set_title("Fan-out cost, lower is better")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True
