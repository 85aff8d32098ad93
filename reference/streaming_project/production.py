"""Settings for a deployment: ``DJANGO_SETTINGS_MODULE=streaming_project.production``.

Everything in ``settings.py``, with what serving others needs on top. Passes
``manage.py check --deploy``. It expects, from the environment:

- ``DJANGO_SECRET_KEY``: a secret of your own, 50 characters or more (for
  example ``python -c "import secrets; print(secrets.token_urlsafe(50))"``).
  Task tokens are signed with it; the server will not start without it.
- ``DJANGO_ALLOWED_HOSTS``: the names clients reach the server by.
- ``DATABASE_URL``: PostgreSQL, for several workers or hosts.

The server sits behind a reverse proxy that ends TLS and sends
``X-Forwarded-Proto`` and ``X-Forwarded-For`` (uvicorn trusts them from
127.0.0.1; ``FORWARDED_ALLOW_IPS`` names other proxies). Task tokens decide
who may stream and act (``SignedTokens``): a Django view of yours hands them
out with ``streaming.ops.task_token`` or ``watch_url``.
"""

from __future__ import annotations

import os

from .settings import *  # noqa: F403 - the base settings, extended below
from .settings import STREAMING

# No default: the empty key makes the server refuse to start, naming the variable.
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "")
DEBUG = False
ALLOWED_HOSTS = [h for h in os.environ.get("DJANGO_ALLOWED_HOSTS", "").split(",") if h]

# For Django views a deployment serves beside the streaming server (the admin,
# a view that hands out task tokens). The streaming server answers outside
# Django's request cycle; the proxy in front of it speaks TLS.
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_SSL_REDIRECT = True
SECURE_HSTS_SECONDS = 365 * 24 * 3600
SECURE_HSTS_INCLUDE_SUBDOMAINS = True
SECURE_HSTS_PRELOAD = True
SESSION_COOKIE_SECURE = True
CSRF_COOKIE_SECURE = True

STREAMING = {
    **STREAMING,
    "AUTHORIZATION": [
        p.strip()
        for p in os.environ.get(
            "STREAMING_AUTHORIZATION", "streaming.ops.policy.SignedTokens"
        ).split(",")
        if p.strip()
    ],
}
