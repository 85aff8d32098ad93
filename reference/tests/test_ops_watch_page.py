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
import signal
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


#: Records every text ``#connection`` and ``#notice`` show, once the page has loaded,
#: in ``window.seen``: what a test cannot catch with a wait, a state that came and went.
RECORDER = """
window.seen = { connection: [], notice: [] };
document.addEventListener("DOMContentLoaded", () => {
  for (const name of Object.keys(window.seen)) {
    const element = document.getElementById(name);
    if (element === null) continue;
    const note = () => window.seen[name].push(element.textContent);
    note();
    new MutationObserver(note).observe(element, { childList: true, characterData: true });
  }
});
"""


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context()
    opened = context.new_page()
    opened.add_init_script(RECORDER)
    errors: list[str] = []
    opened.on("pageerror", lambda error: errors.append(str(error)))
    # A script or style the page's Content-Security-Policy blocks is a console error.
    opened.on(
        "console",
        lambda message: (
            errors.append(message.text)
            if message.type == "error" and "Content Security Policy" in message.text
            else None
        ),
    )
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


def created(run: Any, server: Any, kind: str, *extra: str) -> None:
    """``manage.py create_task``: a task of ``kind``, started unless ``--no-start``."""
    made = run("manage.py", "create_task", "--type", kind, "--server", server.url, *extra)
    assert made.returncode == 0, made.stderr


def shown(page: Any, attribute: str) -> list[str | None]:
    """``attribute`` of each event the page lists, in its order."""
    events = page.locator("#events li.event")
    return [events.nth(i).get_attribute(attribute) for i in range(events.count())]


def buttons(page: Any) -> dict[str, bool]:
    """Which of the command buttons the page shows."""
    return {name: page.locator(f"#{name}").is_visible() for name in ("start", "cancel", "retry")}


ISO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?[+-]\d\d:\d\d")


def test_page_when_task_runs_then_events_appear_live_and_it_stops_at_the_end(
    watched_server: Any,
    run: Any,
    page: Any,
    database: Path,
    status: Callable[[str, int], str | None],
) -> None:
    from playwright.sync_api import expect

    created(run, watched_server, "continue")
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
    assert shown(page, "data-type") == ["started", "final", "complete"]
    assert shown(page, "data-id") == ["1", "2", "3"]
    expect(page.locator("#status")).to_have_text("SUCCESSFUL")
    assert status("ContinueTask", 1) == "SUCCESSFUL"
    # Each event shows when it was sent: the time, and the timestamp in full.
    stamps = page.locator("#events li.event time")
    expect(stamps).to_have_count(3)
    for i in range(3):
        assert ISO.fullmatch(stamps.nth(i).get_attribute("datetime") or ""), stamps.nth(i)
        assert re.fullmatch(r"\d\d:\d\d:\d\d", stamps.nth(i).inner_text()), stamps.nth(i)

    # The terminal event closes the stream at once: never "reconnecting", no
    # reconnect to be told 204, and nothing left to press.
    expect(page.locator("#connection")).to_have_text("closed", timeout=DEADLINE_MS)
    assert page.evaluate("window.taskStream.readyState") == 2
    assert "reconnecting" not in page.evaluate("window.seen.connection")
    assert metric(watched_server, 'streaming_stream_requests_total{code="200"}') == 1.0
    assert buttons(page) == {"start": False, "cancel": False, "retry": False}
    expect(events).to_have_count(3)


def test_page_when_cancel_clicked_then_task_cancelled_and_the_notice_goes_with_it(
    watched_server: Any, run: Any, page: Any, status: Callable[[str, int], str | None]
) -> None:
    from playwright.sync_api import expect

    created(run, watched_server, "continue")
    page.goto(f"{watched_server.url}/tasks/ContinueTask/1")
    events = page.locator("#events li.event")
    expect(events.nth(0)).to_have_attribute("data-type", "started", timeout=DEADLINE_MS)
    assert buttons(page) == {"start": False, "cancel": True, "retry": False}

    page.locator("#cancel").click()
    expect(events.nth(1)).to_have_attribute("data-type", "cancelled", timeout=DEADLINE_MS)
    expect(events.nth(1)).to_contain_text("cancelled from the watch page")
    expect(page.locator("#status")).to_have_text("CANCELLED")
    assert status("ContinueTask", 1) == "CANCELLED"
    expect(page.locator("#connection")).to_have_text("closed", timeout=DEADLINE_MS)
    # "Cancel requested." no longer holds once the task is CANCELLED.
    expect(page.locator("#notice")).to_be_empty()
    expect(page.locator("#retry")).to_be_visible()
    assert buttons(page) == {"start": False, "cancel": False, "retry": True}


