"""The session's PostgreSQL database and procrastinate worker: made once, removed at the end.

Tests run in parallel (pytest-xdist), so each session creates a database of
its own, migrates it (procrastinate's schema comes from its Django app's
migrations, as its docs say), and starts one worker process on it with
procrastinate's Django command, ``procrastinate worker``. Without a
PostgreSQL the cases skip, saying so; under ``CI=true`` they fail.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import unquote, urlsplit

import psycopg

SETTINGS_MODULE = "procrastinate_impl.settings"

#: How long the worker may take to start (Django, procrastinate, its first heartbeat).
WORKER_START = 30.0


def server_params() -> dict[str, str]:
    """Where the PostgreSQL is: ``DATABASE_URL`` (its database name aside), else ``PG*``.

    The repository's PostgreSQL sessions set ``DATABASE_URL``; the database
    itself is the session's own, made here.
    """
    url = os.environ.get("DATABASE_URL", "")
    if url.startswith(("postgres://", "postgresql://")):
        parts = urlsplit(url)
        return {
            "host": parts.hostname or "127.0.0.1",
            "port": str(parts.port or 5432),
            "user": unquote(parts.username or "postgres"),
            "password": unquote(parts.password or ""),
        }
    return {
        "host": os.environ.get("PGHOST", "127.0.0.1"),
        "port": os.environ.get("PGPORT", "5432"),
        "user": os.environ.get("PGUSER", "postgres"),
        "password": os.environ.get("PGPASSWORD", ""),
    }


def server_dsn(dbname: str) -> str:
    return psycopg.conninfo.make_conninfo(**server_params(), dbname=dbname)


class Unavailable(RuntimeError):
    """PostgreSQL does not answer: the cases cannot run."""


class Session:
    """One database, migrated, and one procrastinate worker process on it."""

    def __init__(self) -> None:
        self.database = f"conformance_procrastinate_{os.getpid()}_{secrets.token_hex(3)}"
        self.conninfo = server_dsn(self.database)
        #: Where the worker's log goes; made once the database is.
        self.directory: Path | None = None
        self.worker: subprocess.Popen[bytes] | None = None

    @property
    def worker_log(self) -> Path:
        assert self.directory is not None, "The session has not been opened."
        return self.directory / "worker.log"

    def open(self) -> None:
        """Create and migrate the database, start the worker; wait until it is registered."""
        try:
            with psycopg.connect(
                server_dsn("postgres"), autocommit=True, connect_timeout=5
            ) as conn:
                conn.execute(f'CREATE DATABASE "{self.database}"')
        except psycopg.OperationalError as exc:
            raise Unavailable(
                f"PostgreSQL at {server_dsn('postgres')!r} does not answer: {exc}"
            ) from exc
        self.directory = Path(tempfile.mkdtemp(prefix="conformance-procrastinate-"))
        os.environ["PROCRASTINATE_IMPL_DB"] = self.database
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", SETTINGS_MODULE)
        import django

        django.setup()
        from django.core.management import call_command

        call_command("migrate", verbosity=0, interactive=False)
        self.start_worker()

    def environ(self) -> dict[str, str]:
        """What a process of the session needs: its database and the glue's settings."""
        return {"PROCRASTINATE_IMPL_DB": self.database, "DJANGO_SETTINGS_MODULE": SETTINGS_MODULE}

    def start_worker(self) -> None:
        env = {**os.environ, **self.environ(), "PROCRASTINATE_IMPL_LOG_LEVEL": "INFO"}
        # The runtimes' queue only: a server process's worker runs its own.
        argv = [sys.executable, "-m", "django", "procrastinate", "worker", "--queues", "default"]
        with self.worker_log.open("ab") as log:
            self.worker = subprocess.Popen(
                argv,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        # Wait for the state itself: the worker's row in procrastinate_workers.
        deadline = time.monotonic() + WORKER_START
        with psycopg.connect(self.conninfo, autocommit=True) as conn:
            while conn.execute("SELECT count(*) FROM procrastinate_workers").fetchone() == (0,):
                if self.worker.poll() is not None or time.monotonic() > deadline:
                    log_text = self.worker_log.read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"procrastinate's worker did not start:\n{log_text}")
                time.sleep(
                    0.05
                )  # a poll interval, not a synchronisation: the loop waits on the row

    def close(self) -> None:
        if self.worker is not None and self.worker.poll() is None:
            self.worker.terminate()
            try:
                self.worker.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.worker.kill()
                self.worker.wait()
        from django.db import connections

        connections.close_all()
        try:
            with psycopg.connect(
                server_dsn("postgres"), autocommit=True, connect_timeout=5
            ) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')
        except psycopg.OperationalError:
            pass  # the server went away: nothing left to drop
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)
