"""django-eventstream under the conformance suite: see README.md beside this package."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .adapter import EventstreamImplementation

__all__ = ["EventstreamImplementation"]


def __getattr__(name: str) -> Any:
    # Lazily: Django imports this package as an app, before the adapter's imports are wanted.
    if name == "EventstreamImplementation":
        from .adapter import EventstreamImplementation

        return EventstreamImplementation
    raise AttributeError(name)
