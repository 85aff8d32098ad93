"""The commands the testing guide runs, on their own and when things go wrong.

``manage.py runserver_stream``, ``manage.py create_task`` and
``stream_client.py`` as real processes on 127.0.0.1, each test on its own
SQLite file.
"""

from __future__ import annotations

import signal
import socket
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx
import pytest

from conformance.processes import free_port

DEADLINE = 20.0
HELP_TAIL = "manage.py create_task: error: argument --type: invalid choice: 'bogus' (choose from "
#: max_length of ExampleTask.message and ContinueTask.message.
MESSAGE_LIMIT = 500
STEP_DELAY_RANGE = "--step-delay must be a finite number of seconds between 0 and 3600, got"


def in_process(*argv: str) -> list[str]:
    """Arguments for ``run`` that start manage.py with ``argv`` set inside the interpreter.

    A real command line cannot carry NUL (execve takes C strings, and
    subprocess refuses it), but execute_from_command_line can be handed one.
    """
    code = (
        f"import runpy, sys; sys.argv = {['manage.py', *argv]!r}; "
        "runpy.run_path('manage.py', run_name='__main__')"
    )
    return ["-c", code]


@pytest.mark.timeout(60)
def test_runserver_stream_when_started_on_a_migrated_database_then_prints_address_and_health_ok(
    tmp_path: Path, make_env: Any, run: Any, start_server: Any
) -> None:
    env = make_env(tmp_path / "fresh.sqlite3")
    migrate = run("manage.py", "migrate", env=env)
    assert migrate.returncode == 0, migrate.stderr
    assert "Applying streaming.0001_initial... OK" in migrate.stdout

    server = start_server(env=env)

    assert server.lines()[0] == f"Starting streaming server on 127.0.0.1:{server.port}"
    response = httpx.get(f"{server.url}/health", timeout=DEADLINE)
    assert (response.status_code, response.text) == (200, "OK")
    assert response.headers["content-type"] == "text/plain; charset=utf-8"


@pytest.mark.timeout(60)
def test_runserver_stream_when_sigterm_with_client_listening_then_client_told_and_exit_0(
    server: Any, relay: Any, run: Any, spawn: Any
) -> None:
    created = run("manage.py", "create_task", "--no-start")
    assert created.returncode == 0, created.stderr
    client = spawn("stream_client.py", "ExampleTask", "1", "--server", relay.url)
    relay.wait_for_listeners(1)

    server.send_signal(signal.SIGTERM)

    assert server.wait() == 0, server.describe()
    assert client.wait() == 0, client.describe()
    output = client.lines()
    assert "[1] Event: SHUTDOWN" in output
    assert "    message: Server is shutting down; reconnect to resume" in output
    assert output[-3:-1] == ["Stream ended with: SHUTDOWN", "Total events received: 1"]


@pytest.mark.timeout(60)
def test_runserver_stream_when_port_is_taken_then_exits_nonzero_saying_so(spawn: Any) -> None:
    with closing(socket.create_server(("127.0.0.1", 0))) as taken:
        port = taken.getsockname()[1]
        server = spawn("manage.py", "runserver_stream", "--port", str(port))
        returncode = server.wait()

    assert returncode != 0
    assert "address already in use" in server.text("stderr")
    assert "Traceback" not in server.text("stderr")


@pytest.mark.timeout(60)
def test_create_task_when_no_server_is_running_then_one_line_error_and_task_stays_ready(
    run: Any, status: Any
) -> None:
    nobody = f"http://127.0.0.1:{free_port()}"  # nothing listens there: refused

    result = run("manage.py", "create_task", "--server", nobody)

    assert result.returncode == 1
    assert result.stdout.splitlines()[-1] == "Starting task..."
    assert "✓ Task started" not in result.stdout
    error = result.stderr.strip()
    assert "\n" not in error and "Traceback" not in error
    assert error.startswith(f"CommandError: Could not reach the streaming server at {nobody} (")
    assert f"run 'curl -X POST {nobody}/tasks/ExampleTask/1/start'" in error
    assert status("ExampleTask", 1) == "READY"


@pytest.mark.timeout(60)
def test_create_task_when_server_has_another_database_then_exits_1_with_servers_answer(
    server: Any, run: Any, make_env: Any, database: Path, count: Any
) -> None:
    other = database.with_name("other.sqlite3")
    other.write_bytes(database.read_bytes())

    result = run("manage.py", "create_task", "--server", server.url, env=make_env(other))

    assert result.returncode == 1
    assert result.stderr.strip() == (
        "CommandError: The server did not start ExampleTask 1: 404 ExampleTask 1 does not exist."
    )
    assert count("ExampleTask") == 0


