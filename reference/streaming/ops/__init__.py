"""What running the server for others needs: who may do what, limits, metrics, a page.

One module per concern, each used by ``server.py``:

- :mod:`.policy`: who may stream, start, cancel and retry a task (401/403).
- :mod:`.guard`: requests the server refuses before any policy is asked:
  a ``Host`` it does not serve, a command from another origin; CORS.
- :mod:`.limits`: connections, request rates and subscribers per task (429/503).
- :mod:`.metrics`: Prometheus metrics at ``/metrics``.
- :mod:`.logs`: log records that carry the task's kind and id.
- :mod:`.watch`: the page that shows one task's events, kept and live, with its buttons.
- :mod:`.tasks_page`: the page that lists the tasks, newest first (``GET /``).

The settings are documented in the README, "Operations".
"""

from __future__ import annotations

from .policy import (
    AccessRequest,
    AllowAll,
    AnyOf,
    Decision,
    DjangoSession,
    LoopbackOnly,
    Policy,
    SignedTokens,
    task_token,
    watch_url,
)

__all__ = [
    "AccessRequest",
    "AllowAll",
    "AnyOf",
    "Decision",
    "DjangoSession",
    "LoopbackOnly",
    "Policy",
    "SignedTokens",
    "task_token",
    "watch_url",
]
