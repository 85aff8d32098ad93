"""What the server tells its operators: metrics (ops/metrics.py), logs (ops/logs.py), probes.

The structured-log tests run the real server process and read what it
writes to stderr; the metrics tests read real hub messages through the
counting source the server gives each stream, and ``/metrics`` over a socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import signal
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from conformance.clients import http_client, serve_asgi
from conformance.processes import free_port
from conformance.waiting import eventually

DEADLINE = 20.0
#: uvicorn takes the client's address from X-Forwarded-For sent from 127.0.0.1.
REMOTE = {"x-forwarded-for": "203.0.113.7"}


@contextlib.asynccontextmanager
async def served(coordinator: Any, **settings: Any) -> AsyncIterator[httpx.AsyncClient]:
    from streaming.server import make_app

    config = dataclasses.replace(coordinator.config, **settings)
    async with serve_asgi(make_app(coordinator, config=config)) as url:
        async with http_client(url, timeout=10) as http:
            yield http


def sample(metrics: Any, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)  # type: ignore[no-any-return]


# -- metrics ------------------------------------------------------------------------


def _event(number: int, type: str = "tick", key: str = "ContinueTask:1") -> Any:
    from streaming.events import Event

    model, _, pk = key.partition(":")
    return Event(number, type, {"n": number}, pk, model, "2026-01-01T00:00:00+00:00")


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_counted_source_when_client_overflows_then_overflow_counted_not_delivered(
    coordinator: Any,
) -> None:
    from streaming.hub import Hub
    from streaming.ops.metrics import CountedSource, Metrics

    metrics = Metrics.of(coordinator)
    assert Metrics.of(coordinator) is metrics and coordinator.on_publish == metrics.published
    hub = Hub(queue_size=2)
    hub.open("ContinueTask:1")
    keeping_up = CountedSource(hub.subscribe("ContinueTask:1"), metrics)
    slow = CountedSource(hub.subscribe("ContinueTask:1"), metrics)
    hub.publish("ContinueTask:1", _event(1))
    assert [m.event.id for m in keeping_up.take()] == [1]
    for number in (2, 3, 4):
        hub.publish("ContinueTask:1", _event(number))
    taken = slow.take()
    assert [m.event.type for m in taken] == ["overflow"] and slow.ended
    assert sample(metrics, "streaming_overflows_total") == 1.0
    assert sample(metrics, "streaming_events_delivered_total") == 1.0
    keeping_up.close()


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_counted_source_when_cancel_reaches_a_client_then_latency_observed_once_per_client(
    coordinator: Any,
) -> None:
    from streaming.hub import Hub
    from streaming.ops.metrics import CountedSource, Metrics

    metrics = Metrics.of(coordinator)
    hub = Hub()
    hub.open("ContinueTask:1")
    clients = [CountedSource(hub.subscribe("ContinueTask:1"), metrics) for _ in range(2)]
    metrics.cancel_asked("ContinueTask:1")
    hub.publish("ContinueTask:1", _event(1, "cancelled"), final=True)
    assert sample(metrics, "streaming_cancel_delivery_seconds_count") == 0.0
    for client in clients:
        assert [m.event.type for m in client.take()] == ["cancelled"]
    assert sample(metrics, "streaming_cancel_delivery_seconds_count") == 2.0
    assert sample(metrics, "streaming_events_delivered_total") == 2.0


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_metrics_when_scraped_then_tasks_by_kind_and_status_and_database_up(
    coordinator: Any,
) -> None:
    from streaming.models import ContinueTask, ExampleTask

    await ExampleTask.objects.acreate()
    await ExampleTask.objects.acreate(status="FAILED")
    await ContinueTask.objects.acreate()
    async with served(coordinator) as http:
        text = (await http.get("/metrics")).text
    assert 'streaming_tasks{kind="ExampleTask",status="READY"} 1.0' in text
    assert 'streaming_tasks{kind="ExampleTask",status="FAILED"} 1.0' in text
    assert 'streaming_tasks{kind="ContinueTask",status="RUNNING"} 0.0' in text
    assert "streaming_database_up 1.0" in text


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_metrics_when_scraped_from_another_machine_then_403_unless_it_sends_the_token(
    coordinator: Any,
) -> None:
    bearer = {"authorization": "Bearer s3cret-token"}
    async with served(coordinator, metrics_token="s3cret-token") as http:
        remote = await http.get("/metrics", headers=REMOTE)
        wrong = await http.get("/metrics", headers={**REMOTE, "authorization": "Bearer nope"})
        right = await http.get("/metrics", headers={**REMOTE, **bearer})
        local = await http.get("/metrics")
    async with served(coordinator) as http:  # no token set: no client elsewhere
        unset = await http.get("/metrics", headers={**REMOTE, "authorization": "Bearer None"})
    for refused in (remote, wrong, unset):
        assert refused.status_code == 403, refused.text
        assert "Authorization: Bearer <STREAMING_METRICS_TOKEN>" in refused.text
    for served_ in (right, local):
        assert served_.status_code == 200 and "streaming_open_streams" in served_.text
    assert 'streaming_requests_refused_total{reason="metrics"} 2.0' in local.text


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_unknown_model_when_asked_from_another_machine_then_404_without_the_models(
    coordinator: Any,
) -> None:
    async with served(coordinator) as http:
        remote = await http.get("/stream/Nope/1", headers=REMOTE)
        local = await http.get("/stream/Nope/1")
    assert (remote.status_code, remote.text) == (404, "Unknown task model 'Nope'.")
    assert (
        local.status_code == 404 and "Known models: " in local.text and "ExampleTask" in local.text
    )


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_metrics_when_many_scrape_at_once_then_one_count_serves_them_until_a_run_ends(
    coordinator: Any,
) -> None:
    # The finding: each scrape ran a COUNT ... GROUP BY per task model on the
    # ORM's one thread; with a million rows, 16 scrapers held every other
    # client's database work for seconds.
    from asgiref.sync import sync_to_async
    from django.db import connection
    from django.db.backends.signals import connection_created

    from streaming.coordinator import task_models
    from streaming.models import ExampleTask

    counts: list[str] = []

    def watch(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        if "COUNT(" in sql.upper() and "GROUP BY" in sql.upper():
            counts.append(sql)
        return execute(sql, params, many, context)

    # Django's own hooks: on the connection of the ORM's thread, where the
    # server's database calls run (on SQLite, the counts too), and on every
    # connection opened meanwhile (on PostgreSQL, each count has its own).
    wrappers = await sync_to_async(lambda: connection.execute_wrappers, thread_sensitive=True)()
    wrappers.append(watch)

    def watch_new(sender: Any, connection: Any, **kwargs: Any) -> None:
        if watch not in connection.execute_wrappers:  # the ORM thread's may connect now
            connection.execute_wrappers.append(watch)

    connection_created.connect(watch_new)
    kinds = len(task_models())
    try:
        async with served(coordinator) as http:
            for _ in range(3):
                answers = await asyncio.gather(*(http.get("/metrics") for _ in range(16)))
                assert {answer.status_code for answer in answers} == {200}
            assert len(counts) == kinds, f"48 scrapes counted {len(counts) // kinds} times"
            task = await ExampleTask.objects.acreate(step_delay=0)
            assert await coordinator.start_task(ExampleTask, task.pk)
            await eventually(
                lambda: ExampleTask.objects.filter(pk=task.pk, status="SUCCESSFUL").aexists(),
                what="the task to finish",
            )
            after = await asyncio.gather(*(http.get("/metrics") for _ in range(16)))
    finally:
        wrappers.remove(watch)
        connection_created.disconnect(watch_new)
    assert len(counts) == 2 * kinds, "a run that ended here makes the next scrape count again"
    for answer in after:
        assert 'streaming_tasks{kind="ExampleTask",status="SUCCESSFUL"} 1.0' in answer.text


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_metrics_when_the_count_is_slow_then_scrape_serves_last_counts_and_no_outage_logged(
    coordinator: Any,
    hold_orm_thread: Callable[[], Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    from streaming.ops.metrics import SCRAPE_DATABASE_TIMEOUT

    async with served(coordinator) as http:
        first = await http.get("/metrics")
        assert "streaming_database_up 1.0" in first.text
        coordinator.on_publish(_event(1, "complete", "ExampleTask:1"))  # a run ended here
        async with hold_orm_thread():  # the next count waits, as a slow one would
            began = asyncio.get_running_loop().time()
            slow = await http.get("/metrics")
            took = asyncio.get_running_loop().time() - began
    assert slow.status_code == 200 and took < SCRAPE_DATABASE_TIMEOUT + 1.5, took
    assert "streaming_database_up 1.0" in slow.text, "a slow count is not an outage"
    logged = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert not [m for m in logged if "metrics" in m], logged


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_metrics_when_turned_off_then_404_saying_so(coordinator: Any) -> None:
    async with served(coordinator, metrics=False) as http:
        response = await http.get("/metrics")
    assert (response.status_code, response.text) == (
        404,
        "Metrics are off (settings STREAMING['METRICS']).",
    )


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_drain_when_server_shuts_down_then_drains_counted_and_timed(coordinator: Any) -> None:
    import uvicorn

    from streaming.ops.metrics import Metrics
    from streaming.server import StreamServer, make_app

    server = StreamServer(uvicorn.Config(make_app(coordinator)), coordinator, grace=0.1)
    await server._drain_then_exit()
    metrics = Metrics.of(coordinator)
    assert sample(metrics, "streaming_shutdown_drains_total") == 1.0
    assert sample(metrics, "streaming_shutdown_drain_seconds_count") == 1.0


# -- probes -------------------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_ready_when_redis_bus_does_not_answer_then_503_naming_the_bus_while_live_200() -> (
    None
):
    from streaming.coordinator import Coordinator

    port = free_port()  # a port nothing listens on
    unreachable = Coordinator(redis_url=f"redis://127.0.0.1:{port}/0")
    try:
        async with served(unreachable) as http:
            ready, live, health = [await http.get(p) for p in ("/ready", "/live", "/health")]
            remote = await http.get("/ready", headers=REMOTE)
    finally:
        await unreachable.shutdown(0.1)
    assert ready.status_code == 503, ready.text
    assert ready.text.startswith("not ready: bus unavailable: Redis does not answer"), ready.text
    assert f"127.0.0.1:{port}" in ready.text
    # Another machine is told what is missing, not where it lives.
    assert (remote.status_code, remote.text) == (503, "not ready: bus unavailable")
    assert (live.status_code, health.status_code) == (200, 200)


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_ready_when_redis_bus_answers_then_200(redis_url: str) -> None:
    from streaming.bus import InMemoryBus
    from streaming.config import Config
    from streaming.coordinator import make_bus

    redis_bus = make_bus(Config(redis_url=redis_url))
    try:
        assert await redis_bus.problem() is None
    finally:
        await redis_bus.close()
    assert await InMemoryBus().problem() is None


# -- logs -------------------------------------------------------------------------------


def test_task_fields_when_record_names_a_task_then_kind_and_id_from_extra_task_or_args() -> None:
    from streaming.ops.logs import TaskFields

    def fields(record: logging.LogRecord) -> tuple[Any, Any, str]:
        TaskFields().filter(record)
        return record.task_kind, record.task_id, record.task  # type: ignore[attr-defined]

    def record(message: str, *args: Any, **extra: Any) -> logging.LogRecord:
        made = logging.LogRecord("streaming", logging.INFO, __file__, 1, message, args, None)
        made.__dict__.update(extra)
        return made

    assert fields(record("x", task_kind="ExampleTask", task_id="4")) == (
        "ExampleTask",
        "4",
        "ExampleTask:4",
    )
    assert fields(record("started %s", "ContinueTask:12")) == (
        "ContinueTask",
        "12",
        "ContinueTask:12",
    )
    assert fields(record("shutdown: %d told", 3)) == (None, None, "-")

    async def inside() -> tuple[Any, Any, str]:
        return fields(record("no key here"))

    async def main() -> tuple[Any, Any, str]:
        return await asyncio.create_task(inside(), name="streaming:record:BehaviourTask:9")

    assert asyncio.run(main()) == ("BehaviourTask", "9", "BehaviourTask:9")


@pytest.mark.timeout(60)
def test_server_when_task_fails_then_json_log_line_has_kind_id_and_traceback(
    env: dict[str, str], run: Any, start_server: Any, wait_until: Callable[..., Any]
) -> None:
    created = run(
        "manage.py",
        "shell",
        "-c",
        "from streaming.models import BehaviourTask; print(BehaviourTask.objects.create("
        "behaviour='conformance.behaviours:fail', fields={'message': 'boom on purpose'}).pk)",
    )
    assert created.returncode == 0, created.stderr
    pk = created.stdout.strip().splitlines()[-1]  # after what the shell says it imported
    server = start_server(env={**env, "STREAMING_LOG_FORMAT": "json"}, logs_tracebacks=True)
    url = server.url
    started = httpx.post(f"{url}/tasks/BehaviourTask/{pk}/start", timeout=DEADLINE)
    assert started.status_code == 202, started.text

    def failure() -> dict[str, Any] | None:
        for line in server.lines("stderr"):
            if line.startswith("{") and '"level": "ERROR"' in line:
                return json.loads(line)  # type: ignore[no-any-return]
        return None

    logged = wait_until(failure, DEADLINE, "the failure's log line")
    assert (logged["task_kind"], logged["task_id"]) == ("BehaviourTask", pk), logged
    assert logged["message"] == f"BehaviourTask:{pk} failed (attempt 1)", logged
    assert logged["traceback"].startswith("Traceback (most recent call last):"), logged
    assert logged["traceback"].endswith("ValueError: boom on purpose"), logged
    asked = [json.loads(line) for line in server.lines("stderr") if "asked by" in line]
    assert [(a["task_kind"], a["task_id"]) for a in asked] == [("BehaviourTask", pk)], asked
    assert server.stop_blocking(signal.SIGTERM) == 0, server.describe()


@pytest.mark.timeout(60)
def test_server_when_plain_logs_then_each_line_names_its_task(
    server: Any, run: Any, wait_until: Callable[..., Any]
) -> None:
    created = run(
        "manage.py", "create_task", "--type", "example", "--step-delay", "0", "--server", server.url
    )
    assert created.returncode == 0, created.stderr
    finished = "[ExampleTask:1]: finished ExampleTask:1: SUCCESSFUL"
    wait_until(lambda: finished in server.text("stderr"), DEADLINE, "the task to finish")
    assert "INFO streaming.coordinator [ExampleTask:1]: started ExampleTask:1" in server.text(
        "stderr"
    )


def test_access_log_when_a_request_carries_a_token_then_it_is_redacted(
    start_server: Callable[..., Any], wait_until: Callable[..., Any]
) -> None:
    server = start_server()
    secret = "eyJtIjoiRXhhbXBsZVRhc2siLCJ0IjoiMSJ9:1xaT:not-for-logs"
    for path in (f"/stream/ExampleTask/1?token={secret}", f"/live?a=1&TOKEN={secret}&b=2"):
        httpx.get(f"{server.url}{path}", timeout=10)
    wait_until(  # uvicorn writes its access lines to stdout
        lambda: sum("GET /" in line for line in server.lines("stdout")) >= 3,
        DEADLINE,
        "the access log lines",
    )
    logged = server.text("stdout") + server.text("stderr")
    assert secret not in logged and "not-for-logs" not in logged, logged
    assert "/stream/ExampleTask/1?token=[redacted]" in logged, logged
    assert "/live?a=1&TOKEN=[redacted]&b=2" in logged, logged