@pytest.mark.timeout(60)
def test_create_task_when_type_is_unknown_then_argparse_error_exit_2(run: Any, count: Any) -> None:
    result = run("manage.py", "create_task", "--type", "bogus")

    assert result.returncode == 2
    assert result.stderr.startswith("usage: manage.py create_task ")
    assert HELP_TAIL + "'continue', 'example')" in result.stderr
    assert result.stdout == ""
    assert count("ExampleTask") == count("ContinueTask") == 0


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["--step-delay", "nan"], f"CommandError: {STEP_DELAY_RANGE} nan."),
        (["--step-delay", "inf"], f"CommandError: {STEP_DELAY_RANGE} inf."),
        # argparse takes a separate "-inf" for an option, so it needs the = form.
        (["--step-delay=-inf"], f"CommandError: {STEP_DELAY_RANGE} -inf."),
        (["--step-delay", "-1"], f"CommandError: {STEP_DELAY_RANGE} -1."),
        (["--step-delay", "3601"], f"CommandError: {STEP_DELAY_RANGE} 3601."),
        (
            ["--type", "continue", "--step-delay", "1"],
            "CommandError: --step-delay applies to --type example only.",
        ),
    ],
    ids=["nan", "inf", "minus-inf", "negative", "too-long", "continue"],
)
def test_create_task_when_step_delay_is_invalid_then_exit_1_and_nothing_stored(
    run: Any, count: Any, args: list[str], error: str
) -> None:
    result = run("manage.py", "create_task", "--no-start", *args)

    assert (result.returncode, result.stderr.strip(), result.stdout) == (1, error, "")
    assert count("ExampleTask") == count("ContinueTask") == 0


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("kind", "message", "error"),
    [
        (
            "example",
            "x" * (MESSAGE_LIMIT + 1),
            f"CommandError: --message is 501 characters long; the limit is {MESSAGE_LIMIT}.",
        ),
        (
            "example",
            "x" * 600,
            f"CommandError: --message is 600 characters long; the limit is {MESSAGE_LIMIT}.",
        ),
        (
            "continue",
            "x" * (MESSAGE_LIMIT + 1),
            f"CommandError: --message is 501 characters long; the limit is {MESSAGE_LIMIT}.",
        ),
        (
            "example",
            "Hello\x00World",
            "CommandError: --message contains a NUL character at position 6; "
            "a message cannot contain NUL (\\x00).",
        ),
    ],
    ids=["501-chars", "600-chars", "continue-501-chars", "nul"],
)
def test_create_task_when_message_is_invalid_then_exit_1_and_nothing_stored(
    run: Any, count: Any, kind: str, message: str, error: str
) -> None:
    args = ["create_task", "--no-start", "--type", kind, "--message", message]
    launch = in_process(*args) if "\x00" in message else ["manage.py", *args]

    result = run(*launch)

    assert (result.returncode, result.stderr.strip(), result.stdout) == (1, error, "")
    assert count("ExampleTask") == count("ContinueTask") == 0


@pytest.mark.timeout(60)
def test_create_task_when_message_is_not_utf8_or_server_not_a_url_then_one_line_and_nothing_stored(
    run: Any, count: Any
) -> None:
    # A terminal in another encoding passes bytes that are not UTF-8.
    not_utf8 = run("manage.py", "create_task", "--no-start", "--message", b"caf\xe9!")  # type: ignore[arg-type]
    not_a_url = run("manage.py", "create_task", "--server", "not-a-url")
    assert (not_utf8.returncode, not_utf8.stdout) == (1, ""), not_utf8.stderr
    assert not_utf8.stderr.strip() == (
        "CommandError: --message is not valid UTF-8 (a byte that cannot be read at position 4); "
        "pass it in your terminal's UTF-8."
    )
    assert (not_a_url.returncode, not_a_url.stdout) == (1, ""), not_a_url.stderr
    assert not_a_url.stderr.strip() == (
        "CommandError: --server must be the streaming server's base URL, such as "
        "http://127.0.0.1:8888, got 'not-a-url'."
    )
    assert count("ExampleTask") == 0


@pytest.mark.timeout(60)
def test_stream_client_when_events_carry_terminal_escapes_then_printed_escaped(
    server: Any, relay: Any, run: Any, spawn: Any
) -> None:
    hostile = "\x1b[2J\x1b]0;owned\x07red\nline"
    created = run(
        "manage.py", "create_task", "--no-start", "--step-delay", "0", "--message", hostile
    )
    assert created.returncode == 0, created.stderr
    client = spawn("stream_client.py", "ExampleTask", "1", "--server", relay.url)
    relay.wait_for_listeners(1)
    assert (
        httpx.post(f"{server.url}/tasks/ExampleTask/1/start", timeout=DEADLINE).status_code == 202
    )
    assert client.wait() == 0, client.describe()
    printed = client.text()
    assert "\x1b" not in printed and "\x07" not in printed, printed
    assert "    message: \\x1b[2J\\x1b]0;owned\\x07red\\nline" in client.lines(), printed


