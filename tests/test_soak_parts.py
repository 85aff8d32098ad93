"""The soak's parts other than the checker: its schedule, its workload, its relay."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from pathlib import Path
from typing import Any, cast

import pytest

from conformance.contract import Capability
from conformance.soak import parse_duration
from conformance.soak.faults import Fault, Relay, available_faults, schedule
from conformance.soak.history import History, read_history
from conformance.soak.runner import Soak, SoakOptions, Worker
from conformance.soak.workload import plan_task

pytestmark = pytest.mark.timeout(30)

EVERYTHING = frozenset(Capability)


def test_same_seed_when_scheduled_twice_then_same_faults_and_tasks() -> None:
    kinds = available_faults(EVERYTHING, workers=2, redis=True, postgres=True)
    assert schedule(7, 600, kinds, 2) == schedule(7, 600, kinds, 2)
    assert schedule(7, 600, kinds, 2) != schedule(8, 600, kinds, 2)
    assert [plan_task(7, n) for n in range(1, 50)] == [plan_task(7, n) for n in range(1, 50)]


def test_schedule_when_drawn_then_every_fault_ends_before_the_run_does() -> None:
    kinds = available_faults(EVERYTHING, workers=2, redis=True, postgres=True)
    faults = schedule(3, 120, kinds, 2)
    assert faults and all(f.at + f.hold < 120 for f in faults)
    assert {f.kind for f in schedule(3, 3600, kinds, 2)} == set(kinds)


def test_capabilities_when_few_declared_then_only_faults_they_allow() -> None:
    assert available_faults(frozenset(), workers=1, redis=False, postgres=False) == ["client-cut"]
    single = available_faults(EVERYTHING, workers=1, redis=False, postgres=False)
    assert "redis-stop" not in single and "db-sessions" not in single
    assert "db-away" in single and "sigkill" in single


def test_duration_when_parsed_then_seconds() -> None:
    assert [parse_duration(t) for t in ("90", "90s", "10m", "1h")] == [90, 90, 600, 3600]
    with pytest.raises(argparse.ArgumentTypeError, match="not a duration: '10 minutes'"):
        parse_duration("10 minutes")


async def _ended(reader: asyncio.StreamReader) -> bool:
    """Whether the connection ends (reset, or closed) within a few seconds, with no data."""
    try:
        return await asyncio.wait_for(reader.read(100), 5) == b""
    except ConnectionResetError:
        return True


@pytest.mark.asyncio
async def test_relay_when_cut_then_its_connections_end_and_new_ones_pass() -> None:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(100):
            writer.write(data)
            await writer.drain()
        writer.close()

    upstream = await asyncio.start_server(echo, "127.0.0.1", 0)
    relay = Relay("test", ("127.0.0.1", upstream.sockets[0].getsockname()[1]))
    await relay.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
        writer.write(b"ping")
        assert await asyncio.wait_for(reader.read(100), 5) == b"ping"
        assert relay.cut() == 1
        assert await _ended(reader)
        writer.close()

        relay.refusing = True
        reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
        assert await _ended(reader)
        writer.close()

        relay.refusing = False
        reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
        writer.write(b"again")
        assert await asyncio.wait_for(reader.read(100), 5) == b"again"
        writer.close()
    finally:
        await relay.close()
        upstream.close()
        await upstream.wait_closed()


class _Draining:
    """A stand-in for a worker's server process: once signalled, it drains until let go."""

    pid = 4242

    def __init__(self) -> None:
        self.returncode: int | None = None
        self.signalled = asyncio.Event()
        self.let_go = asyncio.Event()

    async def stop(self, sig: int, *, timeout: float) -> int:
        self.signalled.set()
        await self.let_go.wait()
        self.returncode = 0
        return 0


@pytest.mark.asyncio
async def test_worker_draining_when_the_other_is_due_a_kill_then_the_kill_is_skipped(
    tmp_path: Path,
) -> None:
    # One worker down at a time: a kill during the other's drain would leave
    # no live worker to recover its runs (the soak's recovery bound, issue 27).
    path = tmp_path / "history.jsonl"
    draining, other = _Draining(), _Draining()
    with History(path) as history:
        soak = Soak(cast(Any, None), SoakOptions(duration=1, seed=1, workers=2), history)
        soak.workers = [
            Worker(0, cast(Any, None), server=cast(Any, draining)),
            Worker(1, cast(Any, None), server=cast(Any, other)),
        ]
        term = asyncio.create_task(soak._fault(Fault(0, "sigterm", 0, 1.0)))
        await asyncio.wait_for(draining.signalled.wait(), 5)
        assert soak.workers[0].alive and not soak.workers[0].up
        await soak._fault(Fault(0, "sigkill", 1, 1.0))
        assert not other.signalled.is_set()
        term.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await term
    faults = [(r["fault"], r["phase"]) for r in read_history(path) if r["kind"] == "fault"]
    assert faults == [("sigterm", "start"), ("sigkill", "skipped")]
