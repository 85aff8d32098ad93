"""The glue's one table: a task, its fields and the state of its run.

django-eventstream stores events, not tasks; a task and its status are the
glue's. Field names follow the contract's ``TaskState``.
"""

from __future__ import annotations

from django.db import models


class Task(models.Model):
    READY = "READY"
    RUNNING = "RUNNING"

    #: The behaviour's import path (``module:function``), resolved when it runs.
    behaviour = models.CharField(max_length=300)
    fields = models.JSONField(default=dict)
    status = models.CharField(max_length=20, default=READY, db_index=True)
    error = models.TextField(default="", blank=True)
    attempt = models.PositiveIntegerField(default=0)
    timeout_seconds = models.FloatField(null=True)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True)
    completed_at = models.DateTimeField(null=True)

    @property
    def channel(self) -> str:
        return channel_for(self.pk)


def channel_for(pk: int) -> str:
    """The django-eventstream channel of a task's events."""
    return f"task-{pk}"
