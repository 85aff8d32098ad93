"""The page that lists tasks: ``GET /``, newest first, a page at a time.

Plain HTML with no script at all: the filters (kind, status) and the pages
are links, each keeping the others and the ``?token=`` the list was opened
with, and each task links to its own page (``watch.py``). Which tasks it is
given, and which kinds it may name, the handler decides (``web/handlers.py``).
"""

from __future__ import annotations

import html
import secrets
from datetime import UTC, datetime
from urllib.parse import quote, urlencode

from ..listing import PER_PAGE, TaskPage, TaskQuery, TaskRow
from ..states import TaskStatus
from .policy import TOKEN_QUERY
from .watch import STYLE, fill, headers


def render(
    found: TaskPage, rows: list[TaskRow], kinds: list[str], token: str | None
) -> tuple[dict[str, str], str]:
    """The list's headers and HTML: ``rows`` of the page ``found``, filters for ``kinds``."""
    query = found.query
    kind = query.kind.__name__ if query.kind is not None else None
    links = _Links(query, token)
    kind_links = [links.to(None, query.status, "any kind", kind is None)]
    kind_links += [links.to(name, query.status, name, name == kind) for name in kinds]
    status_links = [links.to(kind, None, "any status", query.status is None)]
    status_links += [links.to(kind, s, s, s == query.status) for s in TaskStatus.values]
    pages = []
    if query.page > 1:
        pages.append(f'<a rel="prev" href="{links.page(query.page - 1)}">Newer</a>')
    pages.append(f"<span>Page {query.page}</span>")
    if found.more:
        pages.append(f'<a rel="next" href="{links.page(query.page + 1)}">Older</a>')
    filtered = kind is not None or query.status is not None
    empty = "No tasks match these filters." if filtered else "No tasks yet."
    nonce = secrets.token_urlsafe(16)
    page = fill(
        _PAGE,
        {
            "nonce": nonce,
            "kinds": " ".join(kind_links),
            "statuses": " ".join(status_links),
            "rows": "\n".join(_row(row, token) for row in rows),
            "empty": "" if rows else f'<p class="empty">{empty}</p>',
            "pages": " ".join(pages),
        },
    )
    return headers(nonce), page


class _Links:
    """The list's own URLs: the same query with one thing changed, and the token kept."""

    def __init__(self, query: TaskQuery, token: str | None) -> None:
        self.query = query
        self.token = token

    def href(self, kind: str | None, status: str | None, page: int | None) -> str:
        params: list[tuple[str, str]] = []
        if kind is not None:
            params.append(("kind", kind))
        if status is not None:
            params.append(("status", status))
        if self.query.per_page != PER_PAGE:
            params.append(("per_page", str(self.query.per_page)))
        if page is not None:
            params.append(("page", str(page)))
        if self.token:
            params.append((TOKEN_QUERY, self.token))
        return html.escape(f"/?{urlencode(params)}" if params else "/")

    def to(self, kind: str | None, status: str | None, label: str, current: bool) -> str:
        """A filter's link (back to the first page); the current one is marked."""
        mark = ' aria-current="true"' if current else ""
        return f'<a href="{self.href(kind, status, None)}"{mark}>{html.escape(label)}</a>'

    def page(self, number: int) -> str:
        query = self.query
        kind = query.kind.__name__ if query.kind is not None else None
        return self.href(kind, query.status, number)


def _row(row: TaskRow, token: str | None) -> str:
    kind, status = html.escape(row.kind), html.escape(row.status)
    href = f"/tasks/{quote(row.kind)}/{row.pk}"
    if token:
        href += f"?{urlencode({TOKEN_QUERY: token})}"
    return (
        f'<tr class="task" data-kind="{kind}" data-id="{row.pk}" data-status="{status}">'
        f'<td><a href="{html.escape(href)}">{kind} #{row.pk}</a></td>'
        f'<td class="status" data-status="{status}">{status}</td>'
        f"<td>{_time(row.created_at)}</td><td>{_time(row.started_at)}</td>"
        f"<td>{_time(row.completed_at)}</td><td>{row.attempt}</td></tr>"
    )


def _time(when: datetime | None) -> str:
    if when is None:
        return ""
    when = when.astimezone(UTC)
    return f'<time datetime="{when.isoformat()}">{when:%Y-%m-%d %H:%M:%S} UTC</time>'


_PAGE = (
    """\
<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Tasks</title>
<style nonce="{{nonce}}">
"""
    + STYLE
    + """\
  nav p { margin: .3rem 0; }
  nav a { margin-right: .4rem; }
  nav a[aria-current] { font-weight: 600; color: inherit; text-decoration: none; }
  table { border-collapse: collapse; width: 100%; margin: 1rem 0; }
  th, td { text-align: left; padding: .35rem .5rem .35rem 0; border-bottom: 1px solid #ddd; }
  td time, td:first-child { white-space: nowrap; }
  #pages { display: flex; gap: 1rem; }
</style>
</head>
<body>
<h1>Tasks</h1>
<nav id="filters" aria-label="Filters">
  <p>Kind: {{kinds}}</p>
  <p>Status: {{statuses}}</p>
</nav>
<table id="tasks">
<thead><tr><th>Task</th><th>Status</th><th>Created</th><th>Started</th><th>Ended</th><th>Attempt</th></tr></thead>
<tbody>
{{rows}}
</tbody>
</table>
{{empty}}
<nav id="pages" aria-label="Pages">{{pages}}</nav>
</body>
</html>
"""
)
