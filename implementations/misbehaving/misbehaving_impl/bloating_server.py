"""``python -m misbehaving_impl.bloating_server <django command ...>``: the reference, leaking.

Every run that ends leaves a new SQLite connection open (and its page
cache), as a server that opened one per run and forgot to close it would.
"""

from __future__ import annotations

import sqlite3
import sys
from typing import Any

import django
from django.conf import settings
from django.core.management import execute_from_command_line

_kept: list[sqlite3.Connection] = []


def main() -> None:
    django.setup()
    from streaming.coordinator import Coordinator

    release = Coordinator._release

    def leaking_release(self: Coordinator, run: Any) -> None:
        connection = sqlite3.connect(settings.DATABASES["default"]["NAME"])
        connection.execute("SELECT COUNT(*) FROM sqlite_master").fetchall()
        _kept.append(connection)
        release(self, run)

    Coordinator._release = leaking_release  # type: ignore[method-assign]
    execute_from_command_line(["django-admin", *sys.argv[1:]])


if __name__ == "__main__":
    main()
