"""Django settings of the glue project: django-eventstream as its README sets it up.

The database is one SQLite file, named by ``EVENTSTREAM_IMPL_DB``: the
suite's runtimes and the server processes they start share it. Events go
to the library's own storage (``DjangoModelStorage``), as its README says
for reliable delivery and ``Last-Event-ID``.
"""

from __future__ import annotations

import os

SECRET_KEY = "conformance-eventstream-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
USE_TZ = True

INSTALLED_APPS = [
    "django_eventstream",
    "eventstream_impl",
]
MIDDLEWARE: list[str] = []
ROOT_URLCONF = "eventstream_impl.urls"
ASGI_APPLICATION = "eventstream_impl.asgi.application"

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("EVENTSTREAM_IMPL_DB", "eventstream.sqlite3"),
        # Django's advice for SQLite under concurrent writers (5.1+): take the
        # write lock at BEGIN, and wait for it rather than fail at once. No WAL:
        # Django serves each request in a thread of its own with a connection of
        # its own, and under WAL every open connection holds a lock, so SQLite
        # keeps each closed connection's file open for as long as the process lives.
        "OPTIONS": {"transaction_mode": "IMMEDIATE", "timeout": 5},
    }
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# The library's README, "Event storage": persist events so clients can resume.
EVENTSTREAM_STORAGE_CLASS = "django_eventstream.storage.DjangoModelStorage"
# The library's README, "Routes and channel selection": a channel manager maps
# a stream request to its task's channel.
EVENTSTREAM_CHANNELMANAGER_CLASS = "eventstream_impl.channels.TaskChannelManager"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"stderr": {"class": "logging.StreamHandler"}},
    "loggers": {"eventstream_impl": {"handlers": ["stderr"], "level": "INFO"}},
}
