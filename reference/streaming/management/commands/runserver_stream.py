"""``manage.py runserver_stream``: the streaming server in the foreground."""

from __future__ import annotations

import argparse
import socket
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from streaming.config import Config
from streaming.ops.guard import Guard
from streaming.ops.policy import InsecureSecret, check_secret, configured_secret_key, load_policy
from streaming.server import exit_at_once, serve
from streaming.workers import Supervisor, bind


class Command(BaseCommand):
    help = "Serve task event streams over SSE until SIGTERM/SIGINT, then shut down gracefully."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--host",
            default="127.0.0.1",
            help="Address to listen on; 0.0.0.0 for every interface (default: %(default)s).",
        )
        parser.add_argument(
            "--port", type=int, default=8888, help="Port to listen on (default: %(default)s)."
        )
        parser.add_argument(
            "--grace",
            type=float,
            # A project without a STREAMING setting has Config's defaults.
            default=Config.from_settings().shutdown_grace,
            help="Seconds running tasks get to finish on shutdown (default: %(default)s).",
        )
        parser.add_argument(
            "--log-level",
            default="info",
            choices=["critical", "error", "warning", "info", "debug", "trace"],
            help="The least severe log lines printed (default: %(default)s).",
        )
        parser.add_argument(
            "--workers",
            type=int,
            default=1,
            help="Worker processes sharing the port; more than one needs STREAMING_REDIS_URL.",
        )
        # Internal: the listening socket a supervisor shares with its workers.
        parser.add_argument("--fd", type=int, default=None, help=argparse.SUPPRESS)

    def handle(
        self,
        *args: Any,
        host: str,
        port: int,
        grace: float,
        log_level: str,
        workers: int,
        fd: int | None,
        **options: Any,
    ) -> None:
        if workers < 1:
            raise CommandError("--workers must be at least 1.")
        config = Config.from_settings()
        try:
            check_secret(load_policy(config.authorization), configured_secret_key())
            Guard.from_settings(cors_origins=config.cors_allowed_origins)
        except (InsecureSecret, ValueError) as exc:
            raise CommandError(str(exc)) from None
        if workers > 1 and not config.redis_url:
            raise CommandError(
                "--workers above 1 needs STREAMING_REDIS_URL: the workers share their tasks' "
                "events through Redis, or a client would see only its own worker's runs."
            )
        # Once serve() returns everything is closed: exit_at_once skips the
        # interpreter's teardown, which cost up to a second on a loaded machine.
        if fd is not None:
            serve(host, port, grace=grace, log_level=log_level, sock=socket.socket(fileno=fd))
            exit_at_once()
        if workers == 1:
            self.stdout.write(f"Starting streaming server on {host}:{port}")
            self.stdout.flush()
            serve(host, port, grace=grace, log_level=log_level)
            exit_at_once()
        try:
            sock = bind(host, port)
        except OSError as exc:
            why = (exc.strerror or str(exc)).lower()
            raise CommandError(f"Cannot listen on {host}:{port}: {why}.") from None
        self.stdout.write(f"Starting {workers} streaming workers on {host}:{port}")
        self.stdout.flush()
        passed_on = ["--grace", str(grace), "--log-level", log_level]
        exit_at_once(Supervisor(workers, sock, passed_on).run())
