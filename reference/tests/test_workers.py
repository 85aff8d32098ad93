"""``runserver_stream --workers N``: several workers on one port, sharing events through Redis.

Real processes: the supervisor, its workers, Redis at ``REDIS_URL`` (default
``redis://127.0.0.1:6379/0``). Without a Redis these tests skip and say so,
except under ``CI=true``, where they fail. Which worker a connection reached
is read from the workers' own sockets (psutil), never guessed.
"""

from __future__ import annotations

import signal
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import psutil
import pytest
import redis

from streaming.workers import MIN_UPTIME

DEADLINE = 20.0


@pytest.fixture
def redis_env(env: dict[str, str], redis_url: str) -> Iterator[dict[str, str]]:
    """``env`` with a Redis bus under a prefix of this test's own, removed afterwards."""
    prefix = f"test-workers-{uuid.uuid4().hex[:8]}"
    yield {**env, "STREAMING_REDIS_URL": redis_url, "STREAMING_REDIS_PREFIX": prefix}
    with redis.Redis.from_url(redis_url) as client:
        keys = list(client.scan_iter(match=f"{prefix}:*"))
        if keys:
            client.delete(*keys)


def workers_of(supervisor: Any, count: int, wait_until: Any) -> list[psutil.Process]:
    """The supervisor's ``count`` worker processes, once each is listening."""
    parent = psutil.Process(supervisor.pid)

    def listening() -> list[psutil.Process] | None:
        children = parent.children()
        ready = [
            child
            for child in children
            if any(c.status == psutil.CONN_LISTEN for c in _connections(child))
        ]
        return ready if len(children) == count and len(ready) == count else None

    return wait_until(listening, DEADLINE, f"{count} workers listening")


def _connections(process: psutil.Process) -> list[Any]:
    try:
        return process.net_connections(kind="tcp")
    except psutil.NoSuchProcess:
        return []


def clients_per_worker(workers: list[psutil.Process], port: int) -> list[int]:
    return [
        sum(
            1
            for c in _connections(worker)
            if c.status == psutil.CONN_ESTABLISHED and c.laddr.port == port
        )
        for worker in workers
    ]


@pytest.mark.timeout(60)
def test_workers_when_more_than_one_without_redis_then_exit_1_saying_why(run: Any) -> None:
    result = run("manage.py", "runserver_stream", "--workers", "2", "--port", "0")
    assert result.returncode == 1, result
    assert "--workers above 1 needs STREAMING_REDIS_URL" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.timeout(90)
def test_two_workers_when_clients_spread_then_each_gets_every_event_and_sigterm_exits_0(
    redis_env: dict[str, str], start_server: Any, run: Any, wait_until: Any
) -> None:
    supervisor = start_server("--workers", "2", env=redis_env)
    workers = workers_of(supervisor, 2, wait_until)
    created = run("manage.py", "create_task", "--no-start", "--step-delay", "0", env=redis_env)
    assert created.returncode == 0, created.stderr
    pk = created.stdout.splitlines()[0].rpartition("with ID: ")[2]

    received: list[list[str]] = []
    opened = threading.Semaphore(0)
    stop = threading.Event()

    def listen() -> None:
        events: list[str] = []
        received.append(events)
        # A connection of its own per client, so the kernel may hand it to either worker.
        with httpx.Client(timeout=DEADLINE) as http:
            with http.stream("GET", f"{supervisor.url}/stream/ExampleTask/{pk}") as response:
                opened.release()
                for line in response.iter_lines():
                    if line.startswith("event: "):
                        events.append(line.removeprefix("event: "))
                    if stop.is_set() or events[-1:] == ["complete"]:
                        return

    # Clients connect one by one until both workers have some: a worker still
    # starting accepts none, so how many it takes is not known in advance.
    threads: list[threading.Thread] = []
    try:
        while True:
            thread = threading.Thread(target=listen)
            thread.start()
            threads.append(thread)
            assert opened.acquire(timeout=DEADLINE), "a client could not connect"
            spread = wait_until(
                lambda: (lambda n: n if sum(n) == len(threads) else None)(
                    clients_per_worker(workers, supervisor.port)
                ),
                DEADLINE,
                "the client's connection to show on a worker",
            )
            if min(spread) >= 2 and len(threads) >= 8:
                break
            assert len(threads) < 200, f"the clients all went to one worker: {spread}"
        started = httpx.post(f"{supervisor.url}/tasks/ExampleTask/{pk}/start", timeout=DEADLINE)
        assert started.status_code == 202, started.text
        for thread in threads:
            thread.join(DEADLINE)
    finally:
        stop.set()
    assert all(events[-1:] == ["complete"] for events in received), received
    assert len({tuple(events) for events in received}) == 1, (
        f"clients on different workers saw different events: {received}"
    )

    supervisor.send_signal(signal.SIGTERM)
    assert supervisor.wait() == 0, supervisor.describe()
    assert not any(worker.is_running() for worker in workers)


@pytest.mark.timeout(90)
def test_worker_when_killed_after_it_started_then_supervisor_starts_another(
    redis_env: dict[str, str], start_server: Any, wait_until: Any
) -> None:
    supervisor = start_server("--workers", "2", env=redis_env)
    victim, survivor = workers_of(supervisor, 2, wait_until)
    # A worker that dies at once is taken to be misconfigured and left dead;
    # one that has served MIN_UPTIME is started again. The supervisor counts
    # from its log line saying the worker started (the process's create_time
    # comes from a boot time in whole seconds, and a loaded machine may take a
    # while from fork to that line): time since we saw the line is a lower
    # bound of the supervisor's count, on the same monotonic clock.
    wait_until(
        lambda: f"started (pid {victim.pid})" in supervisor.text("stderr"),
        DEADLINE,
        "the supervisor to log the worker's start",
    )
    seen = time.monotonic()
    wait_until(lambda: time.monotonic() - seen > MIN_UPTIME, DEADLINE, "the worker to settle")
    victim.send_signal(signal.SIGKILL)
    wait_until(
        lambda: victim.pid not in {w.pid for w in workers_of(supervisor, 2, wait_until)},
        DEADLINE,
        "a new worker in the dead one's place",
    )
    assert httpx.get(f"{supervisor.url}/health", timeout=DEADLINE).text == "OK"
    assert "exited with -9; starting it again" in supervisor.text("stderr")
    assert survivor.is_running()
    supervisor.send_signal(signal.SIGTERM)
    assert supervisor.wait() == 0, supervisor.describe()
