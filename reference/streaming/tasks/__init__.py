"""Django's Tasks framework (``django.tasks``), streamed and cancellable.

Settings::

    INSTALLED_APPS = [..., "streaming", "streaming.tasks"]
    TASKS = {"default": {"BACKEND": "streaming.tasks.StreamingBackend"}}

Any ``@task`` function, async or sync, enqueued from any process, is started
by a running streaming server within a second (``pickup.py``) and runs on its
coordinator, as a :class:`~streaming.tasks.models.tasks` row: the result id
is the row's id. A task with ``takes_context=True`` sends progress with
:func:`send_event` (or :func:`send_event_sync` from a sync task); clients
follow it at ``GET /stream/tasks/<result id>`` and watch it at
``/tasks/tasks/<result id>``. :func:`cancel` and :func:`acancel` stop it.

Django's ``TaskResultStatus`` has no cancelled, timed-out or interrupted
member: those endings read FAILED, with ``errors`` ending in an
``asyncio.CancelledError``, a ``TimeoutError`` or a
:class:`~streaming.tasks.models.TaskInterrupted`; :func:`ending` gives the
exact one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .api import acancel, aending, cancel, ending, send_event, send_event_sync
    from .backend import StreamingBackend
    from .models import TaskInterrupted

__all__ = [
    "StreamingBackend",
    "TaskInterrupted",
    "acancel",
    "aending",
    "cancel",
    "ending",
    "send_event",
    "send_event_sync",
]

#: Where each name is defined. Imported on first use: Django imports this
#: package (the app) before its models may be, and these import them.
_HOMES = {
    "StreamingBackend": "backend",
    "TaskInterrupted": "models",
    **dict.fromkeys(
        ["acancel", "aending", "cancel", "ending", "send_event", "send_event_sync"], "api"
    ),
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(f"{__name__}.{home}"), name)
    globals()[name] = value
    return value
