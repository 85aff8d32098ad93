from django.apps import AppConfig


class StreamingTasksConfig(AppConfig):
    """``streaming.tasks``: Django's Tasks framework run by the streaming coordinator."""

    name = "streaming.tasks"
    # Not "tasks": a project's own app is often called that.
    label = "streaming_tasks"
    verbose_name = "Streaming tasks (django.tasks)"
    default_auto_field = "django.db.models.BigAutoField"
