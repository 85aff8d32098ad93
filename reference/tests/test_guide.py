"""The testing guide's flows, with real processes: server, create_task, stream_client.

Timestamps are the only thing masked; every other character of what a user
sees is compared with the guide. Where a client must be listening before a
task starts, the ``relay`` fixture says when it is (see
tests/conftest.py); a client that joins later sees the task's latest event first.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
DEADLINE = 20.0
RULE = "=" * 60
TIMESTAMP_LINE = re.compile(r"    Timestamp: \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\+00:00")
EVENT_LINE = re.compile(r"\[(\d+)\] (Event: .+)")

#: The guide's stream for "Hello, World!", timestamps masked.
HELLO_EVENTS = """\
[1] Event: START
    Timestamp: <ts>
    message: Hello, World!
    total_steps: 3

[2] Event: PROGRESS
    Timestamp: <ts>
    step: 1
    total_steps: 3
    message: Step 1 of 3
    data: Processing step 1...

[3] Event: PROGRESS
    Timestamp: <ts>
    step: 2
    total_steps: 3
    message: Step 2 of 3
    data: Processing step 2...

[4] Event: PROGRESS
    Timestamp: <ts>
    step: 3
    total_steps: 3
    message: Step 3 of 3
    data: Processing step 3...

[5] Event: COMPLETE
    Timestamp: <ts>
    message: Task completed successfully
    total_steps: 3
"""

STARTED_BLOCK = """\
[1] Event: STARTED
    Timestamp: <ts>
    message: Waiting for signal...
    continue: False
"""

FINAL_BLOCKS = """\
[2] Event: FINAL
    Timestamp: <ts>
    message: Continue signal received
    continue: True

[3] Event: COMPLETE
    Timestamp: <ts>
    message: Task completed successfully
