"""Celery with Redis under the conformance suite: see README.md beside this package."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .adapter import CeleryImplementation

__all__ = ["CeleryImplementation"]


def __getattr__(name: str) -> Any:
    # Lazily: the worker imports this package's app module without the suite's adapter.
    if name == "CeleryImplementation":
        from .adapter import CeleryImplementation

        return CeleryImplementation
    raise AttributeError(name)
