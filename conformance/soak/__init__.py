"""``python -m conformance soak``: a long run under faults, judged by a checker afterwards."""
