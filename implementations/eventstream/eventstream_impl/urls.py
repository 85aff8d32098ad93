"""Routes: the library's stream view for ``/stream/<model>/<id>``, the glue's commands."""

from __future__ import annotations

import django_eventstream
from django.urls import include, path, register_converter

from . import views


class TaskId:
    """Canonical ids only (EDGE-22): ASCII digits, no leading zero, below 2**63."""

    regex = "0|[1-9][0-9]{0,18}"

    def to_python(self, value: str) -> int:
        number = int(value)
        if number >= 2**63:
            raise ValueError(value)  # Django: no match, 404
        return number

    def to_url(self, value: int) -> str:
        return str(value)


register_converter(TaskId, "taskid")

urlpatterns = [
    path("health", views.health),
    # The library's README, "Setup": its URLs included where streams are served.
    path("stream/<str:model>/<taskid:task_id>", include(django_eventstream.urls)),
    path("tasks/<str:model>/<taskid:task_id>/start", views.start),
    path("tasks/<str:model>/<taskid:task_id>/cancel", views.cancel),
]

handler404 = "eventstream_impl.views.not_found"
handler500 = "eventstream_impl.views.server_error"
