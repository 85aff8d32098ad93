"""The cases django-eventstream fails under the suite, each with who fails and why."""

from __future__ import annotations

EXPECTED_FAILURES: dict[str, str] = {}
RACY_FAILURES: dict[str, str] = {}
