"""The task kinds there are: concrete :class:`StreamTask` models, found by class name."""

from __future__ import annotations

from django.apps import apps

from .errors import UnknownTask
from .models import StreamTask


def task_models() -> dict[str, type[StreamTask]]:
    """Concrete StreamTask models by class name: the only ones reachable by name."""
    return {model.__name__: model for model in apps.get_models() if issubclass(model, StreamTask)}


def resolve_model(name: str) -> type[StreamTask]:
    """The model called ``name``; :class:`UnknownTask` (naming the known ones) if none is."""
    models = task_models()
    try:
        return models[name]
    except KeyError:
        raise UnknownTask(f"Unknown task model {name!r}.", known=sorted(models)) from None