def test_page_when_buttons_clicked_then_start_cancel_and_retry_where_the_status_allows(
    watched_server: Any,
    run: Any,
    page: Any,
    database: Path,
    status: Callable[[str, int], str | None],
) -> None:
    from playwright.sync_api import expect

    created(run, watched_server, "continue", "--no-start")
    page.goto(f"{watched_server.url}/tasks/ContinueTask/1")
    expect(page.locator("#connection")).to_have_text("live", timeout=DEADLINE_MS)
    expect(page.locator("#status")).to_have_text("READY")
    assert buttons(page) == {"start": True, "cancel": True, "retry": False}

    page.locator("#start").click()
    events = page.locator("#events li.event")
    expect(events.nth(0)).to_have_attribute("data-type", "started", timeout=DEADLINE_MS)
    expect(page.locator("#status")).to_have_text("RUNNING")
    expect(page.locator("#start")).to_be_hidden()
    assert buttons(page) == {"start": False, "cancel": True, "retry": False}

    page.locator("#cancel").click()
    expect(page.locator("#status")).to_have_text("CANCELLED", timeout=DEADLINE_MS)
    expect(page.locator("#retry")).to_be_visible()
    assert buttons(page) == {"start": False, "cancel": False, "retry": True}
    expect(page.locator("#connection")).to_have_text("closed", timeout=DEADLINE_MS)

    # A retry is a new run on the same page: its stream opens again after the
    # events shown, and the ids go on from there.
    page.locator("#retry").click()
    expect(events).to_have_count(3, timeout=DEADLINE_MS)
    expect(page.locator("#status")).to_have_text("RUNNING")
    expect(page.locator("#connection")).to_have_text("live", timeout=DEADLINE_MS)
    assert shown(page, "data-type") == ["started", "cancelled", "started"]
    assert shown(page, "data-id") == ["1", "2", "3"]
    assert buttons(page) == {"start": False, "cancel": True, "retry": False}
    set_continue(database, 1)
    expect(page.locator("#status")).to_have_text("SUCCESSFUL", timeout=DEADLINE_MS)
    expect(page.locator("#connection")).to_have_text("closed", timeout=DEADLINE_MS)
    assert shown(page, "data-type")[-2:] == ["final", "complete"]
    assert buttons(page) == {"start": False, "cancel": False, "retry": False}
    assert status("ContinueTask", 1) == "SUCCESSFUL"
    expect(page.locator("#notice")).to_be_empty()


def test_page_when_task_reports_steps_then_a_progress_bar_follows_them(
    watched_server: Any, run: Any, page: Any
) -> None:
    from playwright.sync_api import expect

    created(run, watched_server, "example", "--no-start", "--step-delay", "1")
    page.goto(f"{watched_server.url}/tasks/ExampleTask/1")
    expect(page.locator("#connection")).to_have_text("live", timeout=DEADLINE_MS)
    bar = page.locator("#progress progress")
    expect(page.locator("#progress")).to_be_hidden()  # no event has said how far yet
    page.locator("#start").click()
    expect(bar).to_have_attribute("value", "1", timeout=DEADLINE_MS)
    expect(bar).to_have_attribute("max", "3")
    expect(page.locator("#progress")).to_be_visible()
    expect(page.locator("#progress-label")).to_have_text("1 / 3")
    expect(bar).to_have_attribute("value", "3", timeout=DEADLINE_MS)
    expect(page.locator("#progress-label")).to_have_text("3 / 3")
    expect(page.locator("#status")).to_have_text("SUCCESSFUL", timeout=DEADLINE_MS)


