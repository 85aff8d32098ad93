"""The checks a request passes before a handler sees it, as ordered lists.

Every request, in this order (:data:`EVERY_REQUEST`, then the app)::

    1. a WebSocket upgrade            400: this server streams with SSE
    2. the Host                       400 unless in ALLOWED_HOSTS (the probes exempt)
       the probes (/live, /health, /ready) go to their handler now, unlimited
    3. a CORS preflight               answered here: 204, or 403 for an origin not allowed
    4. the connection limits          503 server-wide, 429 per client (/metrics: per client only)

Then its route's own list: :data:`STREAM`, :data:`COMMAND`, :data:`PAGE` or :data:`INDEX`.
Each check answers None (go on) or a :class:`Refusal`, which is the answer;
a check that finds the task leaves it on the request for the next ones.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable

from .. import db
from ..errors import UnknownTask
from ..kinds import resolve_model
from ..listing import DEPTH, MAX_PER_PAGE, PER_PAGE, TaskQuery, TaskRow
from ..models import StreamTask
from ..ops.guard import Refusal, is_preflight
from ..ops.policy import TOKEN_QUERY, AccessRequest, Decision, decide
from ..states import TaskStatus
from .request import DECIMAL, LAST_EVENT_ID, NO_ADDRESS, Request, outline
from .services import Services

Check = Callable[[Services, Request], Awaitable[Refusal | None]]

#: The routes to a task; a stream's is matched by its first checks, the others' by the router.
STREAM_PATH = re.compile(r"/stream/(?P<model>[^/]+)/(?P<pk>[^/]*)/?")
COMMAND_PATH = re.compile(
    r"/tasks/(?P<model>[^/]+)/(?P<pk>[^/]*)/(?P<command>start|retry|cancel)/?"
)
PAGE_PATH = re.compile(r"/tasks/(?P<model>[^/]+)/(?P<pk>[^/]*)/?")
#: The task list.
INDEX_PATH = "/"

NO_WEBSOCKET = (
    "This server does not serve WebSocket; it streams with Server-Sent Events: "
    "GET /stream/<Model>/<id>."
)


# -- every request ----------------------------------------------------------------------


async def no_websocket(services: Services, request: Request) -> Refusal | None:
    if "websocket" not in request.headers.get("upgrade", "").lower():
        return None
    services.count_refusal("websocket")
    return Refusal(400, NO_WEBSOCKET, (("connection", "close"),))


async def known_host(services: Services, request: Request) -> Refusal | None:
    refusal = services.guard.check_host(request.path, request.headers)
    if refusal is not None:
        services.count_refusal("host")
    return refusal


async def preflight(services: Services, request: Request) -> Refusal | None:
    """A CORS preflight is answered here, whatever it asks for: it goes no further."""
    if not is_preflight(request.method, request.headers):
        return None
    status, headers, reason = services.guard.preflight(request.headers)
    if status != 204:
        services.count_refusal("origin")
    return Refusal(status, reason, tuple(headers))


#: Checks 1 and 2; the app then serves the probes, and goes on with 3 and 4.
EVERY_REQUEST: tuple[Check, ...] = (no_websocket, known_host)


# -- checks of the routes to a task -------------------------------------------------------


def only(method: str, reason: str) -> Check:
    async def check(services: Services, request: Request) -> Refusal | None:
        return None if request.method == method else Refusal(405, reason)

    return check


def routed(pattern: re.Pattern[str]) -> Check:
    """404 unless the path is ``pattern``'s; its parts go to ``request.route``."""

    async def check(services: Services, request: Request) -> Refusal | None:
        match = pattern.fullmatch(request.path)
        if match is None:
            return Refusal(404, f"Not found: {request.path!r}"[:300])
        request.route = match.groupdict()
        return None

    return check


async def accepting(services: Services, request: Request) -> Refusal | None:
    if services.coordinator.accepting:
        return None
    return Refusal(503, "Server is shutting down; reconnect to another server.")


async def resumable(services: Services, request: Request) -> Refusal | None:
    raw = request.last_event_id()
    if not raw or DECIMAL.fullmatch(raw):
        return None
    name = "Last-Event-ID" if "last-event-id" in request.headers else LAST_EVENT_ID
    return Refusal(400, f"{name} must be an event id in decimal digits, got {raw!r}."[:300])


def within_rate(kind: str) -> Check:
    """New streams (and watch pages) and commands, each at their own rate per client."""

    async def check(services: Services, request: Request) -> Refusal | None:
        return services.limits.take(kind, request.client, services.now())

    return check


async def same_origin(services: Services, request: Request) -> Refusal | None:
    refusal = services.guard.check_command(request.headers, request.scope.get("scheme", "http"))
    if refusal is not None:
        services.count_refusal("origin")
    return refusal


async def known_task(services: Services, request: Request) -> Refusal | None:
    """Find the route's task model and id; 404 for either that is not one."""
    raw = request.route["pk"]
    try:
        request.model = resolve_model(request.route["model"])
        if not DECIMAL.fullmatch(raw):
            raise UnknownTask(
                f"Task id must be an integer in plain decimal digits, got {raw!r}."[:300]
            )
    except UnknownTask as exc:
        return Refusal(404, not_found(exc, request))
    request.pk = int(raw)
    return None


def allowed_to(action: str | None = None) -> Check:
    """The authorization policy, asked for ``action`` (None: the route's command)."""

    async def check(services: Services, request: Request) -> Refusal | None:
        model, pk = request.task()
        access = _access(request, action or request.route["command"], model, pk)
        try:
            decision = await decide(services.policy, access)
        except db.DatabaseUnavailable as exc:
            return Refusal(503, unavailable(exc, request))
        return None if decision.allowed else _refused(services, decision)

    return check


