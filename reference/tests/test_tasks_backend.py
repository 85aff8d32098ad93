"""``streaming.tasks.StreamingBackend``: Django's Tasks framework run by a streaming server.

Real processes: a ``runserver_stream`` on its own SQLite file, and the calls
of a Django user (``enqueue``, ``get_result``, ``cancel``) made from another
process, ``manage.py shell``, as a view or a cron job would make them. The
``@task`` functions are the reference project's (``streaming_project/tasks.py``).
"""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

DEADLINE = 20.0

pytestmark = pytest.mark.timeout(90)


def django(run: Callable[..., subprocess.CompletedProcess[str]], code: str) -> Any:
    """Run ``code`` in ``manage.py shell`` (another process); what it prints, as JSON."""
    result = run("manage.py", "shell", "--no-imports", "-c", code)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def enqueue(run: Callable[..., Any], call: str) -> str:
    """``call`` (``count.enqueue(3)``) from another process; the result id."""
    code = f"import json; from streaming_project.tasks import *; print(json.dumps({call}.id))"
    result_id: str = django(run, code)
    return result_id


def result_of(run: Callable[..., Any], result_id: str) -> dict[str, Any]:
    """``default_task_backend.get_result(result_id)``, read in another process."""
    code = f"""
import json
from streaming.tasks.compat import task_backends
r = task_backends["default"].get_result({result_id!r})
try:
    value = r.return_value
except ValueError as exc:
    value = f"raises: {{exc}}"
print(json.dumps({{
    "status": str(r.status), "return_value": value, "worker_ids": r.worker_ids,
    "errors": [[e.exception_class_path, e.traceback] for e in r.errors],
    "started": r.started_at is not None, "finished": r.finished_at is not None,
    "enqueued": r.enqueued_at is not None,
    "waited": (r.started_at - r.enqueued_at).total_seconds() if r.started_at else None,
}}))
"""
    found: dict[str, Any] = django(run, code)
    return found


def stream(
    base_url: str, result_id: str, headers: dict[str, str] | None = None
) -> list[dict[str, Any]]:
    """The events of ``GET /stream/tasks/<id>`` up to the terminal one (or a 204: none)."""
    events: list[dict[str, Any]] = []
    url = f"{base_url}/stream/tasks/{result_id}"
    with httpx.stream("GET", url, headers=headers or {}, timeout=DEADLINE) as response:
        if response.status_code == 204:
            return []
        assert response.status_code == 200, response.read()
        frame: dict[str, str] = {}
        for line in response.iter_lines():
            if line:
                name, _, value = line.partition(": ")
                frame[name] = value
                continue
            if "event" in frame:
                event = {
                    "id": int(frame["id"]),
                    "type": frame["event"],
                    **json.loads(frame["data"]),
                }
                events.append(event)
                if event["type"] in ("complete", "error", "cancelled", "timeout", "interrupted"):
                    return events
            frame = {}
    raise AssertionError(f"the stream ended without a terminal event: {events}")


def test_async_task_when_enqueued_from_another_process_then_the_server_runs_and_streams_it(
    run: Any, server: Any
) -> None:
    result_id = enqueue(run, "count.enqueue(3, 0.2)")
    # From the first event on, however late this client comes (the shell took a second).
    events = stream(server.url, result_id, {"Last-Event-ID": "0"})
    assert [e["type"] for e in events] == ["progress", "progress", "progress", "complete"], events
    assert [e["id"] for e in events] == [1, 2, 3, 4]
    assert events[0]["_model"] == "tasks" and str(events[0]["_task_id"]) == result_id
    assert events[-1]["counted"] == 3  # a returned mapping is sent with the ending, as a model's
    result = result_of(run, result_id)
    assert result["status"] == "SUCCESSFUL", result
    assert result["return_value"] == {"counted": 3}
    assert result["started"] and result["finished"] and result["enqueued"]
    assert len(result["worker_ids"]) == 1 and result["errors"] == []
    # Picked up within a second: polled every 0.5 s (and a loaded machine's slack).
    assert result["waited"] < 2.0, result


def test_sync_task_when_it_sends_progress_then_clients_get_it_and_its_return_value_is_kept(
    run: Any, server: Any
) -> None:
    result_id = enqueue(run, "count_sync.enqueue(2, 0.2)")
    events = stream(server.url, result_id, {"Last-Event-ID": "0"})
    assert [e["type"] for e in events] == ["progress", "progress", "complete"], events
    assert [e["step"] for e in events[:2]] == [1, 2]
    assert result_of(run, result_id)["return_value"] == 2


def test_late_join_and_resume_when_the_task_has_ended_then_latest_event_or_204(
    run: Any, server: Any
) -> None:
    result_id = enqueue(run, "count.enqueue(2, 0.1)")
    events = stream(server.url, result_id)
    late = stream(server.url, result_id)
    assert [e["type"] for e in late] == ["complete"] and late[0]["id"] == events[-1]["id"]
    resumed = stream(server.url, result_id, {"Last-Event-ID": "1"})
    assert [e["id"] for e in resumed] == [2, 3]
    assert stream(server.url, result_id, {"Last-Event-ID": str(events[-1]["id"])}) == []


