"""A server's Prometheus metrics, as a case reads them: scraped, then summed by series."""

from __future__ import annotations

import httpx

from . import prometheus
from .access import answer

Samples = prometheus.Samples


async def scrape(http: httpx.AsyncClient) -> Samples:
    """``GET /metrics``, answered in time and in a Prometheus text format; its samples."""
    response = await answer(http.get("/metrics"))
    assert response.status_code == 200, response.text
    kind = response.headers.get("content-type", "")
    assert kind.startswith(("text/plain", "application/openmetrics-text")), kind
    return prometheus.parse(response.text)


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels``; fails if none."""
    found = [v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= ls]
    assert found, (
        f"no sample {name}{labels or ''} in the metrics: {sorted({n for n, _ in samples})}"
    )
    return sum(found)


__all__ = ["Samples", "scrape", "value"]
