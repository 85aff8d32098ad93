"""The watch page (ops/watch.py) in a real headless browser: Chromium driven by Playwright.

The server is a real ``runserver_stream`` process; the browser loads
``/tasks/<Model>/<id>`` and its own ``EventSource`` streams the task. Every
wait is Playwright's own, for an element in a state, under a deadline.

Chromium comes from the system (``apt-get install chromium``) and Playwright
from the ``test`` extra; neither downloads anything. Without them these tests
skip, saying which is missing; under ``CI=true`` they fail instead.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx
import pytest

pytestmark = pytest.mark.timeout(90)

#: Milliseconds Playwright waits for what a test expects to see.
DEADLINE_MS = 20_000
#: A short reconnect delay: the browser comes back for the end sooner.
SERVER_SETTINGS = {"STREAMING_RETRY_MS": "200"}


def _unavailable(why: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{why}; CI runs the browser tests (.ci/run installs chromium).")
    pytest.skip(why)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless Chromium from the system, under Playwright."""
    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    if executable is None:
        _unavailable("chromium is not installed (apt-get install -y chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("playwright is not installed (pip install -e .[test])")
    with sync_playwright() as playwright:
        # As root (CI containers) Chromium refuses to start sandboxed.
        launched = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context()
    opened = context.new_page()
    errors: list[str] = []
    opened.on("pageerror", lambda error: errors.append(str(error)))
    try:
        yield opened
    finally:
        context.close()
    assert not errors, f"the page raised: {errors}"


@pytest.fixture
def watched_server(start_server: Callable[..., Any], env: dict[str, str]) -> Any:
    return start_server(env={**env, **SERVER_SETTINGS})


def set_continue(database: Path, pk: int) -> None:
    """What the guide does from a shell: let a ContinueTask go on."""
    with closing(sqlite3.connect(database, timeout=20)) as connection, connection:
        connection.execute(
            "UPDATE streaming_continuetask SET continue_field = 1 WHERE id = ?", (pk,)
        )


def metric(server: Any, line_start: str) -> float:
    for line in httpx.get(f"{server.url}/metrics", timeout=10).text.splitlines():
        if line.startswith(line_start + " "):
            return float(line.rpartition(" ")[2])
    return 0.0


def test_page_when_task_runs_then_events_appear_live_and_it_stops_at_the_end(
    watched_server: Any,
    run: Any,
    page: Any,
    database: Path,
    status: Callable[[str, int], str | None],
    wait_until: Callable[..., Any],
) -> None:
    from playwright.sync_api import expect

    created = run("manage.py", "create_task", "--type", "continue", "--server", watched_server.url)
    assert created.returncode == 0, created.stderr
    response = page.goto(f"{watched_server.url}/tasks/ContinueTask/1")
    assert response is not None and response.status == 200
    assert response.headers["content-security-policy"].startswith("default-src 'none'")
    events = page.locator("#events li.event")

    expect(page.locator("#connection")).to_have_text("live", timeout=DEADLINE_MS)
    expect(events).to_have_count(1, timeout=DEADLINE_MS)
    expect(events.nth(0)).to_have_attribute("data-type", "started")
    expect(page.locator("#status")).to_have_text("RUNNING")

    # Nothing is reloaded from here on: what appears came over the EventSource.
    set_continue(database, 1)
    expect(events).to_have_count(3, timeout=DEADLINE_MS)
    assert [events.nth(i).get_attribute("data-type") for i in range(3)] == [
        "started",
        "final",
        "complete",
    ]
    assert [events.nth(i).get_attribute("data-id") for i in range(3)] == ["1", "2", "3"]
    expect(page.locator("#status")).to_have_text("SUCCESSFUL")
    expect(page.locator("#cancel")).to_be_disabled()
    assert status("ContinueTask", 1) == "SUCCESSFUL"

    # The stream ended; the browser came back with Last-Event-ID 3, was told
    # 204, and its EventSource is closed for good.
    expect(page.locator("#connection")).to_have_text("closed", timeout=DEADLINE_MS)
    assert page.evaluate("window.taskStream.readyState") == 2
    ended = 'streaming_stream_requests_total{code="204"}'
    wait_until(lambda: metric(watched_server, ended) == 1.0, 10, "the server's 204")
    assert metric(watched_server, 'streaming_stream_requests_total{code="200"}') == 1.0
    expect(events).to_have_count(3)


def test_page_when_cancel_clicked_then_task_cancelled_and_everyone_sees_it(
    watched_server: Any, run: Any, page: Any, status: Callable[[str, int], str | None]
) -> None:
    from playwright.sync_api import expect

    created = run("manage.py", "create_task", "--type", "continue", "--server", watched_server.url)
    assert created.returncode == 0, created.stderr
    page.goto(f"{watched_server.url}/tasks/ContinueTask/1")
    events = page.locator("#events li.event")
    expect(events.nth(0)).to_have_attribute("data-type", "started", timeout=DEADLINE_MS)

    page.locator("#cancel").click()
    expect(page.locator("#notice")).to_have_text("Cancel requested.", timeout=DEADLINE_MS)
    expect(events.nth(1)).to_have_attribute("data-type", "cancelled", timeout=DEADLINE_MS)
    expect(events.nth(1)).to_contain_text("cancelled from the watch page")
    expect(page.locator("#status")).to_have_text("CANCELLED")
    assert status("ContinueTask", 1) == "CANCELLED"
    expect(page.locator("#connection")).to_have_text("closed", timeout=DEADLINE_MS)


def test_page_when_tokens_are_required_then_a_handed_out_url_watches_and_cancels(
    start_server: Callable[..., Any],
    env: dict[str, str],
    run: Any,
    page: Any,
    status: Callable[[str, int], str | None],
) -> None:
    from playwright.sync_api import expect

    # A key of its own: the server refuses to sign tokens with the public default.
    env = {**env, "DJANGO_SECRET_KEY": secrets.token_urlsafe(50)}
    policy = {"STREAMING_AUTHORIZATION": "streaming.ops.policy.SignedTokens"}
    server = start_server(env={**env, **SERVER_SETTINGS, **policy})
    created = run("manage.py", "create_task", "--type", "continue", "--no-start")
    assert created.returncode == 0, created.stderr

    def handed_out(actions: str) -> str:
        # What a Django view does: make the URL, with a token, for this user.
        made = run(
            "manage.py",
            "shell",
            "-c",
            "from streaming.models import ContinueTask; from streaming.ops import watch_url; "
            f"print(watch_url(ContinueTask.objects.get(pk=1), actions={actions}))",
            env=env,
        )
        assert made.returncode == 0, made.stderr
        return str(made.stdout.strip().splitlines()[-1])

    bare = page.goto(f"{server.url}/tasks/ContinueTask/1")
    assert bare is not None and bare.status == 401
    assert "A task token is needed to stream ContinueTask 1" in page.content()

    watch_only = handed_out("['stream']")
    assert re.fullmatch(r"/tasks/ContinueTask/1\?token=[\w%.:-]+", watch_only), watch_only
    page.goto(server.url + watch_only)
    expect(page.locator("#status")).to_have_text("READY", timeout=DEADLINE_MS)
    expect(page.locator("#connection")).to_have_text("live", timeout=DEADLINE_MS)
    started = httpx.post(f"{server.url}/tasks/ContinueTask/1/start", timeout=10)
    assert started.status_code == 401, started.text  # the server needs a token for this too
    start_token = handed_out("['start']").partition("?token=")[2]
    started = httpx.post(
        f"{server.url}/tasks/ContinueTask/1/start",
        headers={"authorization": f"Bearer {httpx.QueryParams('t=' + start_token)['t']}"},
        timeout=10,
    )
    assert started.status_code == 202, started.text
    events = page.locator("#events li.event")
    expect(events.nth(0)).to_have_attribute("data-type", "started", timeout=DEADLINE_MS)
    expect(page.locator("#status")).to_have_text("RUNNING")
    page.locator("#cancel").click()
    expect(page.locator("#notice")).to_contain_text("Cancel refused (403)", timeout=DEADLINE_MS)
    expect(page.locator("#notice")).to_contain_text("allows stream on ContinueTask 1, not cancel")
    assert status("ContinueTask", 1) == "RUNNING"

    page.goto(server.url + handed_out("['stream', 'cancel']"))
    expect(events.nth(0)).to_have_attribute("data-type", "started", timeout=DEADLINE_MS)
    page.locator("#cancel").click()
    expect(events.nth(1)).to_have_attribute("data-type", "cancelled", timeout=DEADLINE_MS)
    expect(page.locator("#status")).to_have_text("CANCELLED")
    assert status("ContinueTask", 1) == "CANCELLED"
