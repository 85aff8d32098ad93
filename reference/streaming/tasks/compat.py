"""Django's Tasks framework, wherever this Django has it.

Django 6.0 ships it as ``django.tasks``; on Django 5.2 the same API comes
from the ``django-tasks`` backport, as ``django_tasks``. Everything in
``streaming.tasks`` imports it from here, so one module knows the difference.
Where the backport names a thing differently (``InvalidTaskError`` for
Django's ``InvalidTask``), the name here is Django's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # mypy reads the backport's types; Django 6's are the same API
    from django_tasks import task as task_decorator
    from django_tasks import task_backends
    from django_tasks.backends.base import BaseTaskBackend
    from django_tasks.base import Task, TaskContext, TaskError, TaskResult, TaskResultStatus
    from django_tasks.exceptions import InvalidTaskError as InvalidTask
    from django_tasks.exceptions import TaskResultDoesNotExist

    SOURCE = "django_tasks"
else:
    try:
        from django.tasks import task as task_decorator
        from django.tasks import task_backends
        from django.tasks.backends.base import BaseTaskBackend
        from django.tasks.base import Task, TaskContext, TaskError, TaskResult, TaskResultStatus
        from django.tasks.exceptions import InvalidTask, TaskResultDoesNotExist

        SOURCE = "django.tasks"
    except ImportError:  # Django before 6.0: the backport
        from django_tasks import task as task_decorator
        from django_tasks import task_backends
        from django_tasks.backends.base import BaseTaskBackend
        from django_tasks.base import Task, TaskContext, TaskError, TaskResult, TaskResultStatus
        from django_tasks.exceptions import InvalidTaskError as InvalidTask
        from django_tasks.exceptions import TaskResultDoesNotExist

        SOURCE = "django_tasks"


__all__ = [
    "SOURCE",
    "BaseTaskBackend",
    "InvalidTask",
    "Task",
    "TaskContext",
    "TaskError",
    "TaskResult",
    "TaskResultDoesNotExist",
    "TaskResultStatus",
    "task_backends",
    "task_decorator",
]
