"""The ASGI application: Django's, as the library's README deploys it (``ASGI_APPLICATION``)."""

from __future__ import annotations

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "eventstream_impl.settings")

application = get_asgi_application()
