"""What the watch pages stand on, over HTTP without a browser: the task list (``GET /``),
a refused cancel's reason, a stream resumed from its query, a task's kept history.

Each test serves the reference's app with uvicorn on 127.0.0.1 and talks to it
over a real socket, on a real SQLite database. uvicorn trusts
``X-Forwarded-For`` from 127.0.0.1, as from a proxy on the same machine: tests
use it to be a client on another machine. The browser's side of these is in
``test_ops_watch_page.py``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import html
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from conformance.clients import http_client, serve_asgi
from conformance.waiting import eventually

pytestmark = [pytest.mark.timeout(30), pytest.mark.django_db(transaction=True)]

REMOTE = {"x-forwarded-for": "203.0.113.7"}
JSON = {"content-type": "application/json"}
ROW = re.compile(r'<tr class="task" data-kind="(\w+)" data-id="(\d+)" data-status="(\w+)">')


@contextlib.asynccontextmanager
async def served(coordinator: Any, **settings: Any) -> AsyncIterator[httpx.AsyncClient]:
    """The app with ``settings`` replacing the coordinator's, and a client of it."""
    from streaming.server import make_app

    config = dataclasses.replace(coordinator.config, **settings)
    async with serve_asgi(make_app(coordinator, config=config)) as url:
        async with http_client(url, streaming=True) as http:
            yield http


async def created(model: Any, count: int, start: datetime, **fields: Any) -> list[Any]:
    """``count`` tasks of ``model``, made a minute apart from ``start`` on."""
    tasks = []
    for i in range(count):
        task = await model.objects.acreate(**fields)
        when = start + timedelta(minutes=i)
        await model.objects.filter(pk=task.pk).aupdate(created_at=when)
        tasks.append(task)
    return tasks


def rows(page: httpx.Response) -> list[tuple[str, int, str]]:
    """The tasks a list page shows, in its order: (kind, id, status)."""
    assert page.status_code == 200, page.text
    return [(kind, int(pk), status) for kind, pk, status in ROW.findall(page.text)]


def link(page: httpx.Response, rel: str) -> str | None:
    found = re.search(rf'<a rel="{rel}" href="([^"]*)"', page.text)
    return html.unescape(found[1]) if found else None


async def finished(coordinator: Any, model: Any, **fields: Any) -> Any:
    """A task of ``model`` that has run to its end on ``coordinator``."""
    task = await model.objects.acreate(**fields)
    assert await coordinator.start_task(model, task.pk)

    async def ended() -> bool:
        return (await model.objects.aget(pk=task.pk)).status == "SUCCESSFUL"

    await eventually(ended, timeout=10, what=f"{model.__name__} {task.pk} to succeed")
    return task


# -- the task list ----------------------------------------------------------------------


@pytest.mark.asyncio
async def test_index_when_tasks_of_several_kinds_then_newest_first_each_linked_to_its_page(
    coordinator: Any,
) -> None:
    from streaming.models import ContinueTask, ExampleTask

    start = datetime(2026, 1, 1, tzinfo=UTC)
    old, new = await created(ExampleTask, 2, start)
    (middle,) = await created(ContinueTask, 1, start + timedelta(seconds=30))
    async with served(coordinator) as http:
        page = await http.get("/")
    assert rows(page) == [
        ("ExampleTask", new.pk, "READY"),
        ("ContinueTask", middle.pk, "READY"),
        ("ExampleTask", old.pk, "READY"),
    ]
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    assert page.headers["content-security-policy"].startswith("default-src 'none'")
    for kind, pk in (("ExampleTask", new.pk), ("ContinueTask", middle.pk)):
        assert f'href="/tasks/{kind}/{pk}"' in page.text
    assert '<time datetime="2026-01-01T00:01:00+00:00">' in page.text


