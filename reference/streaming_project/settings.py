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

# The default is public (it is in this file): fine for the demo on one machine,
# where LoopbackOnly decides. A server refuses to start with it under a policy
# that signs tokens with it (ops.policy.check_secret); Django's own prefix
# marks it, so `check --deploy` says so too. See production.py.
SECRET_KEY = os.environ.get(
    "DJANGO_SECRET_KEY", "django-insecure-reference-implementation-not-for-production"
)
DEBUG = os.environ.get("DJANGO_DEBUG", "") == "1"
# The streaming server refuses any other Host (400): DNS rebinding protection.
ALLOWED_HOSTS = os.environ.get("DJANGO_ALLOWED_HOSTS", "127.0.0.1,localhost,[::1]").split(",")

INSTALLED_APPS = [
    "django.contrib.contenttypes",
    # For the DjangoSession authorization policy (streaming.ops.policy).
    "django.contrib.auth",
    "django.contrib.sessions",
    "streaming",
    # django.tasks on the coordinator (streaming.tasks): TASKS below.
    "streaming.tasks",
]

# Django's Tasks framework (django_tasks, its backport, before Django 6.0):
# @task functions run on the streaming server's coordinator.
TASKS = {"default": {"BACKEND": "streaming.tasks.StreamingBackend"}}

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


def _limit(name: str, default: str, kind: type[int] | type[float] = int) -> int | float | None:
    """A limit from the environment; ``0``, ``off`` or nothing turn it off (None)."""
    value = _env(name, default).strip().lower()
    return None if value in ("", "0", "off", "none") else kind(value)


def _list(name: str, default: str = "") -> list[str]:
    return [item.strip() for item in _env(name, default).split(",") if item.strip()]


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
    # Operations: the README (Operations) describes each of these.
    "AUTHORIZATION": _list("AUTHORIZATION", "streaming.ops.policy.LoopbackOnly"),
    "TOKEN_MAX_AGE": float(_env("TOKEN_MAX_AGE", "3600")),
    "CORS_ALLOWED_ORIGINS": tuple(_list("CORS_ALLOWED_ORIGINS")),
    "CORS_ALLOW_CREDENTIALS": _env("CORS_ALLOW_CREDENTIALS", "0") == "1",
    "CORS_MAX_AGE": int(_env("CORS_MAX_AGE", "600")),
    "MAX_CONNECTIONS": _limit("MAX_CONNECTIONS", ""),
    "MAX_CONNECTIONS_PER_CLIENT": _limit("MAX_CONNECTIONS_PER_CLIENT", "256"),
    "HEADER_BYTES": int(_env("HEADER_BYTES", str(64 * 1024))),
    "HEADER_TIMEOUT": float(_env("HEADER_TIMEOUT", "60")),
    "MAX_SUBSCRIBERS_PER_TASK": _limit("MAX_SUBSCRIBERS_PER_TASK", "10000"),
    "STREAMS_PER_SECOND": _limit("STREAMS_PER_SECOND", "20", float),
    "STREAM_BURST": int(_env("STREAM_BURST", "100")),
    "POSTS_PER_SECOND": _limit("POSTS_PER_SECOND", "10", float),
    "POST_BURST": int(_env("POST_BURST", "50")),
    "METRICS": _env("METRICS", "1") == "1",
    "METRICS_TOKEN": _env("METRICS_TOKEN", "") or None,
    "METRICS_COUNT_INTERVAL": float(_env("METRICS_COUNT_INTERVAL", "15")),
}

# Every record names its task (streaming.ops.logs): "[ExampleTask:1]" in text,
# "task_kind" and "task_id" in JSON lines (STREAMING_LOG_FORMAT=json).
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"task": {"()": "streaming.ops.logs.TaskFields"}},
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s [%(task)s]: %(message)s"},
        "json": {"()": "streaming.ops.logs.JsonFormatter"},
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": "json" if _env("LOG_FORMAT", "plain") == "json" else "plain",
            "filters": ["task"],
        }
    },
    "loggers": {"streaming": {"handlers": ["console"], "level": "INFO"}},
}
