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

from procrastinate_impl.session import server_params

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
        **{key.upper(): value for key, value in server_params().items()},
    }
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# The worker's options (procrastinate's WorkerOptions). Concurrency: the suite
# starts up to 100 tasks at once (PERF-1) and expects them to run side by side
# (FUNC-16). Abort requests reach a worker by LISTEN/NOTIFY at once; the poll is
# procrastinate's fallback, kept short under the suite. Heartbeats: the docs'
# stalled-job recovery reads them.
# The job poll is short too: a worker can miss the notification of a job
# deferred while it fetches (FINDINGS.md, 3), and only its poll finds it then.
PROCRASTINATE_WORKER_DEFAULTS = {
    "concurrency": 250,
    "fetch_job_polling_interval": 0.1,
    "abort_job_polling_interval": 0.5,
    "update_heartbeat_interval": 1.0,
    "stalled_worker_timeout": 5.0,
    "shutdown_graceful_timeout": 2.0,
}

_LEVEL = "PROCRASTINATE_IMPL_LOG_LEVEL"
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"stderr": {"class": "logging.StreamHandler"}},
    "loggers": {
        # INFO in the worker (its log, a file of the session's); WARNING in the
        # suite's process, where every defer would log a line.
        "procrastinate": {"handlers": ["stderr"], "level": os.environ.get(_LEVEL, "WARNING")},
        "procrastinate_impl": {"handlers": ["stderr"], "level": "INFO"},
    },
}
