"""The contract adapter: what the conformance suite loads as ``--impl independent``.

One :class:`IndependentImplementation` per test session. It makes the
session's SQLite file (removed in :meth:`close`), and every runtime it
starts and every server process it describes shares that file and one set
of :class:`~independent_impl.settings.Settings`, so the deadlines it
declares in :attr:`timings` are the ones they keep.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import sqlite3
import sys
import tempfile
from collections.abc import AsyncIterator, Mapping

import uvicorn

from conformance.contract import Capability, Implementation, Runtime, ServerSpec, Timings

from .coordinator import Coordinator
from .http import MAX_HEADER_BYTES
from .settings import Settings
from .store import Store

__all__ = ["IndependentImplementation"]

__version__ = "0.1.0"

#: Holds SQLite's write lock until its standard input closes: a real outage
#: for every other connection, in every process (EDGE-11, EDGE-12).
_LOCK_HOLDER = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=60)
conn.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
sys.stdin.read()
conn.execute("ROLLBACK")
conn.close()
"""


class IndependentImplementation(Implementation):
    """asyncio, sqlite3 and a raw ASGI app on uvicorn, written from SPEC.md and the contract."""

    name = "independent"
    version = __version__
    contract_version = "2.1"
    capabilities = frozenset(
        {
            Capability.HTTP,
            Capability.PROCESS,
            Capability.PERSISTENCE,
            Capability.CANCEL,
            Capability.TIMEOUTS,
            Capability.SIGNALS,
            Capability.RESUME,
            Capability.RETRY,
            Capability.RECOVERY,
            Capability.FAULT_INJECTION,
        }
    )
    expected_failures: Mapping[str, str] = {
        "EDGE-24": (
            "uvicorn reads a request head with no deadline (neither its h11 protocol nor its "
            "httptools one has one), and independent adds none: a connection that never "
            "finishes its head stays open."
        ),
        "EDGE-9:cancelled_on_its_server_when_server_dies": (
            "independent: a cancel its server answered true, then the server killed while the "
            "task ignores the cancel, is recorded INTERRUPTED by the run's finder, not "
            "CANCELLED (the cancel is kept only in the dead process); found by the soak"
        ),
    }
    racy_failures: Mapping[str, str] = {
        "EDGE-11": (
            "independent: after a database outage (the SQLite write lock held) that outlasts "
            "its 5 s lease, a run whose heartbeat stopped meanwhile can still be taken for lost "
            "by another process's run finder once the database is back: the task is recorded "
            "INTERRUPTED instead of completing; seen once in CI under load"
        ),
    }
    #: The longest request head the server reads (SPEC HTTP-10).
    max_header_bytes = MAX_HEADER_BYTES
    # Lost runs: a lease of 5 s, looked at every second, so found within about 6 s.
    timings = Timings(keepalive=5.0, write_deadline=5.0, cancel_grace=2.0, orphan_timeout=10.0)
    client_queue_size = 1000

    def __init__(self) -> None:
        self._directory = tempfile.mkdtemp(prefix="conformance-independent-")
        database = os.path.join(self._directory, "tasks.sqlite3")
        Store.initialize(database)
        self.settings = Settings(
            database=database,
            keepalive=self.timings.keepalive,
            write_deadline=self.timings.write_deadline,
            cancel_grace=self.timings.cancel_grace,
            lease_ttl=5.0,
            lease_interval=1.0,
            client_queue_size=self.client_queue_size,
        )

    async def start(self) -> Runtime:
        return await Coordinator.start(self.settings)

    def server_command(self, host: str, port: int, *, grace: float = 5.0) -> ServerSpec:
        argv = [sys.executable, "-m", "independent_impl.server"]
        argv += ["--host", host, "--port", str(port), "--grace", str(grace)]
        return ServerSpec(argv=argv, env=self.settings.to_env())

    def database_outage(self) -> contextlib.AbstractAsyncContextManager[None]:
        return _outage(self.settings.database)

    async def drop_database_connections(self) -> bool:
        return False  # SQLite has no server, so no sessions to end

    def environment(self) -> Mapping[str, str]:
        return {
            "stack": f"asyncio, sqlite3 {sqlite3.sqlite_version}, uvicorn {uvicorn.__version__}",
            "database": "sqlite",
        }

    def close(self) -> None:
        shutil.rmtree(self._directory, ignore_errors=True)


@contextlib.asynccontextmanager
async def _outage(database: str) -> AsyncIterator[None]:
    holder = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _LOCK_HOLDER,
        database,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert holder.stdin is not None and holder.stdout is not None
    try:
        if (await holder.stdout.readline()).strip() != b"locked":
            raise RuntimeError(
                "Cannot make the database unavailable: the lock holder exited without the lock."
            )
        yield
    finally:
        holder.stdin.close()
        await holder.stdout.read()
        try:
            async with asyncio.timeout(10):
                await holder.wait()
        except TimeoutError:
            holder.kill()
            await holder.wait()
