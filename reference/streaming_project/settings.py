"""Settings for the reference implementation.

Everything that changes between a laptop, CI and production comes from the
environment: ``DATABASE_URL`` picks the database (SQLite in the working
directory by default, PostgreSQL when it says ``postgres://``), and the
``STREAMING_*`` variables tune the coordinator.
"""

from __future__ import annotations

import os
from pathlib import Path

import dj_database_url

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "reference-implementation-not-for-production")
DEBUG = os.environ.get("DJANGO_DEBUG", "") == "1"
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]

INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "streaming",
]

DEFAULT_DATABASE_URL = f"sqlite:///{Path.cwd() / 'streaming.sqlite3'}"
_database = dj_database_url.parse(os.environ.get("DATABASE_URL", DEFAULT_DATABASE_URL))
if _database["ENGINE"] == "django.db.backends.sqlite3":
    # Several processes share the file (the server, create_task, the shell):
    # WAL lets readers run beside the one writer, a busy timeout makes a writer
    # wait instead of failing, and IMMEDIATE takes the write lock when a
    # transaction starts, so two read-modify-write transactions serialise
    # instead of deadlocking on a lock upgrade.
    _database["OPTIONS"] = {
        "timeout": 20,
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
DATABASES = {"default": _database}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
TIME_ZONE = "UTC"

STREAMING = {
    # Seconds a task may run before it is stopped with a "timeout" event; None: no limit.
    "TASK_TIMEOUT": float(os.environ["STREAMING_TASK_TIMEOUT"])
    if os.environ.get("STREAMING_TASK_TIMEOUT")
    else None,
    # Seconds a cancelled task gets to finish its cleanup before it is given up on.
    "CANCEL_GRACE": float(os.environ.get("STREAMING_CANCEL_GRACE", "5")),
    # Seconds running tasks get to finish when the server shuts down.
    "SHUTDOWN_GRACE": float(os.environ.get("STREAMING_SHUTDOWN_GRACE", "10")),
    # Events a slow client may fall behind before it is told and dropped.
    "CLIENT_QUEUE_SIZE": int(os.environ.get("STREAMING_CLIENT_QUEUE_SIZE", "1000")),
    # Events kept per task for clients that resume with Last-Event-ID.
    "HISTORY_SIZE": int(os.environ.get("STREAMING_HISTORY_SIZE", "256")),
    # Seconds between SSE comments that keep idle connections open.
    "KEEPALIVE": float(os.environ.get("STREAMING_KEEPALIVE", "15")),
    # Reconnect delay, in milliseconds, suggested to clients in the farewell event.
    "RETRY_MS": int(os.environ.get("STREAMING_RETRY_MS", "2000")),
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "loggers": {"streaming": {"handlers": ["console"], "level": "INFO"}},
}
