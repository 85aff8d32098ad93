"""The channel manager: which django-eventstream channel a stream request reads.

The library's README: "If even more advanced channel mapping is needed,
implement a channel manager and override ``get_channels_for_request``".
The glue maps ``/stream/task/<id>`` to the task's channel, and answers 404
for a task that does not exist (Django's ``Http404``, raised in the
library's view).
"""

from __future__ import annotations

from typing import Any

from django.http import Http404
from django_eventstream.channelmanager import DefaultChannelManager

from .models import Task, channel_for
from .runner import MODEL


class TaskChannelManager(DefaultChannelManager):
    def get_channels_for_request(self, request: Any, view_kwargs: dict[str, Any]) -> set[str]:
        model, pk = view_kwargs.get("model"), view_kwargs.get("task_id")
        if model != MODEL or pk is None or not Task.objects.filter(pk=pk).exists():
            raise Http404(f"No task {model!r} {pk!r}.")
        return {channel_for(pk)}
