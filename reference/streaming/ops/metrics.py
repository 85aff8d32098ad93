"""Prometheus metrics of one server, served at ``/metrics`` by ``prometheus-client``.

Each coordinator gets a registry of its own (:meth:`Metrics.of`): a test
process runs many coordinators, and one process-wide registry would add up
their counts. What is counted, and where:

- events published: the coordinator's publish hook (``on_publish``), every
  event of every run of this process, terminal ones included;
- events delivered, overflows, cancel-to-delivery latency: each stream's
  writer reads its subscriber through a :class:`CountedSource`, which
  counts what it hands to the client's connection;
- open streams, refusals, stream answers by status: the server;
- tasks by kind and status: counted in the database by a scrape, in a thread
  and on a connection of its own, so that no other request's database work
  waits behind it. A scrape counts again once a run of this process has
  ended since the last count, or once ``METRICS_COUNT_INTERVAL`` has passed
  (for other processes' changes), and never more than once a second: other
  scrapes in between serve the counts read last. Sixteen scrapers of a
  million rows once held every other client's database work for seconds;
- running tasks: the coordinator's own count, at each scrape;
- drains: the server's shutdown.

The server answers ``/metrics`` to clients on this machine, and to those
that send ``Authorization: Bearer <METRICS_TOKEN>``: a task's policy decides
who may act on one task, and metrics are about all of them.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from ..events import CONTROL_TYPES, OVERFLOW, TERMINAL_TYPES, Event
from ..states import TaskStatus

if TYPE_CHECKING:
    from ..coordinator import Coordinator
    from ..hub import Message

logger = logging.getLogger(__name__)

CONTENT_TYPE = CONTENT_TYPE_LATEST
#: Seconds from a cancel request to its event at a client.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
#: Cancels remembered for the latency of their delivery; older ones are forgotten.
CANCELS_KEPT = 1000
#: Seconds a scrape waits for the database's task counts before it serves the last ones.
SCRAPE_DATABASE_TIMEOUT = 2.0
#: Seconds between two counts at least, however many scrapes ask.
COUNT_SPACING = 1.0

_metrics: weakref.WeakKeyDictionary[Coordinator, Metrics] = weakref.WeakKeyDictionary()


class Metrics:
    """The counters, gauges and histograms of one coordinator's servers."""

    @classmethod
    def of(cls, coordinator: Coordinator) -> Metrics:
        """The metrics of ``coordinator``, made (and hooked to its publishing) on first use."""
        found = _metrics.get(coordinator)
        if found is None:
            found = _metrics[coordinator] = cls(coordinator)
            coordinator.on_publish = found.published
        return found

    def __init__(self, coordinator: Coordinator) -> None:
        self._coordinator = weakref.ref(coordinator)
        self.registry = registry = CollectorRegistry()
        self.events_published = Counter(
            "streaming_events_published",
            "Events the runs of this process published, terminal events included.",
            registry=registry,
        )
        self.events_delivered = Counter(
            "streaming_events_delivered",
            "Events handed to HTTP clients' connections (one per client per event).",
            registry=registry,
        )
        self.overflows = Counter(
            "streaming_overflows",
            "Clients told 'overflow' and dropped for falling too far behind.",
            registry=registry,
        )
        self.cancellations = Counter(
            "streaming_cancellations",
            "Tasks this process recorded CANCELLED (running or not started).",
            registry=registry,
        )
        self.cancel_delivery = Histogram(
            "streaming_cancel_delivery_seconds",
            "Seconds from a cancel request to this server until its 'cancelled' event is "
            "handed to a client of this server; one observation per client.",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.shutdown_drains = Counter(
            "streaming_shutdown_drains",
            "Graceful shutdowns begun (SIGTERM or SIGINT).",
            registry=registry,
        )
        self.drain_seconds = Histogram(
            "streaming_shutdown_drain_seconds",
            "Seconds a graceful shutdown took to drain tasks and streams.",
            buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
            registry=registry,
        )
        self.open_streams = Gauge(
            "streaming_open_streams", "Event streams open on this server.", registry=registry
        )
        self.streams = Counter(
            "streaming_stream_requests",
            "Stream requests by the status they were answered with (204: nothing left to send).",
            ["code"],
            registry=registry,
        )
        self.refused = Counter(
            "streaming_requests_refused",
            "Requests refused before they reached a task, by why (a limit, the host, the "
            "origin, the authorization policy).",
            ["reason"],
            registry=registry,
        )
        self.running_tasks = Gauge(
            "streaming_running_tasks", "Runs in progress in this process.", registry=registry
        )
        self.running_tasks.set_function(self._running)
        self.tasks = Gauge(
            "streaming_tasks",
            "Stored tasks by kind and status, counted in the database for all scrapes at "
            "once (streaming_task_counts_age_seconds says how long ago).",
            ["kind", "status"],
            registry=registry,
        )
        self.database_up = Gauge(
            "streaming_database_up",
            "1 if the last task count could read the database, else 0.",
            registry=registry,
        )
        self.counts_age = Gauge(
            "streaming_task_counts_age_seconds",
            "Seconds since the task counts served were read; it grows while a count hangs.",
            registry=registry,
        )
        self.counts_age.set_function(self._counts_age)
        #: Task key -> loop time of the latest cancel request this server received.
        self._cancels: dict[str, float] = {}
        #: Seconds the task counts serve for other processes' changes.
        self.count_interval = coordinator.config.metrics_count_interval
        #: Loop time of the last count (-inf: none yet).
        self._counted_at = float("-inf")
        #: time.monotonic() of the last count that read the database (None: none yet).
        self._counted_wall: float | None = None
        #: A run of this process ended since the last count began.
        self._ended_since_count = True
        self._counting: asyncio.Task[None] | None = None

    def _counts_age(self) -> float:
        if self._counted_wall is None:
            return float("nan")
        return time.monotonic() - self._counted_wall

    def _running(self) -> float:
        coordinator = self._coordinator()
        return float(coordinator.stats()["running_tasks"]) if coordinator is not None else 0.0

    # -- hooks ----------------------------------------------------------------------

    def published(self, event: Event) -> None:
        """The coordinator published ``event`` (its ``on_publish`` hook)."""
        self.events_published.inc()
        if event.type in TERMINAL_TYPES:
            # Recorded before it was published: the next scrape counts again.
            self._ended_since_count = True
            if event.type == "cancelled":
                self.cancellations.inc()

    def cancel_asked(self, key: str) -> None:
        """A cancel of task ``key`` reached this server: its delivery will be timed."""
        if len(self._cancels) >= CANCELS_KEPT:
            del self._cancels[next(iter(self._cancels))]
        self._cancels.pop(key, None)
        self._cancels[key] = asyncio.get_running_loop().time()

    def handed(self, frames: Sequence[Message]) -> None:
        """A writer took ``frames`` from its subscriber to write them to its client."""
        count = len(frames)
        last = frames[-1]
        if last.final:
            kind = last.event.type
            if kind in CONTROL_TYPES:
                count -= 1  # a farewell or an overflow ends one client's stream: no event
                if kind == OVERFLOW:
                    self.overflows.inc()
            elif kind == "cancelled":
                asked = self._cancels.get(last.event.key)
                if asked is not None:
                    elapsed = asyncio.get_running_loop().time() - asked
                    self.cancel_delivery.observe(elapsed)
        self.events_delivered.inc(count)

    # -- exposition -------------------------------------------------------------------

    async def render(self) -> bytes:
        """The metrics in the Prometheus text format (task counts: see :meth:`_counts`)."""
        await self._counts()
        return generate_latest(self.registry)

    async def _counts(self) -> None:
        """Count again if a run ended here, or the counts are older than the interval."""
        loop = asyncio.get_running_loop()
        if self._counting is None:
            since = loop.time() - self._counted_at
            if not self._ended_since_count and since < self.count_interval:
                return
            self._counting = asyncio.create_task(
                self._count(max(0.0, COUNT_SPACING - since)), name="streaming:metrics-count"
            )
        try:
            async with asyncio.timeout(SCRAPE_DATABASE_TIMEOUT):
                await asyncio.shield(self._counting)
        except TimeoutError:
            pass  # this scrape serves the counts read last; the count goes on

    async def _count(self, delay: float) -> None:
        from .. import db
        from ..kinds import task_models

        try:
            if delay:
                await asyncio.sleep(delay)  # at most one count a second (COUNT_SPACING)
            self._ended_since_count = False
            models = task_models()
            began = time.monotonic()
            try:
                counts = await _counted(models)
            except db.DatabaseUnavailable as exc:
                logger.warning("metrics: task counts not read: database unavailable (%s)", exc)
                self.database_up.set(0)
                return
            took = time.monotonic() - began
            if took > SCRAPE_DATABASE_TIMEOUT:
                logger.info("metrics: counting the tasks took %.1fs", took)
            self.database_up.set(1)
            self._counted_wall = time.monotonic()
            for name, by_status in counts.items():
                for status in TaskStatus:
                    self.tasks.labels(kind=name, status=status.value).set(by_status.get(status, 0))
        finally:
            self._counted_at = asyncio.get_running_loop().time()
            self._counting = None


async def _counted(models: dict[str, Any]) -> dict[str, dict[str, int]]:
    """Tasks by kind and status, read off the ORM's thread where the database allows."""
    from asgiref.sync import sync_to_async
    from django.db import connection

    from .. import db

    def count() -> dict[str, dict[str, int]]:
        return {name: _status_counts(model) for name, model in models.items()}

    if connection.vendor == "sqlite":
        # A process's SQLite connections share the file's locks, and SQLite keeps
        # a closed connection's file open while another holds one: a connection
        # per count would leave a descriptor behind. On SQLite the count takes
        # the ORM's thread, once a COUNT_SPACING at most.
        return await db.run(lambda: sync_to_async(count, thread_sensitive=True)())
    return await db.aside(count)


def _status_counts(model: Any) -> dict[str, int]:
    from django.db.models import Count

    rows = model._default_manager.values("status").annotate(count=Count("pk")).order_by()
    return {row["status"]: row["count"] for row in rows}


class CountedSource:
    """A stream's subscriber as its writer reads it, counting what the writer takes."""

    __slots__ = ("_metrics", "_source")

    def __init__(self, source: Any, metrics: Metrics) -> None:
        self._source = source
        self._metrics = metrics

    @property
    def ended(self) -> bool:
        return bool(self._source.ended)

    def take(self) -> Sequence[Message]:
        frames: Sequence[Message] = self._source.take()
        if frames:
            self._metrics.handed(frames)
        return frames

    async def wait(self) -> None:
        await self._source.wait()

    def wake(self) -> None:
        self._source.wake()

    def close(self) -> None:
        self._source.close()
