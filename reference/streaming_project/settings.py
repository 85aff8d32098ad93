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
        "timeout": float(os.environ.get("STREAMING_SQLITE_TIMEOUT", "20")),
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
else:
    # An unreachable server fails a connection attempt within this, instead of
    # holding the one thread that runs every ORM call for minutes.
    _database.setdefault("OPTIONS", {})["connect_timeout"] = int(
        os.environ.get("STREAMING_CONNECT_TIMEOUT", "3")
    )
# The server never goes through Django's request cycle, which is where Django
# closes broken and expired connections; streaming.db does that after an
# error instead, so connections are kept (None) rather than closed per call (0).
_database["CONN_MAX_AGE"] = None
DATABASES = {"default": _database}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
TIME_ZONE = "UTC"


def _env(name: str, default: str) -> str:
    return os.environ.get(f"STREAMING_{name}", default)


# Read by streaming.config.Config; each key is documented there.
STREAMING = {
    "TASK_TIMEOUT": float(_env("TASK_TIMEOUT", "")) if _env("TASK_TIMEOUT", "") else None,
    "CANCEL_GRACE": float(_env("CANCEL_GRACE", "5")),
    "SHUTDOWN_GRACE": float(_env("SHUTDOWN_GRACE", "10")),
    "CLIENT_QUEUE_SIZE": int(_env("CLIENT_QUEUE_SIZE", "1000")),
    "HISTORY_SIZE": int(_env("HISTORY_SIZE", "256")),
    "HISTORY_BYTES": int(_env("HISTORY_BYTES", str(4 * 1024 * 1024))),
    "CLOSED_HISTORY_BYTES": int(_env("CLOSED_HISTORY_BYTES", str(32 * 1024 * 1024))),
    "KEEPALIVE": float(_env("KEEPALIVE", "15")),
    "WRITE_DEADLINE": float(_env("WRITE_DEADLINE", "10")),
    "RETRY_MS": int(_env("RETRY_MS", "2000")),
    "LEASE": float(_env("LEASE", "15")),
    "MAX_ATTEMPTS": int(_env("MAX_ATTEMPTS", "1")),
    "EVENT_LOG": _env("EVENT_LOG", "1") == "1",
    "EVENT_LOG_MAX_EVENT_BYTES": int(_env("EVENT_LOG_MAX_EVENT_BYTES", str(1024 * 1024))),
    # Several workers share events through Redis when this is set.
    "REDIS_URL": _env("REDIS_URL", "") or None,
    "REDIS_PREFIX": _env("REDIS_PREFIX", "streaming"),
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "loggers": {"streaming": {"handlers": ["console"], "level": "INFO"}},
}