def _access(request: Request, action: str, model: type[StreamTask], pk: int) -> AccessRequest:
    return AccessRequest(
        action=action,
        model=model,
        pk=pk,
        client=None if request.client == NO_ADDRESS else request.client,
        headers=request.headers,
        query=request.query(),
    )


def _refused(services: Services, decision: Decision) -> Refusal:
    unauthenticated = decision.status == 401
    services.count_refusal("unauthenticated" if unauthenticated else "forbidden")
    extra = (("www-authenticate", 'Bearer realm="streaming"'),) if unauthenticated else ()
    return Refusal(decision.status, decision.reason or "Not allowed.", extra)


# -- checks of the task list ----------------------------------------------------------------

#: What the task list takes in its query.
LIST_PARAMETERS = ("kind", "status", "page", "per_page", TOKEN_QUERY)


async def list_query(services: Services, request: Request) -> Refusal | None:
    """Read the list's filters and page into ``request.listing``; 400 saying what is wrong."""
    try:
        request.listing = _task_query(request.query(), request.local)
    except ValueError as exc:
        return Refusal(400, str(exc))
    return None


def _task_query(params: dict[str, str], local: bool) -> TaskQuery:
    unknown = sorted(set(params) - set(LIST_PARAMETERS))
    if unknown:
        raise ValueError(
            f"Unknown parameter {_shown(unknown[0])}: the list takes "
            f"{', '.join(LIST_PARAMETERS[:-1])} and {LIST_PARAMETERS[-1]}."
        )
    kind = None
    if "kind" in params:
        try:
            kind = resolve_model(params["kind"])
        except UnknownTask as exc:
            # The kinds there are, to this machine's clients only (as a 404 says them).
            known = f" Known kinds: {', '.join(exc.known)}." if local else ""
            raise ValueError(f"Unknown kind {_shown(params['kind'])}.{known}") from None
    status = params.get("status")
    if status is not None and status not in TaskStatus.values:
        raise ValueError(
            f"Unknown status {_shown(status)}: use one of {', '.join(TaskStatus.values)}."
        )
    page = _whole(params, "page", 1, None)
    per_page = _whole(params, "per_page", PER_PAGE, MAX_PER_PAGE)
    if page * per_page > DEPTH:
        raise ValueError(
            f"The list goes back {DEPTH} tasks, and page {page} of {per_page} would go past "
            "them: filter by kind or status to reach older tasks."
        )
    return TaskQuery(kind, TaskStatus(status) if status else None, page, per_page)


def _whole(params: dict[str, str], name: str, default: int, most: int | None) -> int:
    raw = params.get(name)
    if raw is None:
        return default
    if DECIMAL.fullmatch(raw) and 1 <= int(raw) <= (most or int(raw)):
        return int(raw)
    bounds = f"from 1 to {most}" if most else "from 1"
    raise ValueError(f"{name} must be a whole number {bounds}, got {_shown(raw)}.")


def _shown(value: str) -> str:
    """A value from the request, quoted, and cut short if it is long."""
    return repr(value if len(value) <= 60 else value[:60] + "...")


async def watchable(
    services: Services, request: Request, rows: list[TaskRow]
) -> list[TaskRow] | Refusal:
    """The rows this client may watch; the policy's refusal if it may watch none of them.

    A row is listed to whom its own page would be served: the policy is asked
    ``stream`` for each task on the page (an empty page asks nothing).
    """
    allowed: list[TaskRow] = []
    refusals: list[Decision] = []
    for row in rows:
        decision = await decide(services.policy, _access(request, "stream", row.model, row.pk))
        if decision.allowed:
            allowed.append(row)
        else:
            refusals.append(decision)
    if allowed or not refusals:
        return allowed
    return _refused(services, refusals[0])


#: ``GET /stream/<Model>/<id>``; then the handler joins the task's streams (429 past its limit).
STREAM: tuple[Check, ...] = (
    only("GET", "Use GET to stream a task."),
    routed(STREAM_PATH),
    accepting,
    resumable,
    within_rate("stream"),
    known_task,
    allowed_to("stream"),
)
#: ``POST /tasks/<Model>/<id>/<start|retry|cancel>``.
COMMAND: tuple[Check, ...] = (
    # The method is checked by the router: its 405 names the command.
    within_rate("post"),
    same_origin,
    known_task,
    allowed_to(),
)
#: ``GET /tasks/<Model>/<id>``, the watch page.
PAGE: tuple[Check, ...] = (
    only("GET", "Use GET to watch a task, or POST to .../start, retry or cancel."),
    within_rate("stream"),
    known_task,
    allowed_to("stream"),
)


#: ``GET /``, the task list; then the handler lists what the policy lets the client watch.
INDEX: tuple[Check, ...] = (
    only("GET", "Use GET to list tasks."),
    within_rate("stream"),
    list_query,
)


async def first_refusal(
    checks: tuple[Check, ...], services: Services, request: Request
) -> Refusal | None:
    """Run ``checks`` in order; the first refusal, or None if all pass."""
    for check in checks:
        refusal = await check(services, request)
        if refusal is not None:
            return refusal
    return None


# -- what a refusal says, to whom ----------------------------------------------------------


def not_found(exc: UnknownTask, request: Request) -> str:
    """Why there is no such task; the models there are, to this machine's clients only."""
    if exc.known and request.local:
        return f"{exc} Known models: {', '.join(exc.known)}."
    return str(exc)


def unavailable(exc: db.DatabaseUnavailable, request: Request) -> str:
    detail = f"database unavailable: {exc}"
    return detail if request.local else outline(detail)
