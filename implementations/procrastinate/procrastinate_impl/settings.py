"""Django settings of the glue project: procrastinate as its Django docs set it up.

``procrastinate.contrib.django`` is installed as an app: its migrations
create procrastinate's schema, its ``app`` defers jobs through Django's own
connection (so a defer joins the caller's transaction), and its management
command ``procrastinate worker`` runs the worker as a separate process. The
glue's task module (``procrastinate_impl.tasks``) is found by the app's
autodiscovery of ``tasks`` modules.

The database is named by ``PROCRASTINATE_IMPL_DB``: the suite's runtimes and
the worker they share use one database per test session.
"""

from __future__ import annotations

import os

SECRET_KEY = "conformance-procrastinate-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
USE_TZ = True

INSTALLED_APPS = [
    "procrastinate.contrib.django",
    "procrastinate_impl",
]
MIDDLEWARE: list[str] = []

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": os.environ.get("PROCRASTINATE_IMPL_DB", "conformance_procrastinate"),
        "HOST": os.environ.get("PGHOST", "127.0.0.1"),
        "PORT": os.environ.get("PGPORT", "5432"),
        "USER": os.environ.get("PGUSER", "postgres"),
        "PASSWORD": os.environ.get("PGPASSWORD", ""),
    }
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# The worker's options (procrastinate's WorkerOptions). Concurrency: the suite
# starts up to 100 tasks at once (PERF-1) and expects them to run side by side
# (FUNC-16). Abort requests reach a worker by LISTEN/NOTIFY at once; the poll is
# procrastinate's fallback, kept short under the suite. Heartbeats: the docs'
# stalled-job recovery reads them.
PROCRASTINATE_WORKER_DEFAULTS = {
    "concurrency": 250,
    "abort_job_polling_interval": 0.5,
    "update_heartbeat_interval": 1.0,
    "stalled_worker_timeout": 5.0,
    "shutdown_graceful_timeout": 2.0,
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"stderr": {"class": "logging.StreamHandler"}},
    "loggers": {
        "procrastinate": {"handlers": ["stderr"], "level": "INFO"},
        "procrastinate_impl": {"handlers": ["stderr"], "level": "INFO"},
    },
}
