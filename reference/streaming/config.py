"""The coordinator's knobs in one frozen object, read from ``settings.STREAMING``.

Every part (coordinator, keeper, event log, server) takes its numbers from a
:class:`Config`, so a test or the conformance adapter can run a coordinator
with other values without touching Django settings.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured


@dataclass(frozen=True, slots=True)
class Config:
    """What settings.STREAMING says, one field per key (``TASK_TIMEOUT`` -> ``task_timeout``)."""

    #: Seconds a run may take before it is stopped with a "timeout" event; None: no limit.
    task_timeout: float | None = None
    #: Seconds a cancelled task gets for its cleanup before it is given up on.
    cancel_grace: float = 5.0
    #: Seconds running tasks get to finish when the server shuts down.
    shutdown_grace: float = 10.0
    #: Events a client may fall behind before it is told ("overflow") and dropped.
    client_queue_size: int = 1000
    #: Events kept in memory per task, for late joiners and resuming clients.
    history_size: int = 256
    #: Bytes of events kept in memory per running task, the latest event aside.
    history_bytes: int = 4 * 1024 * 1024
    #: Bytes of events kept in memory for all finished tasks together.
    closed_history_bytes: int = 32 * 1024 * 1024
    #: Seconds between keep-alive comments on an idle stream.
    keepalive: float = 15.0
    #: Seconds a write to a client may stall before its connection is closed.
    write_deadline: float = 10.0
    #: Reconnect delay suggested to clients (SSE ``retry:``), in milliseconds.
    retry_ms: int = 2000
    #: Seconds a run's lease lasts; its owner renews it every third of that.
    lease: float = 15.0
    #: Runs a task may be given without a request: an interrupted run is run
    #: again while fewer have started. A kind or a task may say otherwise.
    max_attempts: int = 1
    #: Keep each task's recent events in the database, for resuming after a restart.
    event_log: bool = True
    #: Events larger than this (encoded) stay out of the database's event log.
    event_log_max_event_bytes: int = 1024 * 1024
    #: Redis for a bus shared by several worker processes; None keeps events
    #: in this process (one worker).
    redis_url: str | None = None
    #: Prefix of every Redis key and channel, so several deployments (or test
    #: sessions) can share one Redis.
    redis_prefix: str = "streaming"

    # -- operations (streaming/ops/, README "Operations") --------------------------
    #: Who may stream, start, cancel and retry a task: a policy (a callable
    #: given an ``ops.policy.AccessRequest``), its dotted path, or a list of
    #: them (the first that allows wins). The default allows clients on this
    #: machine only.
    authorization: Any = "streaming.ops.policy.LoopbackOnly"
    #: Seconds a signed task token (``ops.policy.task_token``) stays valid.
    token_max_age: float = 3600.0
    #: Origins other than the server's own that browsers may use it from
    #: (CORS), such as ``"https://app.example.com"``; they may also send commands.
    cors_allowed_origins: tuple[str, ...] = ()
    #: Let those origins send cookies (``Access-Control-Allow-Credentials``).
    cors_allow_credentials: bool = False
    #: Seconds a browser may keep a preflight's answer.
    cors_max_age: int = 600
    #: Requests in progress (streams included) on this server; past it, 503.
    #: None: no limit but the process's file descriptors.
    max_connections: int | None = None
    #: Connections open from one client address, streams and unfinished requests
    #: included; past it, 429.
    max_connections_per_client: int | None = 256
    #: Bytes of a request head (request line and headers) the server reads; past
    #: it, 431. Seeing to it costs nothing, and a head without end held the loop.
    header_bytes: int = 64 * 1024
    #: Seconds a connection has to send a whole request head, from its opening
    #: (or from the first byte of a later request on it); past it, 408.
    header_timeout: float = 60.0
    #: Streams one task may have open on this server; past it, 429.
    max_subscribers_per_task: int | None = 10_000
    #: New streams (and watch pages) per second one client may open, after a
    #: burst of ``stream_burst``; past it, 429. None: no limit.
    streams_per_second: float | None = 20.0
    stream_burst: int = 100
    #: Commands (POST) per second one client may send, after a burst of
    #: ``post_burst``; past it, 429. None: no limit.
    posts_per_second: float | None = 10.0
    post_burst: int = 50
    #: Serve Prometheus metrics at ``/metrics``.
    metrics: bool = True
    #: A bearer token that lets clients on other machines scrape ``/metrics``
    #: (clients on this machine need none); None: only this machine's.
    metrics_token: str | None = None
    #: Seconds a scrape's task counts serve for other processes' changes
    #: (this process's own show at the next scrape).
    metrics_count_interval: float = 15.0

    @classmethod
    def from_settings(cls, **overrides: Any) -> Config:
        """The configuration ``settings.STREAMING`` gives, with ``overrides`` on top.

        A key neither knows is a mistake, never dropped: ``ImproperlyConfigured``
        for ``settings.STREAMING``, ``TypeError`` for ``overrides``, each naming
        the key and the known one it is closest to.
        """
        configured = getattr(settings, "STREAMING", {})
        names = {field.name for field in dataclasses.fields(cls)}
        for key in configured:
            if key.lower() not in names:
                raise ImproperlyConfigured(
                    f"Unknown key {key!r} in settings.STREAMING"
                    f"{_closest(key.lower(), names, upper=True) or '.'}"
                )
        for key in overrides:
            if key not in names:
                raise TypeError(f"Unknown streaming setting {key!r}{_closest(key, names) or '.'}")
        values = {key.lower(): value for key, value in configured.items()}
        return cls(**{**values, **overrides})

    @property
    def heartbeat(self) -> float:
        """Seconds between two renewals of a lease (and two looks for lost runs)."""
        return self.lease / 3


def _closest(name: str, known: Iterable[str], *, upper: bool = False) -> str:
    """ "; did you mean 'X'?" for the known name closest to ``name``, or ""."""
    found = difflib.get_close_matches(name, sorted(known), n=1)
    if not found:
        return ""
    return f"; did you mean {(found[0].upper() if upper else found[0])!r}?"