@pytest.mark.asyncio
async def test_index_when_filtered_and_paginated_then_only_those_a_page_at_a_time(
    coordinator: Any,
) -> None:
    from streaming.models import ContinueTask, ExampleTask

    start = datetime(2026, 1, 1, tzinfo=UTC)
    examples = await created(ExampleTask, 5, start)
    await created(ContinueTask, 1, start + timedelta(hours=1))
    for task in examples[1:3]:
        await ExampleTask.objects.filter(pk=task.pk).aupdate(status="CANCELLED")
    newest = [task.pk for task in reversed(examples)]
    async with served(coordinator) as http:
        kind = await http.get("/?kind=ExampleTask")
        cancelled = await http.get("/?status=CANCELLED")
        both = await http.get("/?kind=ContinueTask&status=CANCELLED")
        first = await http.get("/?kind=ExampleTask&per_page=2")
        second = await http.get(link(first, "next") or "(no next link)")
        last = await http.get("/?kind=ExampleTask&per_page=2&page=3")
    assert [pk for _, pk, _ in rows(kind)] == newest
    assert rows(cancelled) == [
        ("ExampleTask", examples[2].pk, "CANCELLED"),
        ("ExampleTask", examples[1].pk, "CANCELLED"),
    ]
    assert rows(both) == [] and "No tasks" in both.text
    assert [pk for _, pk, _ in rows(first)] == newest[:2] and link(first, "prev") is None
    assert link(first, "next") == "/?kind=ExampleTask&per_page=2&page=2"
    assert [pk for _, pk, _ in rows(second)] == newest[2:4]
    assert link(second, "prev") == "/?kind=ExampleTask&per_page=2&page=1"
    assert [pk for _, pk, _ in rows(last)] == newest[4:] and link(last, "next") is None


@pytest.mark.parametrize(
    ("query", "reason"),
    [
        ("kind=Nope", "Unknown kind 'Nope'. Known kinds: "),
        ("status=DONE", "Unknown status 'DONE': use one of READY, RUNNING, SUCCESSFUL"),
        ("page=0", "page must be a whole number from 1, got '0'."),
        ("page=two", "page must be a whole number from 1, got 'two'."),
        ("per_page=101", "per_page must be a whole number from 1 to 100, got '101'."),
        ("page=1000", "The list goes back 10000 tasks"),
        ("sort=new", "Unknown parameter 'sort': the list takes kind, status, page, per_page"),
    ],
    ids=["kind", "status", "page-zero", "page-word", "per-page", "too-deep", "unknown"],
)
@pytest.mark.asyncio
async def test_index_when_a_filter_is_bad_then_400_saying_why(
    coordinator: Any, query: str, reason: str
) -> None:
    async with served(coordinator) as http:
        answer = await http.get(f"/?{query}")
    assert answer.status_code == 400, answer.text
    assert reason in answer.text and "Traceback" not in answer.text, answer.text


@pytest.mark.asyncio
async def test_index_when_asked_from_elsewhere_then_its_kinds_are_not_named(
    coordinator: Any,
) -> None:
    from streaming.ops.policy import AllowAll

    async with served(coordinator, authorization=AllowAll()) as http:
        answer = await http.get("/?kind=Nope", headers=REMOTE)
    assert (answer.status_code, answer.text) == (400, "Unknown kind 'Nope'.")


@pytest.mark.asyncio
async def test_index_when_the_request_is_refused_before_the_list_then_as_the_watch_page_is(
    coordinator: Any,
) -> None:
    from streaming.models import ExampleTask

    task = await ExampleTask.objects.acreate()
    async with served(coordinator, stream_burst=2, streams_per_second=0.01) as http:
        posted = await http.post("/")
        host = await http.get("/", headers={"host": "evil.example"})
        remote = await http.get("/", headers=REMOTE)
        watch = await http.get(f"/tasks/ExampleTask/{task.pk}", headers=REMOTE)
        # This machine's client: a list and a watch page spend its burst of two.
        listed = await http.get("/")
        watched = await http.get(f"/tasks/ExampleTask/{task.pk}")
        limited = await http.get("/")
    assert posted.status_code == 405 and "Use GET" in posted.text
    assert host.status_code == 400 and "evil.example" in host.text
    # The default policy refuses another machine's client the list as it does a task's page.
    assert (remote.status_code, remote.text) == (403, watch.text)
    assert "203.0.113.7" in remote.text
    # The list spends from the same bucket as the watch pages and streams.
    assert (listed.status_code, watched.status_code) == (200, 200)
    assert limited.status_code == 429 and limited.headers["retry-after"], limited.text


