"""``python -m misbehaving_impl.bloating_server <django command ...>``: the reference, leaking.

Every run that ends leaves its scratch store open: a SQLite database in
memory holding 64 KiB, as a server that gave each run a scratch database and
forgot to close it would. The store is the server's own, in its process,
whatever database the tasks are on, so the leak is the same on any of them
(and leaves no file behind).
"""

from __future__ import annotations

import sqlite3
import sys
from typing import Any

import django
from django.core.management import execute_from_command_line

#: Bytes each leaked store holds, twice PERF-4's allowance per task.
SCRATCH_BYTES = 64 * 1024

_kept: list[sqlite3.Connection] = []


def main() -> None:
    django.setup()
    from streaming.coordinator import Coordinator

    release = Coordinator._release

    def leaking_release(self: Coordinator, run: Any) -> None:
        scratch = sqlite3.connect(":memory:")
        scratch.execute("CREATE TABLE notes (body BLOB)")
        scratch.executemany(
            "INSERT INTO notes VALUES (?)", [(bytes(1024),)] * (SCRATCH_BYTES // 1024)
        )
        _kept.append(scratch)
        release(self, run)

    Coordinator._release = leaking_release  # type: ignore[method-assign]
    execute_from_command_line(["django-admin", *sys.argv[1:]])


if __name__ == "__main__":
    main()