"""


def header(url: str) -> str:
    return f"{RULE}\nConnecting to: {url}\n{RULE}\n"


def footer(last: str, total: int) -> str:
    return f"{RULE}\nStream ended with: {last}\nTotal events received: {total}\n{RULE}"


def masked(text: str) -> str:
    """``text`` with each timestamp line checked (ISO 8601, UTC) and replaced by ``<ts>``."""
    lines = text.split("\n")
    for number, line in enumerate(lines):
        if line.startswith("    Timestamp: "):
            assert TIMESTAMP_LINE.fullmatch(line), f"not an ISO 8601 UTC timestamp: {line!r}"
            lines[number] = "    Timestamp: <ts>"
    return "\n".join(lines)


def event_blocks(lines: list[str]) -> list[list[str]]:
    """The events a client printed, in order, each without its ``[n]`` number."""
    blocks: list[list[str]] = []
    current: list[str] | None = None
    for line in lines:
        if match := EVENT_LINE.fullmatch(line):
            assert int(match[1]) == len(blocks) + 1, f"events misnumbered at {line!r}"
            current = [match[2]]
            blocks.append(current)
        elif current is not None and line.startswith("    "):
            current.append(line)
        else:
            current = None
    return blocks


def timestamps(lines: list[str]) -> list[str]:
    return [
        line.removeprefix("    Timestamp: ") for line in lines if TIMESTAMP_LINE.fullmatch(line)
    ]


def create(run: Callable[..., Any], server: Any, *args: str) -> str:
    """Run ``manage.py create_task`` against ``server``; return what it printed."""
    result = run("manage.py", "create_task", "--server", server.url, *args)
    assert result.returncode == 0, result.stderr
    return str(result.stdout)


def start(server: Any, model: str, pk: int) -> None:
    """Start a stored task the way create_task does."""
    response = httpx.post(f"{server.url}/tasks/{model}/{pk}/start", timeout=DEADLINE)
    assert (response.status_code, response.json()) == (202, {"started": True})


def continue_task(env: dict[str, str], create_output: str) -> None:
    """Run the one-liner create_task printed, through a shell, as a user would."""
    one_liner = next(
        line.strip() for line in create_output.splitlines() if "manage.py shell -c" in line
    )
    result = subprocess.run(
        one_liner,
        shell=True,
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=DEADLINE,
        check=False,
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.timeout(60)
def test_create_task_when_server_is_running_then_prints_the_guides_lines_and_task_completes(
    server: Any, run: Any, status: Any, wait_until: Any
) -> None:
    output = create(
        run, server, "--type", "example", "--message", "Hello, World!", "--step-delay", "0.05"
    )

    assert output == (
        "Created ExampleTask with ID: 1\n"
        "  Message: Hello, World!\n"
        "\n"
        "Starting task...\n"
        "✓ Task started\n"
        "\n"
        "Connect to task stream:\n"
        f"  curl {server.url}/stream/ExampleTask/1\n"
    )
    assert server.lines()[0] == f"Starting streaming server on 127.0.0.1:{server.port}"
    wait_until(lambda: status("ExampleTask", 1) == "SUCCESSFUL", DEADLINE, "task 1 to succeed")


@pytest.mark.timeout(60)
def test_stream_client_when_task_already_finished_then_prints_only_the_complete_event(
    server: Any, run: Any, status: Any, wait_until: Any
) -> None:
    create(run, server, "--message", "Hello, World!", "--step-delay", "0")
    wait_until(lambda: status("ExampleTask", 1) == "SUCCESSFUL", DEADLINE, "task 1 to succeed")

    result = run("stream_client.py", "ExampleTask", "1", "--server", server.url)

    assert (result.returncode, result.stderr) == (0, "")
    complete = HELLO_EVENTS[HELLO_EVENTS.index("[5]") :].replace("[5]", "[1]")
    assert masked(result.stdout) == (
        header(f"{server.url}/stream/ExampleTask/1")
        + "\n"
        + complete
        + "\n"
        + footer("COMPLETE", 1)
        + "\n"
    )


@pytest.mark.timeout(60)
def test_stream_client_when_connected_before_start_then_prints_all_five_events_like_the_guide(
    server: Any, relay: Any, run: Any, spawn: Any
) -> None:
    create(run, server, "--no-start", "--message", "Hello, World!", "--step-delay", "0.05")
    client = spawn("stream_client.py", "ExampleTask", "1", "--server", relay.url)
    relay.wait_for_listeners(1)

    start(server, "ExampleTask", 1)

    assert client.wait() == 0, client.describe()
    assert client.text("stderr") == ""
    assert masked(client.text()) == (
        header(f"{relay.url}/stream/ExampleTask/1")
        + "\n"
        + HELLO_EVENTS
        + "\n"
        + footer("COMPLETE", 5)
    )
    stamps = timestamps(client.lines())
    assert stamps == sorted(stamps) and len(set(stamps)) == 5


@pytest.mark.timeout(60)
def test_multiple_clients_when_connected_to_one_task_then_all_print_the_same_events(
    server: Any, relay: Any, run: Any, spawn: Any
) -> None:
    create(run, server, "--no-start", "--step-delay", "0.05")
    create(run, server, "--no-start", "--step-delay", "0.05")
    clients = [
        spawn("stream_client.py", "ExampleTask", "2", "--server", relay.url) for _ in range(3)
    ]
    relay.wait_for_listeners(3)

    start(server, "ExampleTask", 2)

    for client in clients:
        assert client.wait() == 0, client.describe()
    first = clients[0].lines()
    assert [event_blocks(c.lines())[0][0] for c in clients] == ["Event: START"] * 3
    assert len(event_blocks(first)) == 5
    assert "message: Task created via management command" in "\n".join(first)
    assert all(c.lines() == first for c in clients), [c.describe() for c in clients]


@pytest.mark.timeout(60)
def test_late_joining_client_when_task_is_waiting_then_gets_latest_event_then_the_rest(
    server: Any, relay: Any, run: Any, env: dict[str, str], spawn: Any
) -> None:
    output = create(run, server, "--type", "continue", "--message", "Waiting for signal...")
    early = spawn("stream_client.py", "ContinueTask", "1", "--server", relay.url)
    early.wait_for_line("[1] Event: STARTED")

    late = spawn("stream_client.py", "ContinueTask", "1", "--server", relay.url)
    late.wait_for_line("[1] Event: STARTED")
    relay.wait_for_listeners(2)
    continue_task(env, output)

    for client in (early, late):
        assert client.wait() == 0, client.describe()
        assert masked(client.text()).endswith(
            STARTED_BLOCK + "\n" + FINAL_BLOCKS + "\n" + footer("COMPLETE", 3)
        )
    # The late client was told the event the early one saw, not a new one.
    assert event_blocks(late.lines()) == event_blocks(early.lines())


@pytest.mark.timeout(60)
def test_late_joining_client_when_task_is_past_its_start_then_gets_the_rest_from_latest(
    server: Any, relay: Any, run: Any, spawn: Any
) -> None:
    create(run, server, "--no-start", "--step-delay", "0.1")
    early = spawn("stream_client.py", "ExampleTask", "1", "--server", relay.url)
    relay.wait_for_listeners(1)
    start(server, "ExampleTask", 1)
    early.wait_for_line("[2] Event: PROGRESS")

    late = spawn("stream_client.py", "ExampleTask", "1", "--server", relay.url)

    assert early.wait() == 0, early.describe()
    assert late.wait() == 0, late.describe()
    seen_early, seen_late = event_blocks(early.lines()), event_blocks(late.lines())
    assert len(seen_early) == 5
    # The latest event when it joined, then every later one; START was long gone.
    assert 1 <= len(seen_late) <= 4
    assert seen_late == seen_early[-len(seen_late) :]
    assert late.lines()[-2] == f"Total events received: {len(seen_late)}"


@pytest.mark.timeout(60)
def test_continue_task_when_printed_one_liner_is_run_then_stream_goes_on_to_complete(
    server: Any, run: Any, env: dict[str, str], spawn: Any, status: Any, wait_until: Any
) -> None:
    output = create(run, server, "--type", "continue", "--message", "Waiting for signal...")
    code = (
        "from streaming.models import ContinueTask; import asyncio; "
        "asyncio.run(ContinueTask.objects.filter(pk=1).aupdate(continue_field=True))"
    )
    assert output == (
        "Created ContinueTask with ID: 1\n"
        "  Message: Waiting for signal...\n"
        "  Continue: False\n"
        "\n"
        "  To continue the task, run:\n"
        f'    python manage.py shell -c "{code}"\n'
        "\n"
        "Starting task...\n"
        "✓ Task started\n"
        "\n"
        "Connect to task stream:\n"
        f"  curl {server.url}/stream/ContinueTask/1\n"
    )
    client = spawn("stream_client.py", "ContinueTask", "1", "--server", server.url)
    client.wait_for_line("    continue: False")
    assert status("ContinueTask", 1) == "RUNNING"

    continue_task(env, output)

    assert client.wait() == 0, client.describe()
    assert masked(client.text()) == (
        header(f"{server.url}/stream/ContinueTask/1")
        + "\n"
        + STARTED_BLOCK
        + "\n"
        + FINAL_BLOCKS
        + "\n"
        + footer("COMPLETE", 3)
    )
    assert status("ContinueTask", 1) == "SUCCESSFUL"


@pytest.mark.timeout(60)
def test_task_persistence_when_client_disconnects_then_task_finishes_and_reconnect_gets_latest(
    server: Any, run: Any, env: dict[str, str], spawn: Any, status: Any, wait_until: Any
) -> None:
    output = create(run, server, "--type", "continue")
    client = spawn("stream_client.py", "ContinueTask", "1", "--server", server.url)
    client.wait_for_line("[1] Event: STARTED")

    client.send_signal(signal.SIGINT)  # Ctrl+C
    assert client.wait() == 0, client.describe()
    assert client.lines()[-2:] == ["", "Disconnected."]
    assert status("ContinueTask", 1) == "RUNNING"
    continue_task(env, output)
    wait_until(
        lambda: status("ContinueTask", 1) == "SUCCESSFUL",
        DEADLINE,
        "the task to finish with no client connected",
    )

    again = run("stream_client.py", "ContinueTask", "1", "--server", server.url)

    assert again.returncode == 0, again.stderr
    assert masked(again.stdout).endswith(
        "[1] Event: COMPLETE\n"
        "    Timestamp: <ts>\n"
        "    message: Task completed successfully\n"
        "\n" + footer("COMPLETE", 1) + "\n"
    )


@pytest.mark.timeout(60)
def test_stream_when_read_like_curl_then_frames_match_the_guides_wire_format(
    server: Any, run: Any
) -> None:
    create(run, server, "--no-start", "--step-delay", "0.05")
    url = f"{server.url}/stream/ExampleTask/1"
    with httpx.Client(timeout=DEADLINE) as http, http.stream("GET", url) as response:
        assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
        start(server, "ExampleTask", 1)
        body = response.read().decode()

    frames = body.split("\n\n")
    assert frames[-1] == ""
    # Before any event, the stream tells the client how long to wait before
    # reconnecting; the events follow in the guide's format.
    assert frames[0] == "retry: 2000"
    frames = frames[1:-1]
    assert [f.split("\n")[0] for f in frames] == [
        "event: start",
        "event: progress",
        "event: progress",
        "event: progress",
        "event: complete",
    ]
    assert [f.split("\n")[2] for f in frames] == [f"id: {n}" for n in range(1, 6)]
    first = frames[0].split("\n")[1]
    assert first.startswith(
        'data: {"message": "Task created via management command", "total_steps": 3, '
        '"_task_id": 1, "_model": "ExampleTask", "_timestamp": "'
    )
    progress = json.loads(frames[1].split("\n")[1].removeprefix("data: "))
    assert list(progress) == [
        "step",
        "total_steps",
        "message",
        "data",
        "_task_id",
        "_model",
        "_timestamp",
    ]
    assert progress["data"] == "Processing step 1..."