@pytest.mark.asyncio
async def test_index_when_tokens_are_required_then_it_lists_what_the_token_may_watch(
    coordinator: Any,
) -> None:
    from streaming.models import ExampleTask
    from streaming.ops.policy import SignedTokens, task_token

    mine, other = await ExampleTask.objects.acreate(), await ExampleTask.objects.acreate()
    token = task_token(mine, actions=["stream", "cancel"])
    async with served(coordinator, authorization=SignedTokens()) as http:
        bare = await http.get("/")
        listed = await http.get("/", params={"token": token})
        headed = await http.get("/", headers={"authorization": f"Bearer {token}"})
    assert bare.status_code == 401 and "A task token is needed" in bare.text, bare.text
    assert rows(listed) == rows(headed) == [("ExampleTask", mine.pk, "READY")]
    assert str(other.pk) not in re.findall(r'data-id="(\d+)"', listed.text)
    # Its links carry the token on, to the task's page and to the list's other views.
    quoted = html.escape(str(httpx.QueryParams({"token": token})))
    assert f'href="/tasks/ExampleTask/{mine.pk}?{quoted}"' in listed.text, listed.text
    assert f'href="/?status=READY&amp;{quoted}"' in listed.text


# -- a refused cancel says why ------------------------------------------------------------


@pytest.mark.asyncio
async def test_cancel_when_the_task_already_ended_then_false_with_the_reason(
    coordinator: Any,
) -> None:
    from streaming.models import ExampleTask

    done = await finished(coordinator, ExampleTask, step_delay=0)
    ready = await ExampleTask.objects.acreate()
    async with served(coordinator) as http:
        late = await http.post(f"/tasks/ExampleTask/{done.pk}/cancel", headers=JSON)
        first = await http.post(f"/tasks/ExampleTask/{ready.pk}/cancel", headers=JSON)
        again = await http.post(f"/tasks/ExampleTask/{ready.pk}/cancel", headers=JSON)
    assert (late.status_code, late.json()) == (
        200,
        {
            "cancelled": False,
            "reason": f"ExampleTask {done.pk} already ended SUCCESSFUL: only a READY or "
            "RUNNING task can be cancelled.",
        },
    )
    assert first.json() == {"cancelled": True}, first.text
    assert again.json()["cancelled"] is False
    assert again.json()["reason"].startswith(f"ExampleTask {ready.pk} already ended CANCELLED")


# -- a stream resumed from its query --------------------------------------------------------


async def _events(response: httpx.Response) -> list[tuple[str, int]]:
    """(type, id) of each event of an SSE response, to its end."""
    found: list[tuple[str, int]] = []
    kind = ""
    async for line in response.aiter_lines():
        if line.startswith("event: "):
            kind = line.removeprefix("event: ")
        elif line.startswith("id: "):
            found.append((kind, int(line.removeprefix("id: "))))
    return found


@pytest.mark.asyncio
async def test_stream_when_last_event_id_is_in_the_query_then_it_resumes_and_the_header_wins(
    coordinator: Any,
) -> None:
    from streaming.models import ExampleTask

    task = await finished(coordinator, ExampleTask, step_delay=0)
    path = f"/stream/ExampleTask/{task.pk}"
    async with served(coordinator) as http:
        async with http.stream("GET", f"{path}?last_event_id=2") as resumed:
            after_two = await _events(resumed)
        async with http.stream(
            "GET", f"{path}?last_event_id=2", headers={"last-event-id": "4"}
        ) as reconnected:
            after_four = await _events(reconnected)
        ended = await http.get(f"{path}?last_event_id=5")
        bad = await http.get(f"{path}?last_event_id=two")
    assert after_two == [("progress", 3), ("progress", 4), ("complete", 5)]
    assert after_four == [("complete", 5)]
    assert (ended.status_code, ended.text) == (204, "")
    assert bad.status_code == 400 and "'two'" in bad.text, bad.text


# -- a task's kept history ------------------------------------------------------------------


@pytest.mark.asyncio
async def test_history_when_the_process_has_restarted_then_it_comes_from_the_event_log(
    coordinator: Any,
) -> None:
    from streaming.coordinator import Coordinator
    from streaming.models import ExampleTask

    task = await finished(coordinator, ExampleTask, step_delay=0)
    here = await coordinator.task_history(ExampleTask, task.pk)
    await coordinator.shutdown(1.0)  # writes what the event log holds
    fresh = Coordinator()
    try:
        later = await fresh.task_history(ExampleTask, task.pk)
    finally:
        await fresh.shutdown(1.0)
    for history in (here, later):
        assert history.status == "SUCCESSFUL"
        assert history.final is not None and history.final.id == 5
        assert [(m.event.type, m.event.id) for m in history.events] == [
            ("start", 1),
            ("progress", 2),
            ("progress", 3),
            ("progress", 4),
            ("complete", 5),
        ]
    assert [m.event.timestamp for m in later.events] == [m.event.timestamp for m in here.events]