@pytest.mark.timeout(60)
def test_create_task_when_message_and_step_delay_are_at_their_limits_then_stored_whole(
    run: Any, database: Path
) -> None:
    message = "é" * (MESSAGE_LIMIT - 1) + "!"  # characters, not bytes, count

    result = run(
        "manage.py", "create_task", "--no-start", "--message", message, "--step-delay", "3600"
    )

    assert result.returncode == 0, result.stderr
    with closing(sqlite3.connect(database)) as connection:
        stored = connection.execute(
            "SELECT message, step_delay FROM streaming_exampletask WHERE id = 1"
        ).fetchone()
    assert stored == (message, 3600.0)


@pytest.mark.timeout(60)
def test_create_task_when_no_start_then_task_is_stored_ready_with_increasing_ids(
    run: Any, status: Any
) -> None:
    outputs = [run("manage.py", "create_task", "--no-start") for _ in range(2)]

    assert [o.returncode for o in outputs] == [0, 0]
    assert [o.stdout for o in outputs] == [
        f"Created ExampleTask with ID: {pk}\n"
        "  Message: Task created via management command\n"
        "\n"
        "To start it:\n"
        f"  curl -X POST http://127.0.0.1:8888/tasks/ExampleTask/{pk}/start\n"
        "\n"
        "Connect to task stream:\n"
        f"  curl http://127.0.0.1:8888/stream/ExampleTask/{pk}\n"
        for pk in (1, 2)
    ]
    assert [status("ExampleTask", pk) for pk in (1, 2)] == ["READY", "READY"]


@pytest.mark.timeout(60)
def test_stream_when_model_or_id_is_unknown_then_404_reason_over_http_and_client_exits_1(
    server: Any, run: Any
) -> None:
    with httpx.Client(base_url=server.url, timeout=DEADLINE) as http:
        answers = {
            path: (response.status_code, response.text)
            for path in ("/stream/Nope/1", "/stream/ExampleTask/abc", "/stream/ExampleTask/999")
            for response in [http.get(path)]
        }
    missing = run("stream_client.py", "ExampleTask", "999", "--server", server.url)
    no_model = run("stream_client.py", "Nope", "1", "--server", server.url)

    unknown_model = answers.pop("/stream/Nope/1")
    assert unknown_model[0] == 404
    # The models there are are told to clients on the server's machine only.
    assert unknown_model[1].startswith("Unknown task model 'Nope'. Known models: ")
    assert "ContinueTask, ExampleTask" in unknown_model[1]
    assert answers == {
        "/stream/ExampleTask/abc": (
            404,
            "Task id must be an integer in plain decimal digits, got 'abc'.",
        ),
        "/stream/ExampleTask/999": (404, "ExampleTask 999 does not exist."),
    }
    # The client shows the server's reason, on one line, and no events.
    assert (missing.returncode, missing.stderr) == (
        1,
        "Server answered 404: ExampleTask 999 does not exist.\n",
    )
    assert (no_model.returncode, no_model.stderr) == (
        1,
        f"Server answered 404: {unknown_model[1]}\n",
    )
    assert "Event:" not in missing.stdout + no_model.stdout


@pytest.mark.timeout(60)
def test_stream_client_when_server_is_unreachable_then_exits_1_with_clear_message(
    run: Any,
) -> None:
    nobody = f"http://127.0.0.1:{free_port()}"

    result = run("stream_client.py", "ExampleTask", "1", "--server", nobody)

    assert result.returncode == 1
    assert result.stderr.startswith(f"Could not stream from {nobody}/stream/ExampleTask/1: ")
    assert "connection refused" in result.stderr.lower()
    assert result.stderr.count("\n") == 1
    assert "Traceback" not in result.stderr


@pytest.mark.timeout(60)
def test_commands_when_asked_for_help_then_every_option_says_what_it_does() -> None:
    import argparse
    import runpy

    from django.core.management import load_command_class

    parsers = {
        name: load_command_class("streaming", name).create_parser("manage.py", name)
        for name in ("runserver_stream", "create_task", "task_token")
    }
    client = runpy.run_path(str(Path(__file__).parents[2] / "stream_client.py"))
    parsers["stream_client.py"] = client["build_parser"]()
    # Django's own options (--verbosity, --settings...) carry Django's help.
    silent = [
        f"{name} {action.option_strings or action.dest}"
        for name, parser in parsers.items()
        for action in parser._actions
        if not action.help and action.help is not argparse.SUPPRESS
    ]
    assert silent == []


