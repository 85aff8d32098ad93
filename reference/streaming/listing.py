"""The tasks there are, newest first, a page at a time: what ``GET /`` lists.

Each kind is a table of its own, so a page across kinds is merged here: each
kind's newest rows down to the end of the page, merged by creation time. A
page further back costs more (each kind reads every row before it), so the
list reaches back :data:`DEPTH` tasks; a filter reaches older ones.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from functools import partial

from . import db
from .models import StreamTask
from .states import TaskStatus

#: Tasks a list reaches back, whatever its filters.
DEPTH = 10_000
#: Tasks a page shows unless asked for another number, and the most it shows.
PER_PAGE = 25
MAX_PER_PAGE = 100


@dataclass(frozen=True, slots=True)
class TaskQuery:
    """Which tasks (of one kind, in one status, or any) and which page of them."""

    kind: type[StreamTask] | None = None
    status: TaskStatus | None = None
    #: From 1, the newest.
    page: int = 1
    per_page: int = PER_PAGE

    def __post_init__(self) -> None:
        assert self.page >= 1 and 1 <= self.per_page <= MAX_PER_PAGE, self
        assert self.end <= DEPTH, f"{self} reaches past the list's depth, {DEPTH} tasks"

    @property
    def offset(self) -> int:
        """Tasks on the pages before this one."""
        return (self.page - 1) * self.per_page

    @property
    def end(self) -> int:
        return self.offset + self.per_page


@dataclass(frozen=True, slots=True)
class TaskRow:
    """One task as the list shows it."""

    model: type[StreamTask]
    pk: int
    status: TaskStatus
    created_at: datetime
    started_at: datetime | None
    completed_at: datetime | None
    attempt: int

    @property
    def kind(self) -> str:
        return self.model.__name__


@dataclass(frozen=True, slots=True)
class TaskPage:
    """One page of the list: its rows, newest first, and whether older ones follow."""

    query: TaskQuery
    rows: list[TaskRow]
    more: bool


_COLUMNS = ("pk", "status", "created_at", "started_at", "completed_at", "attempt")


async def newest(models: Iterable[type[StreamTask]], query: TaskQuery) -> TaskPage:
    """The page of tasks of ``models`` that ``query`` asks for, newest first."""
    found: list[TaskRow] = []
    for model in models:
        # One row past the page's end: whether another page follows.
        rows = model._default_manager.order_by("-created_at", "-pk")
        if query.status is not None:
            rows = rows.filter(status=query.status)
        values = rows.values_list(*_COLUMNS)[: query.end + 1]
        for pk, status, created, started, completed, attempt in await db.run(
            partial(db.listed, values)
        ):
            found.append(
                TaskRow(model, pk, TaskStatus(status), created, started, completed, attempt)
            )
    found.sort(key=lambda row: (row.created_at, row.kind, row.pk), reverse=True)
    return TaskPage(query, found[query.offset : query.end], more=len(found) > query.end)
