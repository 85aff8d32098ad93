"""``manage.py runserver_stream``: the streaming server in the foreground."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser

from streaming.server import serve


class Command(BaseCommand):
    help = "Serve task event streams over SSE until SIGTERM/SIGINT, then shut down gracefully."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8888)
        parser.add_argument(
            "--grace",
            type=float,
            default=settings.STREAMING["SHUTDOWN_GRACE"],
            help="Seconds running tasks get to finish on shutdown (default: %(default)s).",
        )
        parser.add_argument("--log-level", default="info")

    def handle(
        self, *args: Any, host: str, port: int, grace: float, log_level: str, **options: Any
    ) -> None:
        self.stdout.write(f"Starting streaming server on {host}:{port}")
        self.stdout.flush()
        serve(host, port, grace=grace, log_level=log_level)
