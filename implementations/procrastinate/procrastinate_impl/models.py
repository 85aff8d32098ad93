"""The glue's two tables: a task (what procrastinate has no notion of) and its events.

A procrastinate job is one run of a task: ``Task.job_id`` names the current
one. The task row is the arbiter of a run's outcome: whoever ends the run
(the job in the worker, or a cancel of a job that never started) locks it
and writes the status and the terminal event in one transaction.
"""

from __future__ import annotations

from django.db import models


class Task(models.Model):
    behaviour = models.CharField(max_length=300)
    fields = models.JSONField(default=dict)
    status = models.CharField(max_length=16, default="READY")
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True)
    completed_at = models.DateTimeField(null=True)
    error = models.TextField(default="")
    attempt = models.IntegerField(default=0)
    #: The procrastinate job of the current run.
    job_id = models.BigIntegerField(null=True)
    #: Why the run is being stopped: "" (it is not), "cancel" or "shutdown".
    stop = models.CharField(max_length=16, default="")
    cancel_reason = models.TextField(default="")
    #: The id of the last event sent: ids increase per task, across runs.
    last_event_id = models.BigIntegerField(default=0)
    #: ``last_event_id`` when the current run began: later events are this run's.
    run_from = models.BigIntegerField(default=0)
    #: Each run's time limit in seconds (the glue's asyncio.timeout), or none.
    timeout = models.FloatField(null=True)
    #: Runs the implementation may start on its own, a lost run's again included.
    max_attempts = models.IntegerField(default=1)


class Event(models.Model):
    task = models.ForeignKey(Task, on_delete=models.CASCADE, related_name="events")
    number = models.BigIntegerField()
    type = models.CharField(max_length=64)
    #: JSON text, not jsonb: jsonb cannot hold U+0000 and reorders keys.
    data = models.TextField()
    timestamp = models.CharField(max_length=40)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["task", "number"], name="event_number_per_task")
        ]