def test_page_when_task_ended_before_it_opened_then_its_history_with_times_and_progress(
    watched_server: Any,
    run: Any,
    page: Any,
    status: Callable[[str, int], str | None],
    wait_until: Callable[..., Any],
) -> None:
    from playwright.sync_api import expect

    created(run, watched_server, "example", "--step-delay", "0")
    wait_until(lambda: status("ExampleTask", 1) == "SUCCESSFUL", 10, "the task to succeed")
    expected = ["start", "progress", "progress", "progress", "complete"]

    def check_history() -> None:
        expect(page.locator("#status")).to_have_text("SUCCESSFUL")
        expect(page.locator("#events li.event")).to_have_count(5, timeout=DEADLINE_MS)
        assert shown(page, "data-type") == expected
        assert shown(page, "data-id") == ["1", "2", "3", "4", "5"]
        stamps = page.locator("#events li.event time")
        expect(stamps).to_have_count(5)
        for i in range(5):
            assert ISO.fullmatch(stamps.nth(i).get_attribute("datetime") or "")
        expect(page.locator("#progress progress")).to_have_attribute("value", "3")
        expect(page.locator("#progress-label")).to_have_text("3 / 3")
        # A finished task whose ending the page shows needs no stream at all.
        expect(page.locator("#connection")).to_have_text("closed")
        assert buttons(page) == {"start": False, "cancel": False, "retry": False}

    page.goto(f"{watched_server.url}/tasks/ExampleTask/1")
    check_history()
    first = page.locator("#events li.event time").evaluate_all(
        "times => times.map(t => t.dateTime)"
    )
    assert metric(watched_server, 'streaming_stream_requests_total{code="200"}') == 0.0

    # After a restart the server's memory is empty: the history comes from the event log.
    watched_server.send_signal(signal.SIGTERM)
    assert watched_server.wait() == 0, watched_server.describe()
    watched_server.start_blocking()
    page.reload()
    check_history()
    again = page.locator("#events li.event time").evaluate_all(
        "times => times.map(t => t.dateTime)"
    )
    assert again == first


def test_page_when_the_server_restarts_under_it_then_a_notice_until_it_is_consistent_again(
    watched_server: Any, run: Any, page: Any, status: Callable[[str, int], str | None]
) -> None:
    from playwright.sync_api import expect

    created(run, watched_server, "continue")
    page.goto(f"{watched_server.url}/tasks/ContinueTask/1")
    events = page.locator("#events li.event")
    expect(events.nth(0)).to_have_attribute("data-type", "started", timeout=DEADLINE_MS)
    expect(page.locator("#connection")).to_have_text("live", timeout=DEADLINE_MS)
    port = watched_server.port

    # The drain interrupts the task (it never ends by itself) and says farewell.
    watched_server.send_signal(signal.SIGTERM)
    notice = page.locator("#notice")
    expect(notice).to_have_text("The server is restarting; reconnecting.", timeout=DEADLINE_MS)
    expect(page.locator("#connection")).to_have_text("reconnecting")
    assert watched_server.wait() == 0, watched_server.describe()
    assert status("ContinueTask", 1) == "INTERRUPTED"
    watched_server.start_blocking()
    assert watched_server.port == port, "another process took the server's port"

    # Back: the page reconnects, is told how the run ended, and says no more
    # than holds: INTERRUPTED, the stream closed, no restart notice.
    expect(page.locator("#status")).to_have_text("INTERRUPTED", timeout=DEADLINE_MS)
    expect(events.last).to_have_attribute("data-type", "interrupted")
    expect(page.locator("#connection")).to_have_text("closed", timeout=DEADLINE_MS)
    expect(notice).to_be_empty()
    assert "The server is restarting; reconnecting." in page.evaluate("window.seen.notice")
    assert buttons(page) == {"start": False, "cancel": False, "retry": True}


