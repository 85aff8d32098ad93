"""The cases the baseline fails, each with what the seed's system lacked."""

EXPECTED_FAILURES: dict[str, str] = {}
