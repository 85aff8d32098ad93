"""What each route does, once its checks have passed: one function per route.

Handlers ask the coordinator, never the ORM. A stream is served on raw ASGI
(:func:`stream`); the others return an answer for asgineer to send.
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Mapping
from typing import Any

import asgineer

from .. import db, sse
from ..errors import CoordinatorClosed, NothingMissed, UnknownTask
from ..hub import Subscriber
from ..kinds import task_models
from ..ops import tasks_page, watch
from ..ops.guard import Refusal
from ..ops.metrics import CONTENT_TYPE, CountedSource
from ..ops.policy import TOKEN_QUERY
from ..states import TaskStatus
from . import checks
from .request import DATABASE_DOWN, Request, Response, as_json, outline, respond, text
from .services import Services

logger = logging.getLogger("streaming.server")

#: Bytes of a request body the server reads (a cancel's reason is short).
BODY_LIMIT = 64 * 1024


# -- a stream -------------------------------------------------------------------------------


async def stream(services: Services, request: Request, receive: Any, send: Any) -> None:
    """``GET /stream/<Model>/<id>``: the task's events as Server-Sent Events."""
    cors = services.guard.cors_headers(request.headers.get("origin"))
    opened = await _open_stream(services, request)
    metrics = services.metrics
    if isinstance(opened, Refusal):
        metrics.streams.labels(code=str(opened.status)).inc()
        await respond(send, opened.status, opened.reason, [*opened.headers, *cors])
        return
    metrics.streams.labels(code="200").inc()
    metrics.open_streams.inc()
    try:
        writer = sse.StreamWriter(_adding_headers(send, cors), CountedSource(opened, metrics))
        await services.writers.serve(writer, receive, services.config.retry_ms)
    finally:
        metrics.open_streams.dec()
        services.limits.leave_task(request.key)


async def _open_stream(services: Services, request: Request) -> Subscriber | Refusal:
    """The stream's subscriber, holding one of its task's stream slots; or why not."""
    refusal = await checks.first_refusal(checks.STREAM, services, request)
    if refusal is not None:
        return refusal
    key = request.key
    refusal = services.limits.join_task(key)
    if refusal is not None:
        return refusal
    raw = request.last_event_id()
    model, pk = request.task()
    try:
        return await services.coordinator.subscribe(
            model, pk, last_event_id=int(raw) if raw else None
        )
    except UnknownTask as exc:
        refusal = Refusal(404, checks.not_found(exc, request))
    except NothingMissed:
        # No event follows: only a 204 stops a browser's EventSource from
        # reconnecting for ever (an empty 200 makes it try again).
        refusal = Refusal(204, "")
    except db.DatabaseUnavailable as exc:
        refusal = Refusal(503, checks.unavailable(exc, request))
    except BaseException:
        services.limits.leave_task(key)
        raise
    services.limits.leave_task(key)
    return refusal


def _adding_headers(send: Any, extra: list[tuple[str, str]]) -> Any:
    """``send``, adding ``extra`` headers to the response's start; ``send`` itself if none."""
    if not extra:
        return send
    return _HeaderAdder(send, extra).send