def test_page_when_its_run_was_lost_with_its_process_then_it_says_what_it_waits_for(
    start_server_to_kill: Any, env: dict[str, str], run: Any, page: Any
) -> None:
    from playwright.sync_api import expect

    # A lease long enough for the restart to come up while it still holds.
    server = start_server_to_kill(env={**env, **SERVER_SETTINGS, "STREAMING_LEASE": "10"})
    created(run, server, "continue")
    page.goto(f"{server.url}/tasks/ContinueTask/1")
    expect(page.locator("#connection")).to_have_text("live", timeout=DEADLINE_MS)
    port = server.port

    server.stop_blocking(signal.SIGKILL)
    server.start_blocking()
    assert server.port == port, "another process took the server's port"

    notice = page.locator("#notice")
    expect(notice).to_contain_text("This task's run looks lost", timeout=DEADLINE_MS)
    expect(notice).to_contain_text("has exited")
    expect(page.locator("#status")).to_have_text("INTERRUPTED", timeout=DEADLINE_MS)
    expect(notice).to_be_empty()


def test_index_when_opened_then_it_lists_tasks_newest_first_filters_and_links_to_each(
    watched_server: Any, run: Any, page: Any
) -> None:
    from playwright.sync_api import expect

    created(run, watched_server, "example", "--no-start")
    created(run, watched_server, "continue", "--no-start")
    response = page.goto(f"{watched_server.url}/")
    assert response is not None and response.status == 200
    tasks = page.locator("#tasks tr.task")
    expect(tasks).to_have_count(2)
    assert [tasks.nth(i).get_attribute("data-kind") for i in range(2)] == [
        "ContinueTask",
        "ExampleTask",
    ]
    page.locator("#filters a", has_text="CANCELLED").click()
    expect(page.locator("#tasks tr.task")).to_have_count(0)
    expect(page.locator("body")).to_contain_text("No tasks")
    page.locator("#filters a", has_text="ExampleTask").click()
    expect(page).to_have_url(re.compile(r"/\?kind=ExampleTask&status=CANCELLED$"))
    page.locator("#filters a", has_text="any status").click()
    expect(page.locator("#tasks tr.task")).to_have_count(1)

    page.locator("#tasks a", has_text="ExampleTask").click()
    expect(page).to_have_url(f"{watched_server.url}/tasks/ExampleTask/1")
    expect(page.locator("#status")).to_have_text("READY")
    page.locator("#index").click()
    expect(page.locator("#tasks tr.task")).to_have_count(2)


def test_page_when_tokens_are_required_then_a_handed_out_url_watches_and_acts(
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
    made = run("manage.py", "create_task", "--type", "continue", "--no-start")
    assert made.returncode == 0, made.stderr

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
    assert httpx.post(f"{server.url}/tasks/ContinueTask/1/start", timeout=10).status_code == 401
    listed = page.goto(f"{server.url}/")
    assert listed is not None and listed.status == 401

    # The buttons send the page's token: it allows start, not cancel.
    to_start = handed_out("['stream', 'start']")
    assert re.fullmatch(r"/tasks/ContinueTask/1\?token=[\w%.:-]+", to_start), to_start
    page.goto(server.url + to_start)
    expect(page.locator("#status")).to_have_text("READY", timeout=DEADLINE_MS)
    expect(page.locator("#connection")).to_have_text("live", timeout=DEADLINE_MS)
    page.locator("#start").click()
    events = page.locator("#events li.event")
    expect(events.nth(0)).to_have_attribute("data-type", "started", timeout=DEADLINE_MS)
    expect(page.locator("#status")).to_have_text("RUNNING")
    page.locator("#cancel").click()
    expect(page.locator("#notice")).to_contain_text("Cancel refused (403)", timeout=DEADLINE_MS)
    expect(page.locator("#notice")).to_contain_text("allows start, stream on ContinueTask 1")
    assert status("ContinueTask", 1) == "RUNNING"

    # The list, with the same token, shows the task it allows, and links to it with the token.
    page.locator("#index").click()
    expect(page.locator("#tasks tr.task")).to_have_count(1)
    page.locator("#tasks a", has_text="ContinueTask").click()
    expect(page).to_have_url(server.url + to_start)

    page.goto(server.url + handed_out("['stream', 'cancel']"))
    expect(events.nth(0)).to_have_attribute("data-type", "started", timeout=DEADLINE_MS)
    page.locator("#cancel").click()
    expect(events.nth(1)).to_have_attribute("data-type", "cancelled", timeout=DEADLINE_MS)
    expect(page.locator("#status")).to_have_text("CANCELLED")
    assert status("ContinueTask", 1) == "CANCELLED"