def test_task_when_it_raises_then_failed_with_the_exception_and_its_traceback(
    run: Any, start_server: Any
) -> None:
    server = start_server(logs_tracebacks=True)  # the coordinator logs the failure
    result_id = enqueue(run, "divide.enqueue(1, 0)")
    events = stream(server.url, result_id)
    assert events[-1]["type"] == "error" and events[-1]["error_type"] == "ZeroDivisionError"
    result = result_of(run, result_id)
    assert result["status"] == "FAILED"
    assert result["return_value"] == "raises: Task failed"
    [(path, traceback)] = result["errors"]
    assert path == "builtins.ZeroDivisionError"
    assert "return a / b" in traceback and "ZeroDivisionError: division by zero" in traceback


def test_running_task_when_cancelled_over_http_then_cancelled_event_and_failed_with_cancelled_error(
    run: Any, server: Any
) -> None:
    result_id = enqueue(run, "count.enqueue(200, 0.1)")
    url = f"{server.url}/stream/tasks/{result_id}"
    with httpx.stream("GET", url, timeout=DEADLINE) as response:
        lines = response.iter_lines()
        while next(lines) != "event: progress":
            pass
        answer = httpx.post(f"{server.url}/tasks/tasks/{result_id}/cancel", timeout=DEADLINE)
        assert answer.status_code == 200 and answer.json()["cancelled"] is True, answer.text
        assert any(line == "event: cancelled" for line in lines)
    result = result_of(run, result_id)
    assert result["status"] == "FAILED"
    [(path, traceback)] = result["errors"]
    assert path == "asyncio.exceptions.CancelledError"
    assert "cancelled" in traceback
    code = "import json; from streaming.tasks import ending; print(json.dumps(ending({!r})))"
    ending = django(run, code.format(result_id))
    assert ending == "CANCELLED"


def test_deferred_task_when_cancelled_from_another_process_then_it_never_runs(
    run: Any, server: Any
) -> None:
    code = """
import json
from datetime import timedelta
from django.utils import timezone
from streaming.tasks import cancel, ending
from streaming_project.tasks import add
r = add.using(run_after=timezone.now() + timedelta(hours=1)).enqueue(1, 2)
print(json.dumps([r.id, cancel(r.id), cancel(r.id), ending(r.id)]))
"""
    result_id, first, second, ending = django(run, code)
    assert (first, second, ending) == (True, False, "CANCELLED")
    events = stream(server.url, result_id)
    assert [e["type"] for e in events] == ["cancelled"]
    assert result_of(run, result_id)["started"] is False


def test_watch_page_when_asked_for_a_task_then_served(run: Any, server: Any) -> None:
    result_id = enqueue(run, "add.enqueue(2, 3)")
    stream(server.url, result_id)
    page = httpx.get(f"{server.url}/tasks/tasks/{result_id}", timeout=DEADLINE)
    assert page.status_code == 200 and "SUCCESSFUL" in page.text, page.text[:500]
    assert httpx.get(f"{server.url}/stream/tasks/x1", timeout=DEADLINE).status_code == 404


@pytest.fixture
def redis_env(env: dict[str, str], redis_url: str) -> Iterator[dict[str, str]]:
    """``env`` with a Redis bus under a prefix of this test's own, removed afterwards."""
    import redis

    prefix = f"test-tasks-{uuid.uuid4().hex[:8]}"
    yield {**env, "STREAMING_REDIS_URL": redis_url, "STREAMING_REDIS_PREFIX": prefix}
    with redis.Redis.from_url(redis_url) as client:
        keys = list(client.scan_iter(match=f"{prefix}:*"))
        if keys:
            client.delete(*keys)


def test_two_workers_when_tasks_are_enqueued_then_each_runs_exactly_once(
    run: Any, start_server: Any, redis_env: dict[str, str], wait_until: Any
) -> None:
    supervisor = start_server("--workers", "2", env=redis_env)
    code = (
        "import json; from streaming_project.tasks import count; "
        "print(json.dumps([count.enqueue(2, 0.1).id for _ in range(8)]))"
    )
    ids = django(run, code)
    columns = '"status", "attempt", "worker_ids"'
    check = f"""
import json
from streaming.tasks.models import tasks
print(json.dumps(list(tasks.objects.filter(pk__in={ids!r}).values_list({columns}))))
"""

    def all_done() -> list[Any] | None:
        rows = django(run, check)
        return rows if all(status == "SUCCESSFUL" for status, _, _ in rows) else None

    rows = wait_until(all_done, 60, "eight tasks run by two workers")
    assert len(rows) == 8
    # One start each: a second claim of the same row would be attempt 2 or a second worker id.
    assert all(attempt == 1 and len(workers) == 1 for _, attempt, workers in rows), rows
    log = supervisor.describe()
    assert all(log.count(f"started tasks:{pk} ") == 1 for pk in ids), log


def test_running_task_when_cancelled_from_another_process_then_its_server_stops_it(
    run: Any, start_server: Any, env: dict[str, str]
) -> None:
    # A lease of 3 s: the owner's keeper reads the request every second.
    server = start_server(env={**env, "STREAMING_LEASE": "3"})
    result_id = enqueue(run, "count.enqueue(600, 0.1)")
    url = f"{server.url}/stream/tasks/{result_id}"
    with httpx.stream("GET", url, timeout=DEADLINE) as response:
        lines = response.iter_lines()
        while next(lines) != "event: progress":
            pass
        code = "import json; from streaming.tasks import cancel; print(json.dumps(cancel({!r})))"
        assert django(run, code.format(result_id)) is True
        assert any(line == "event: cancelled" for line in lines)
    result = result_of(run, result_id)
    assert result["status"] == "FAILED"
    assert result["errors"][-1][0] == "asyncio.exceptions.CancelledError"
