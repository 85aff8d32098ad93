"""``manage.py task_token``: print a signed token for one task, for SignedTokens.

With ``STREAMING_AUTHORIZATION`` set to ``streaming.ops.policy.SignedTokens``,
the server lets a client act on a task only with a token that names the task
and the action. This prints one, signed with ``SECRET_KEY`` as the server
checks it, on one line, so a shell can keep it::

    TOKEN=$(python manage.py task_token ExampleTask 1 --actions stream cancel)
    curl "http://127.0.0.1:8888/stream/ExampleTask/1?token=$TOKEN"

``--watch-url`` prints the task's watch page with the token in it instead.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from streaming.errors import UnknownTask
from streaming.kinds import resolve_model
from streaming.ops.policy import (
    ACTIONS,
    InsecureSecret,
    SignedTokens,
    check_secret,
    configured_secret_key,
    task_token,
    watch_url,
)


class Command(BaseCommand):
    help = "Print a token that allows some actions on one task (for the SignedTokens policy)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("model", help="The task's model, for example ExampleTask.")
        parser.add_argument("pk", type=int, help="The task's id.")
        parser.add_argument(
            "--actions",
            nargs="+",
            choices=ACTIONS,
            default=["stream"],
            help="What the token allows (default: stream). It is valid for "
            "STREAMING_TOKEN_MAX_AGE seconds.",
        )
        parser.add_argument(
            "--watch-url",
            dest="server",
            metavar="SERVER",
            help="Print the task's watch page on SERVER (http://127.0.0.1:8888) with the "
            "token in it, instead of the token alone.",
        )

    def handle(
        self, *args: Any, model: str, pk: int, actions: list[str], server: str | None, **_: Any
    ) -> None:
        try:
            check_secret(SignedTokens(), configured_secret_key())
        except InsecureSecret as exc:
            raise CommandError(str(exc)) from None
        try:
            kind = resolve_model(model)
        except UnknownTask as exc:
            known = ", ".join(exc.known)
            raise CommandError(f"No task model named {model!r}; the models are {known}.") from None
        task = kind._default_manager.filter(pk=pk).first()
        if task is None:
            raise CommandError(f"No {kind.__name__} with id {pk}.")
        if server is None:
            self.stdout.write(task_token(task, actions=actions))
        else:
            self.stdout.write(watch_url(task, actions, base=server.rstrip("/")))
