"""procrastinate (PostgreSQL task queue) graded by the conformance suite.

Import is lazy: the entry point names ``ProcrastinateImplementation``, and
Django is configured only when a session starts.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ProcrastinateImplementation"]


def __getattr__(name: str) -> Any:
    if name == "ProcrastinateImplementation":
        from .adapter import ProcrastinateImplementation

        return ProcrastinateImplementation
    raise AttributeError(name)
