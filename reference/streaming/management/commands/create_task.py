"""``manage.py create_task``: store a task and ask the running server to start it."""

from __future__ import annotations

import math
from typing import Any

import httpx
from django.core.management.base import BaseCommand, CommandError, CommandParser

from streaming.models import ContinueTask, ExampleTask

#: The kinds it creates: those of the testing guide, each with a message.
Kind = type[ExampleTask] | type[ContinueTask]
KINDS: dict[str, Kind] = {"example": ExampleTask, "continue": ContinueTask}

#: The longest --step-delay accepted, in seconds. An ExampleTask sleeps this
#: long before each of its steps, so anything larger looks like a typo, and
#: inf would store a task that never finishes a step.
MAX_STEP_DELAY = 3600.0


class Command(BaseCommand):
    help = "Create a task and start it on the streaming server."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--type",
            choices=sorted(KINDS),
            default="example",
            dest="kind",
            help="The kind of task: ExampleTask steps through a countdown, ContinueTask "
            "waits for its continue flag (default: %(default)s).",
        )
        parser.add_argument("--message", help="The task's message.")
        parser.add_argument(
            "--no-start",
            action="store_true",
            help="Only store the task (READY); it prints how to start it later.",
        )
        parser.add_argument(
            "--server",
            default="http://127.0.0.1:8888",
            help="Base URL of the streaming server (default: %(default)s).",
        )
        parser.add_argument(
            "--step-delay",
            type=float,
            help=f"ExampleTask: seconds between steps, 0 to {MAX_STEP_DELAY:g} (default 2).",
        )

    def handle(
        self,
        *args: Any,
        kind: str,
        message: str | None,
        no_start: bool,
        server: str,
        step_delay: float | None,
        **options: Any,
    ) -> None:
        model = KINDS[kind]
        fields: dict[str, Any] = {}
        # Every check comes before the INSERT: a refused command stores nothing.
        base = _checked_server(server)
        if message is not None:
            fields["message"] = _checked_message(model, message)
        if step_delay is not None:
            fields["step_delay"] = _checked_step_delay(kind, step_delay)
        task = model.objects.create(**fields)
        name = model.__name__
        self.stdout.write(f"Created {name} with ID: {task.pk}")
        self.stdout.write(f"  Message: {task.message}")
        if isinstance(task, ContinueTask):
            self.stdout.write(f"  Continue: {task.continue_field}")
            code = (
                "from streaming.models import ContinueTask; import asyncio; "
                f"asyncio.run(ContinueTask.objects.filter(pk={task.pk}).aupdate(continue_field=True))"
            )
            self.stdout.write("\n  To continue the task, run:")
            # Double quotes, as the testing guide prints it: the code holds
            # nothing a POSIX shell or cmd.exe expands inside them.
            self.stdout.write(f'    python manage.py shell -c "{code}"')
        if no_start:
            self.stdout.write("\nTo start it:")
            self.stdout.write(f"  curl -X POST {base}/tasks/{name}/{task.pk}/start")
        else:
            self.stdout.write("\nStarting task...")
            self._start(base, name, task.pk)
            self.stdout.write("✓ Task started")
        self.stdout.write("\nConnect to task stream:")
        self.stdout.write(f"  curl {base}/stream/{name}/{task.pk}")

    def _start(self, base: str, name: str, pk: int) -> None:
        url = f"{base}/tasks/{name}/{pk}/start"
        try:
            response = httpx.post(url, timeout=10)
        except httpx.HTTPError as exc:
            raise CommandError(
                f"Could not reach the streaming server at {base} ({exc}). The task is stored "
                f"as READY; start the server with 'python manage.py runserver_stream' and run "
                f"'curl -X POST {url}'."
            ) from None
        if response.status_code != 202:
            raise CommandError(
                f"The server did not start {name} {pk}: {response.status_code} {response.text}"
            )


def _checked_message(model: Kind, message: str) -> str:
    """Return ``message`` if every database can store it in ``model``'s message column."""
    # SQLite ignores max_length and stores the whole string; PostgreSQL
    # refuses it with a DataError, so check here for the same answer on both.
    limit = model._meta.get_field("message").max_length
    if limit is not None and len(message) > limit:
        raise CommandError(f"--message is {len(message)} characters long; the limit is {limit}.")
    # A command line that is not UTF-8 reaches Python as lone surrogates
    # (surrogateescape), which no database column can store.
    try:
        message.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise CommandError(
            f"--message is not valid UTF-8 (a byte that cannot be read at position "
            f"{exc.start + 1}); pass it in your terminal's UTF-8."
        ) from None
    # PostgreSQL text cannot hold NUL at all. A shell cannot pass one in
    # argv, but call_command and execute_from_command_line callers can.
    if "\x00" in message:
        position = message.index("\x00") + 1
        raise CommandError(
            f"--message contains a NUL character at position {position}; "
            "a message cannot contain NUL (\\x00)."
        )
    return message


def _checked_server(server: str) -> str:
    """``server`` without a trailing slash, if it is an http(s) URL with a host."""
    try:
        url = httpx.URL(server)
    except (httpx.InvalidURL, TypeError):
        url = None
    if url is None or url.scheme not in ("http", "https") or not url.host:
        raise CommandError(
            f"--server must be the streaming server's base URL, such as http://127.0.0.1:8888, "
            f"got {server!r}."
        )
    return server.rstrip("/")


def _checked_step_delay(kind: str, seconds: float) -> float:
    """Return ``seconds`` if it is a usable --step-delay for a task of ``kind``."""
    # The range test alone would refuse NaN (every comparison with it is
    # false); isfinite says so to the reader.
    if not (math.isfinite(seconds) and 0 <= seconds <= MAX_STEP_DELAY):
        raise CommandError(
            f"--step-delay must be a finite number of seconds between 0 and "
            f"{MAX_STEP_DELAY:g}, got {_typed(seconds)}."
        )
    if kind != "example":
        raise CommandError("--step-delay applies to --type example only.")
    return seconds


def _typed(number: float) -> str:
    # argparse has turned the user's "-1" into -1.0; drop the ".0" they never typed.
    return repr(number).removesuffix(".0")
