"""A streaming server starts the ``@task`` calls enqueued from anywhere, within a second.

Every ``INTERVAL`` seconds it reads the due READY rows (``run_after`` past or
unset, in the queues the backend accepts), highest ``priority`` first, then
oldest first, and starts each with ``Coordinator.start_task``. That start is
the guarded UPDATE every start is: with several workers polling the same
rows exactly one wins each, and the others are told False and move on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from functools import partial

from django.conf import settings
from django.db.models import Q
from django.db.models.functions import Now

from .. import db
from ..coordinator import Coordinator
from ..errors import CoordinatorClosed, UnknownTask
from ..states import TaskStatus
from .models import tasks

logger = logging.getLogger(__name__)

#: Seconds between two reads of the due rows.
INTERVAL = 0.5
#: Rows started per read at most: the rest wait for the next read.
BATCH = 32

BACKEND = "streaming.tasks.StreamingBackend"

#: The coordinators picking up tasks in this process: ``streaming.tasks.cancel`` uses one.
serving: list[Coordinator] = []


def configured_queues() -> set[str] | None:
    """The queues of every ``StreamingBackend`` in ``settings.TASKS``; None if there is none."""
    from .compat import task_backends

    configured = getattr(settings, "TASKS", None) or {}
    queues: set[str] = set()
    found = False
    for alias, options in configured.items():
        if options.get("BACKEND") in (BACKEND, "streaming.tasks.backend.StreamingBackend"):
            found = True
            queues |= set(task_backends[alias].queues)
    return queues if found else None


class Pickup:
    """Starts due ``@task`` rows on one coordinator, until it stops accepting work.

    ``queues``: the queues whose rows it starts; empty, every queue.
    """

    def __init__(self, coordinator: Coordinator, queues: set[str], interval: float = INTERVAL):
        self.coordinator = coordinator
        self.queues = queues
        self.interval = interval
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()

    def __repr__(self) -> str:
        return f"<Pickup queues={sorted(self.queues)} every {self.interval}s>"

    def start(self) -> None:
        if self._task is None:
            serving.append(self.coordinator)
            self._task = asyncio.create_task(self._forever(), name="streaming:tasks-pickup")

    async def stop(self) -> None:
        """Start nothing more; return once a start under way has ended.

        Not a cancel: a start cancelled between its claim and its run would
        leave a row RUNNING with no run, until its lease ran out.
        """
        if self.coordinator in serving:
            serving.remove(self.coordinator)
        self._stopping.set()
        if self._task is not None:
            await self._task

    async def _forever(self) -> None:
        while self.coordinator.accepting and not self._stopping.is_set():
            try:
                await self.once()
            except db.DatabaseUnavailable as exc:
                logger.warning("tasks pickup: %s", exc)
            except CoordinatorClosed:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.interval)

    async def once(self) -> int:
        """Start the due rows of one read; how many this coordinator started."""
        ready = tasks.objects.filter(status=TaskStatus.READY)
        if self.queues:  # Django's QUEUES: empty allows every queue
            ready = ready.filter(queue_name__in=self.queues)
        due = (
            ready.filter(Q(run_after__isnull=True) | Q(run_after__lte=Now()))
            .order_by("-priority", "pk")
            .values_list("pk", flat=True)[:BATCH]
        )
        started = 0
        for pk in await db.run(partial(db.listed, due)):
            if not self.coordinator.accepting or self._stopping.is_set():
                break
            try:
                started += await self.coordinator.start_task(tasks, pk)
            except UnknownTask:
                continue  # deleted meanwhile
        return started


def start_pickup(coordinator: Coordinator) -> Pickup | None:
    """A running :class:`Pickup` for ``coordinator`` when settings name the backend; else None."""
    queues = configured_queues()
    if queues is None:
        return None
    pickup = Pickup(coordinator, queues)
    pickup.start()
    return pickup
