"""Limits per client and per task, answered at once: 429 (or 503) with Retry-After.

A client is one address, as uvicorn gives it (behind a proxy it trusts, the
address in ``X-Forwarded-For``). Nothing here waits: a request past a limit
is refused on arrival, so a flood costs the server one answer per request.

- ``MAX_CONNECTIONS``: requests in progress on this server, streams
  included; past it, 503 (the server is full, not the client greedy).
- ``MAX_CONNECTIONS_PER_CLIENT``: requests in progress from one client; 429.
- ``STREAMS_PER_SECOND`` / ``STREAM_BURST`` and ``POSTS_PER_SECOND`` /
  ``POST_BURST``: token buckets of new streams (and watch pages) and of
  commands per client; 429 with the seconds until the next token.
- ``MAX_SUBSCRIBERS_PER_TASK``: open streams of one task on this server; 429.

Probes and ``/metrics`` are neither counted nor limited.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable

from .guard import Refusal

#: Clients whose buckets are remembered; past it the least recently seen is
#: forgotten (it starts again with a full bucket), so memory stays bounded
#: whatever number of addresses a flood comes from.
MAX_TRACKED_CLIENTS = 100_000


class TokenBuckets:
    """One token bucket per client: ``burst`` tokens at most, ``rate`` more each second."""

    def __init__(self, rate: float, burst: int, *, max_clients: int = MAX_TRACKED_CLIENTS) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError(f"Cannot limit to {rate} a second after {burst}: both must be > 0.")
        self.rate = rate
        self.burst = burst
        self.max_clients = max_clients
        #: client -> (tokens left, loop time they were counted), least recently used first.
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, client: str, now: float) -> float:
        """Take a token: 0.0 if there was one, else the seconds until there is."""
        found = self._buckets.pop(client, None)
        if found is None:
            tokens = float(self.burst)
            if len(self._buckets) >= self.max_clients:
                self._buckets.popitem(last=False)
        else:
            tokens = min(float(self.burst), found[0] + (now - found[1]) * self.rate)
        if tokens >= 1.0:
            self._buckets[client] = (tokens - 1.0, now)
            return 0.0
        self._buckets[client] = (tokens, now)
        return (1.0 - tokens) / self.rate


class Slots:
    """How many of something each key holds at once, up to ``limit`` (None: no limit)."""

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self._held: dict[str, int] = {}

    def __getitem__(self, key: str) -> int:
        return self._held.get(key, 0)

    @property
    def total(self) -> int:
        return sum(self._held.values())

    def acquire(self, key: str) -> bool:
        held = self._held.get(key, 0)
        if self.limit is not None and held >= self.limit:
            return False
        self._held[key] = held + 1
        return True

    def release(self, key: str) -> None:
        held = self._held.get(key, 0) - 1
        if held > 0:
            self._held[key] = held
        else:
            self._held.pop(key, None)


class Limits:
    """Every limit of one server, and the count of what each client holds."""

    def __init__(
        self,
        *,
        max_connections: int | None = None,
        max_connections_per_client: int | None = None,
        max_subscribers_per_task: int | None = None,
        streams_per_second: float | None = None,
        stream_burst: int = 1,
        posts_per_second: float | None = None,
        post_burst: int = 1,
        retry_after: int = 1,
        on_refusal: Callable[[str], None] | None = None,
    ) -> None:
        self.max_connections = max_connections
        self.connections = 0
        self.per_client = Slots(max_connections_per_client)
        self.per_task = Slots(max_subscribers_per_task)
        self.streams = (
            TokenBuckets(streams_per_second, stream_burst) if streams_per_second else None
        )
        self.posts = TokenBuckets(posts_per_second, post_burst) if posts_per_second else None
        #: Seconds a client refused for holding too much is told to wait.
        self.retry_after = max(1, retry_after)
        #: Told the kind of every refusal (metrics count them).
        self.on_refusal = on_refusal

    def _refuse(self, kind: str, status: int, reason: str, retry_after: float) -> Refusal:
        if self.on_refusal is not None:
            self.on_refusal(kind)
        seconds = str(max(1, math.ceil(retry_after)))
        return Refusal(status, reason, (("retry-after", seconds),))

    def enter(self, client: str, *, server_wide: bool = True) -> Refusal | None:
        """Count a request in progress; None if it may go on (then call :meth:`leave`).

        ``server_wide=False`` counts it toward its client only: a metrics
        scrape must still answer when the server is full, which is when it
        matters most.
        """
        if (
            server_wide
            and self.max_connections is not None
            and self.connections >= self.max_connections
        ):
            return self._refuse(
                "connections",
                503,
                f"The server is at its limit of {self.max_connections} connections; "
                "try again shortly.",
                self.retry_after,
            )
        if not self.per_client.acquire(client):
            return self._refuse(
                "client_connections",
                429,
                f"Too many connections from {client}: at most {self.per_client.limit} at once.",
                self.retry_after,
            )
        if server_wide:
            self.connections += 1
        return None

    def leave(self, client: str, *, server_wide: bool = True) -> None:
        if server_wide:
            self.connections -= 1
        self.per_client.release(client)

    def take(self, kind: str, client: str, now: float) -> Refusal | None:
        """Take a token for a new ``"stream"`` or ``"post"``; None if there was one."""
        buckets = self.streams if kind == "stream" else self.posts
        if buckets is None:
            return None
        wait = buckets.take(client, now)
        if not wait:
            return None
        what = "new streams" if kind == "stream" else "commands"
        return self._refuse(
            f"{kind}_rate",
            429,
            f"Too many {what} from {client}: at most {buckets.rate:g} a second after a burst "
            f"of {buckets.burst}.",
            wait,
        )

    def join_task(self, key: str) -> Refusal | None:
        """Count a stream of task ``key``; None if it may open (then call :meth:`leave_task`)."""
        if self.per_task.acquire(key):
            return None
        model, _, pk = key.partition(":")
        return self._refuse(
            "task_subscribers",
            429,
            f"{model} {pk} has {self.per_task.limit} open streams here, its limit.",
            self.retry_after,
        )

    def leave_task(self, key: str) -> None:
        self.per_task.release(key)