class _HeaderAdder:
    """Adds headers to a stream's response; keeps the transport where ``sse`` looks for it."""

    def __init__(self, send: Any, extra: list[tuple[str, str]]) -> None:
        self._send = send
        self._extra = [(name.encode(), value.encode("latin-1")) for name, value in extra]
        #: sse.StreamWriter.abort() closes a stalled connection through this.
        self.transport = getattr(getattr(send, "__self__", None), "transport", None)

    async def send(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", ()), *self._extra]}
        await self._send(message)


# -- probes and metrics ---------------------------------------------------------------------


async def probe(services: Services, request: Request) -> Response:
    """``/live``, ``/health``, ``/ready``: what is wrong in detail only to this machine."""
    if request.method not in ("GET", "HEAD"):
        return text(405, "Use GET.")
    if request.path == "/live":
        return text(200, "OK")
    if request.path == "/health":
        problem = await services.coordinator.health()
        if problem is None:
            return text(200, "OK")
        return text(503, problem if request.local else outline(problem))
    problems = await services.coordinator.readiness()
    if not problems:
        return text(200, "OK")
    if not request.local:
        problems = [outline(problem) for problem in problems]
    return 503, DATABASE_DOWN, "not ready: " + "; ".join(problems)


async def scrape(services: Services, request: Request) -> Response:
    """``/metrics``, for this machine's clients and those with the metrics token."""
    if request.method not in ("GET", "HEAD"):
        return text(405, "Use GET.")
    config = services.config
    if not config.metrics:
        return text(404, "Metrics are off (settings STREAMING['METRICS']).")
    if not request.local and not _has_token(request.headers, config.metrics_token):
        services.count_refusal("metrics")
        return text(
            403,
            "Metrics are served to clients on the server's own machine, and to others "
            "that send 'Authorization: Bearer <STREAMING_METRICS_TOKEN>'.",
        )
    return 200, {"content-type": CONTENT_TYPE}, await services.metrics.render()


def _has_token(headers: Mapping[str, str], token: str | None) -> bool:
    if not token:
        return False
    scheme, _, value = headers.get("authorization", "").partition(" ")
    given = value.strip().encode()
    return scheme.lower() == "bearer" and hmac.compare_digest(given, token.encode())


# -- the watch page and commands --------------------------------------------------------------


async def page(services: Services, request: Request) -> Response:
    """``GET /tasks/<Model>/<id>``: a page that watches the task live, from its history on."""
    refusal = await checks.first_refusal(checks.PAGE, services, request)
    if refusal is not None:
        return refused(refusal)
    model, pk = request.task()
    try:
        history = await services.coordinator.task_history(model, pk)
    except UnknownTask as exc:
        return text(404, str(exc))
    token = request.query().get(TOKEN_QUERY)
    headers, body = watch.render(model, pk, history, token, retry_ms=services.config.retry_ms)
    return 200, headers, body


async def index(services: Services, request: Request) -> Response:
    """``GET /``: the tasks this client may watch, newest first, each linked to its page."""
    refusal = await checks.first_refusal(checks.INDEX, services, request)
    if refusal is not None:
        return refused(refusal)
    query = request.listing
    assert query is not None
    found = await services.coordinator.list_tasks(query)
    rows = await checks.watchable(services, request, found.rows)
    if isinstance(rows, Refusal):
        return refused(rows)
    # As in a 404, every kind there is is named to this machine's clients only.
    kinds = set(task_models()) if request.local else {row.kind for row in rows}
    if query.kind is not None:
        kinds.add(query.kind.__name__)
    headers, body = tasks_page.render(found, rows, sorted(kinds), request.query().get(TOKEN_QUERY))
    return 200, headers, body


async def command(services: Services, request: Request, http: asgineer.HttpRequest) -> Response:
    """``POST /tasks/<Model>/<id>/<start|retry|cancel>``."""
    action = request.route["command"]
    if request.method != "POST":
        return text(405, f"Use POST to {action} a task.")
    refusal = await checks.first_refusal(checks.COMMAND, services, request)
    if refusal is not None:
        return refused(refusal)
    assert request.model is not None
    logger.info(
        "%s of %s %s asked by %s",
        action,
        request.model.__name__,
        request.pk,
        request.client,
        extra={"task_kind": request.model.__name__, "task_id": str(request.pk)},
    )
    if action == "cancel":
        return await cancel(services, request, http)
    return await start(services, request, retry=action == "retry")


async def start(services: Services, request: Request, *, retry: bool) -> Response:
    coordinator, model, pk = services.coordinator, request.model, request.pk
    assert model is not None and pk is not None
    try:
        if retry:
            started = await coordinator.retry_task(model, pk)
        else:
            started = await coordinator.start_task(model, pk)
        if started:
            return as_json(202, {"started": True})
        status = await coordinator.status_of(model, pk)
    except CoordinatorClosed as exc:
        return text(503, str(exc))
    except UnknownTask as exc:
        return text(404, str(exc))
    expected = "FAILED, CANCELLED, TIMED_OUT or INTERRUPTED" if retry else "READY"
    reason = f"{model.__name__} {pk} is {status}, not {expected}."
    return as_json(409, {"started": False, "reason": reason})


async def cancel(services: Services, request: Request, http: asgineer.HttpRequest) -> Response:
    try:
        body = await http.get_body(limit=BODY_LIMIT)
    except asgineer.DisconnectedError:
        raise
    except OSError:
        return text(413, f"The body must be at most {BODY_LIMIT} bytes.")
    try:
        parsed = json.loads(body) if body.strip() else {}
    except (ValueError, RecursionError):
        return text(400, 'Body must be JSON, for example {"reason": "..."}.')
    reason = parsed.get("reason") if isinstance(parsed, dict) else None
    if reason is not None and not isinstance(reason, str):
        return text(400, "'reason' must be a string.")
    services.metrics.cancel_asked(request.key)
    model, pk = request.task()
    try:
        cancelled = await services.coordinator.cancel_task(model, pk, reason)
    except UnknownTask as exc:
        return text(404, str(exc))
    if cancelled:
        return as_json(200, {"cancelled": True})
    return as_json(200, {"cancelled": False, "reason": await _not_cancelled(services, request)})


async def _not_cancelled(services: Services, request: Request) -> str:
    """Why a cancel changed nothing, from the status the task has now."""
    model, pk = request.task()
    name = f"{model.__name__} {pk}"
    try:
        status = await services.coordinator.status_of(model, pk)
    except (UnknownTask, db.DatabaseUnavailable):
        return f"{name} is neither READY nor RUNNING, or it is already being cancelled."
    if status.is_finished:
        return f"{name} already ended {status}: only a READY or RUNNING task can be cancelled."
    if status is TaskStatus.RUNNING:
        return f"{name} is already being cancelled."
    return f"{name} changed while it was being cancelled: it is {status}; try again."


def refused(refusal: Refusal) -> Response:
    return text(refusal.status, refusal.reason, dict(refusal.headers))
