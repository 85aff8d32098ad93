"""Settings one session shares between its runtimes and its server processes.

A runtime reads them from the :class:`Settings` it is started with; a server
process reads the same values from its environment (:meth:`Settings.from_env`),
which :meth:`Settings.to_env` fills. So the deadlines the implementation
declares to the suite are the ones both kinds of process keep.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["ENV_PREFIX", "Settings"]

#: Every setting is ``INDEPENDENT_<NAME>`` in a server process's environment.
ENV_PREFIX = "INDEPENDENT_"


@dataclass(frozen=True, slots=True)
class Settings:
    """Deadlines, bounds and the database path; all times in seconds."""

    #: The SQLite file every runtime and server process of a session shares.
    database: str
    #: An idle stream carries a keep-alive comment at least this often.
    keepalive: float = 5.0
    #: A write to a client that stalls this long closes its connection.
    write_deadline: float = 5.0
    #: A stopped task gets this long to finish before it is cancelled again, then abandoned.
    cancel_grace: float = 2.0
    #: A run whose heartbeat has not moved for this long (while the database
    #: took writes) is taken for lost.
    lease_ttl: float = 5.0
    #: How often leases are renewed, lost runs looked for and remote outcomes polled.
    lease_interval: float = 1.0
    #: Events a client may fall behind before it is sent ``overflow``.
    client_queue_size: int = 1000
    #: Events of a running task kept in memory for late and resuming clients.
    history_size: int = 256
    #: Bytes of those events, at most.
    history_bytes: int = 4 * 1024 * 1024
    #: Events kept in the database per task, for clients resuming after a restart.
    log_size: int = 1000
    #: Events larger than this are not logged (a resuming client is told of the gap).
    log_event_bytes: int = 1024 * 1024
    #: The reconnect delay every stream suggests (``retry:``), in milliseconds.
    retry_ms: int = 2000
    #: How long a writer waits for SQLite's write lock before the call fails.
    busy_timeout: float = 5.0

    def to_env(self) -> dict[str, str]:
        """These settings as environment variables, for a server process."""
        return {
            ENV_PREFIX + f.name.upper(): str(getattr(self, f.name))
            for f in dataclasses.fields(self)
        }

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        """Settings from ``INDEPENDENT_*`` variables; the database is required."""
        values: dict[str, object] = {}
        for f in dataclasses.fields(cls):
            raw = env.get(ENV_PREFIX + f.name.upper())
            if raw is None:
                continue
            kind = type(f.default) if f.default is not dataclasses.MISSING else str
            values[f.name] = kind(raw)
        if "database" not in values:
            raise ValueError(
                f"Cannot configure a server without a database: set {ENV_PREFIX}DATABASE "
                "to the session's SQLite file."
            )
        return cls(**values)  # type: ignore[arg-type]