@pytest.mark.timeout(60)
def test_create_task_when_no_start_then_it_says_how_to_start_the_task(run: Any) -> None:
    output = run("manage.py", "create_task", "--no-start", "--server", "http://127.0.0.1:9999")

    assert output.returncode == 0, output.stderr
    assert "To start it:\n  curl -X POST http://127.0.0.1:9999/tasks/ExampleTask/1/start\n" in (
        output.stdout
    )


TOKENS = "streaming.ops.policy.SignedTokens"


@pytest.mark.timeout(90)
def test_task_token_when_printed_then_the_server_accepts_it_for_its_actions_only(
    run: Any, env: dict[str, str], start_server: Any
) -> None:
    import secrets

    own = {**env, "DJANGO_SECRET_KEY": secrets.token_urlsafe(50), "STREAMING_AUTHORIZATION": TOKENS}
    server = start_server(env=own)
    assert run("manage.py", "create_task", "--no-start", env=own).returncode == 0
    minted = run("manage.py", "task_token", "ExampleTask", "1", "--actions", "stream", env=own)
    assert minted.returncode == 0, minted.stderr
    token = minted.stdout.strip()
    assert "\n" not in token  # one line, for TOKEN=$(python manage.py task_token ...)

    with httpx.stream("GET", f"{server.url}/stream/ExampleTask/1?token={token}", timeout=10) as r:
        assert r.status_code == 200
    bearer = {"authorization": f"Bearer {token}", "content-type": "application/json"}
    start = httpx.post(f"{server.url}/tasks/ExampleTask/1/start", headers=bearer, timeout=10)
    assert start.status_code == 403 and "not start" in start.text, start.text

    page = run("manage.py", "task_token", "ExampleTask", "1", "--watch-url", server.url, env=own)
    assert page.returncode == 0, page.stderr
    assert page.stdout.startswith(f"{server.url}/tasks/ExampleTask/1?token=")
    assert httpx.get(page.stdout.strip(), timeout=10).status_code == 200


@pytest.mark.timeout(60)
def test_task_token_when_task_or_secret_is_wrong_then_one_line_and_exit_1(
    run: Any, env: dict[str, str]
) -> None:
    import secrets

    own = {**env, "DJANGO_SECRET_KEY": secrets.token_urlsafe(50)}
    missing = run("manage.py", "task_token", "ExampleTask", "7", env=own)
    unknown = run("manage.py", "task_token", "NoSuchTask", "1", env=own)
    public = run("manage.py", "task_token", "ExampleTask", "1", env=env)

    assert missing.returncode == 1 and missing.stderr == "CommandError: No ExampleTask with id 7.\n"
    assert unknown.returncode == 1 and unknown.stderr.startswith(
        "CommandError: No task model named 'NoSuchTask'"
    )
    assert public.returncode == 1 and "Set DJANGO_SECRET_KEY" in public.stderr
    assert "Traceback" not in missing.stderr + unknown.stderr + public.stderr


@pytest.mark.timeout(90)
def test_stream_client_when_the_server_was_killed_and_restarted_then_told_what_it_waits_for(
    env: dict[str, str],
    run: Any,
    spawn: Any,
    status: Any,
    start_server: Any,
    start_server_to_kill: Any,
    wait_until: Any,
) -> None:
    # The wait this test sits through: long enough for the restarted server to
    # come up while the dead run's lease still holds, on a loaded machine too.
    short = {**env, "STREAMING_LEASE": "10"}
    killed = start_server_to_kill(env=short)
    started = run(
        "manage.py", "create_task", "--step-delay", "60", "--server", killed.url, env=short
    )
    assert started.returncode == 0, started.stderr
    wait_until(lambda: status("ExampleTask", 1) == "RUNNING", DEADLINE, "the task to run")
    killed.stop_blocking(signal.SIGKILL)
    restarted = start_server(env=short)

    client = spawn("stream_client.py", "ExampleTask", "1", "--server", restarted.url)

    first = client.wait_for_line("[1] Event: WAITING", timeout=DEADLINE)
    assert client.wait(timeout=DEADLINE) == 0, client.describe()
    output = client.lines()
    message = next(line for line in output[first:] if line.startswith("    message: "))
    assert f"(pid {killed.pid}" not in message  # owners are named by host:pid:nonce
    assert f":{killed.pid}:" in message and "has exited" in message, message
    assert "Stream ended with: INTERRUPTED" in output, client.describe()
    assert status("ExampleTask", 1) == "INTERRUPTED"
