"""The streaming server: SSE streams on raw ASGI, asgineer for the rest, on uvicorn.

Routes::

    GET  /live                         200 "OK" while the process answers (liveness)
    GET  /health                       200 "OK"; 503 with the reason (draining, database)
    GET  /ready                        200 "OK" when it can serve: accepting work, database
                                       and bus reachable; 503 naming what is not (readiness)
    GET  /metrics                      Prometheus metrics (settings METRICS)
    GET  /stream/<Model>/<id>          Server-Sent Events of one task; Last-Event-ID
                                       resumes, and is answered 204 past the task's end
    GET  /tasks/<Model>/<id>           a page that watches the task live (ops/watch.py)
    POST /tasks/<Model>/<id>/start     start a READY task
    POST /tasks/<Model>/<id>/retry     run a FAILED/CANCELLED/TIMED_OUT/INTERRUPTED task again
    POST /tasks/<Model>/<id>/cancel    cancel it; JSON body {"reason": "..."} optional

Streams are the hot path, so they bypass the framework: ``sse.StreamWriter``
writes a subscriber's queued events in one ``send`` and ``sse.Writers``
keeps one timer for every stream's keep-alive and write deadline. Every
other route is an asgineer handler. No request reaches a task unless its id
is canonical decimal, and no bad request gets a 5xx: the answer is 400, 404,
405, 409 or 413 with a reason, or 503 while the database is unavailable.

Before a request reaches a task it passes, in this order (``ops/``): the
``Host`` check (400), a CORS preflight's answer, the connection limits
(503 server-wide, 429 per client), the rate of new streams or commands
(429), for a command the origin check (403), the authorization policy
(401/403), and for a stream the limit of streams per task (429). The probes
and ``/metrics`` are not limited.

Shutdown: uvicorn's own SIGTERM/SIGINT handler would stop accepting and then
wait forever for open streams. :class:`StreamServer` first drains the
coordinator (tasks get their grace period, every stream gets a farewell event
and ends) and only then lets uvicorn exit. A second signal exits at once.
"""

from __future__ import annotations

import asyncio
import contextvars
import hmac
import json
import logging
import math
import re
import signal
import socket
from collections.abc import Awaitable, Callable, Mapping
from types import FrameType
from typing import Any
from urllib.parse import parse_qsl

import asgineer
import uvicorn

from . import db, sse
from .config import Config
from .coordinator import (
    Coordinator,
    CoordinatorClosed,
    NothingMissed,
    UnknownTask,
    resolve_model,
)
from .models import StreamTask
from .ops import watch
from .ops.guard import PROBES, Guard, Refusal, is_preflight
from .ops.limits import Limits
from .ops.logs import RedactTokens
from .ops.metrics import CONTENT_TYPE, CountedSource, Metrics
from .ops.policy import PROXY_HEADERS, AccessRequest, Decision, decide, is_loopback, load_policy
from .protocol import EdgeLimits

logger = logging.getLogger(__name__)

ASGIApp = Callable[[dict[str, Any], Any, Any], Awaitable[None]]
Response = tuple[int, dict[str, str], str | bytes] | None

_STREAM = re.compile(r"/stream/(?P<model>[^/]+)/(?P<pk>[^/]*)/?")
_COMMAND = re.compile(r"/tasks/(?P<model>[^/]+)/(?P<pk>[^/]*)/(?P<command>start|retry|cancel)/?")
_PAGE = re.compile(r"/tasks/(?P<model>[^/]+)/(?P<pk>[^/]*)/?")
#: A task id or event id: ASCII decimal, no sign, no leading zero, below 2**63.
_DECIMAL = re.compile(r"0|[1-9][0-9]{0,17}")
#: Bytes of a request body the server reads (a cancel's reason is short).
BODY_LIMIT = 64 * 1024
#: Paths that are neither counted nor limited: the probes, for load balancers.
UNLIMITED = PROBES
#: Seconds the tasks a second signal leaves behind get to stop (and record
#: how their runs ended) before the process exits without them.
FORCED_LEFTOVERS = 0.5
_TEXT = {"content-type": "text/plain; charset=utf-8"}
_JSON = {"content-type": "application/json"}
_DATABASE_DOWN = {**_TEXT, "retry-after": "1"}
#: Keys of the ASGI scope where the app leaves what it read for the handler.
_HEADERS, _CLIENT = "streaming.headers", "streaming.client"


def parse_pk(raw: str) -> int:
    if not _DECIMAL.fullmatch(raw):
        raise UnknownTask(f"Task id must be an integer in plain decimal digits, got {raw!r}."[:300])
    return int(raw)


def _text(status: int, body: str) -> Response:
    return status, _TEXT, body


def _json(status: int, body: dict[str, Any]) -> Response:
    return status, _JSON, json.dumps(body)


def make_app(coordinator: Coordinator, *, config: Config | None = None) -> ASGIApp:
    """The ASGI app for one coordinator.

    ``config`` replaces the coordinator's own settings for this app's HTTP
    side (authorization, CORS, limits, stream timings): two apps on one
    coordinator can be configured differently.
    """
    config = config if config is not None else coordinator.config
    writers = sse.Writers(keepalive=config.keepalive, write_deadline=config.write_deadline)
    metrics = Metrics.of(coordinator)
    policy = load_policy(config.authorization)
    guard = Guard.from_settings(
        cors_origins=tuple(config.cors_allowed_origins),
        cors_credentials=config.cors_allow_credentials,
        cors_max_age=config.cors_max_age,
    )
    limits = Limits(
        max_connections=config.max_connections,
        max_connections_per_client=config.max_connections_per_client,
        max_subscribers_per_task=config.max_subscribers_per_task,
        streams_per_second=config.streams_per_second,
        stream_burst=config.stream_burst,
        posts_per_second=config.posts_per_second,
        post_burst=config.post_burst,
        retry_after=math.ceil(config.retry_ms / 1000),
        on_refusal=lambda kind: metrics.refused.labels(reason=kind).inc(),
    )

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "websocket":
            await _refuse_websocket(receive, send)
            return
        if scope["type"] != "http":
            await routes(scope, receive, send)
            return
        path: str = scope["path"]
        headers = _headers(scope)
        if "websocket" in headers.get("upgrade", "").lower():
            metrics.refused.labels(reason="websocket").inc()
            await _respond(send, 400, _NO_WEBSOCKET, [("connection", "close")])
            return
        refused = guard.check_host(path, headers)
        if refused is not None:
            metrics.refused.labels(reason="host").inc()
            await _respond(send, refused.status, refused.reason)
            return
        if path in UNLIMITED:
            await routes(scope, receive, send)
            return
        if is_preflight(scope["method"], headers):
            status, answer, reason = guard.preflight(headers)
            if status != 204:
                metrics.refused.labels(reason="origin").inc()
            await _respond(send, status, reason, answer)
            return
        client = _client(scope)
        server_wide = path != "/metrics"  # a full server still answers its scrapes
        refused = limits.enter(client, server_wide=server_wide)
        if refused is not None:
            await _respond(send, refused.status, refused.reason, refused.headers)
            return
        try:
            if path.startswith("/stream/"):
                await stream(scope, receive, send, headers, client)
            else:
                scope[_HEADERS], scope[_CLIENT] = headers, client
                await routes(scope, receive, send)
        finally:
            limits.leave(client, server_wide=server_wide)

    async def stream(
        scope: dict[str, Any], receive: Any, send: Any, headers: dict[str, str], client: str
    ) -> None:
        cors = guard.cors_headers(headers.get("origin"))
        outcome = await open_stream(scope, headers, client)
        if isinstance(outcome, Refusal):
            metrics.streams.labels(code=str(outcome.status)).inc()
            await _respond(send, outcome.status, outcome.reason, [*outcome.headers, *cors])
            return
        subscriber, key = outcome
        metrics.streams.labels(code="200").inc()
        metrics.open_streams.inc()
        try:
            writer = sse.StreamWriter(
                _adding_headers(send, cors), CountedSource(subscriber, metrics)
            )
            await writers.serve(writer, receive, config.retry_ms)
        finally:
            metrics.open_streams.dec()
            limits.leave_task(key)

    async def open_stream(
        scope: dict[str, Any], headers: dict[str, str], client: str
    ) -> tuple[Any, str] | Refusal:
        """The subscriber of a stream request and its task's key, or why it is refused."""
        if scope["method"] != "GET":
            return Refusal(405, "Use GET to stream a task.")
        match = _STREAM.fullmatch(scope["path"])
        if match is None:
            return Refusal(404, f"Not found: {scope['path']!r}"[:300])
        if not coordinator.accepting:
            return Refusal(503, "Server is shutting down; reconnect to another server.")
        raw = headers.get("last-event-id", "")
        if raw and not _DECIMAL.fullmatch(raw):
            return Refusal(
                400, f"Last-Event-ID must be an event id in decimal digits, got {raw!r}."[:300]
            )
        refused = limits.take("stream", client, asyncio.get_running_loop().time())
        if refused is not None:
            return refused
        try:
            model, pk = resolve_model(match["model"]), parse_pk(match["pk"])
        except UnknownTask as exc:
            return Refusal(404, _not_found(exc, client, headers))
        try:
            decision = await authorize(scope, headers, client, "stream", model, pk)
        except db.DatabaseUnavailable as exc:
            return Refusal(503, _unavailable(exc, client, headers))
        if not decision.allowed:
            return _denied(decision)
        key = f"{model.__name__}:{pk}"
        refused = limits.join_task(key)
        if refused is not None:
            return refused
        try:
            subscriber = await coordinator.subscribe(
                model, pk, last_event_id=int(raw) if raw else None
            )
        except UnknownTask as exc:
            refusal = Refusal(404, _not_found(exc, client, headers))
        except NothingMissed:
            # No event follows: only a 204 stops a browser's EventSource from
            # reconnecting for ever (an empty 200 makes it try again).
            refusal = Refusal(204, "")
        except db.DatabaseUnavailable as exc:
            refusal = Refusal(503, _unavailable(exc, client, headers))
        except BaseException:
            limits.leave_task(key)
            raise
        else:
            return subscriber, key
        limits.leave_task(key)
        return refusal

    async def authorize(
        scope: dict[str, Any],
        headers: Mapping[str, str],
        client: str,
        action: str,
        model: type[StreamTask],
        pk: int,
    ) -> Decision:
        request = AccessRequest(
            action=action,
            model=model,
            pk=pk,
            client=None if client == _NO_ADDRESS else client,
            headers=headers,
            query=_query(scope),
        )
        decision = await decide(policy, request)
        if not decision.allowed:
            reason = "unauthenticated" if decision.status == 401 else "forbidden"
            metrics.refused.labels(reason=reason).inc()
        return decision

    async def handler(request: asgineer.HttpRequest) -> Response:
        try:
            response = await dispatch(request)
        except db.DatabaseUnavailable as exc:
            response = (
                503,
                _DATABASE_DOWN,
                _unavailable(exc, _client(request.scope), _headers(request.scope)),
            )
        headers = request.scope.get(_HEADERS)
        cors = guard.cors_headers(headers.get("origin")) if headers else []
        if cors and response is not None:
            status, answer, body = response
            response = status, {**answer, **dict(cors)}, body
        return response

    async def dispatch(request: asgineer.HttpRequest) -> Response:
        path = request.path
        if path in ("/live", "/health", "/ready", "/metrics"):
            if request.method not in ("GET", "HEAD"):
                return _text(405, "Use GET.")
            if path == "/metrics":
                return await scrape(request.scope)
            return await probe(path, _client(request.scope), _headers(request.scope))
        scope = request.scope
        headers, client = scope[_HEADERS], scope[_CLIENT]
        if match := _COMMAND.fullmatch(path):
            if request.method != "POST":
                return _text(405, f"Use POST to {match['command']} a task.")
            action = match["command"]
            refused = limits.take("post", client, asyncio.get_running_loop().time())
            if refused is None:
                refused = guard.check_command(headers, scope.get("scheme", "http"))
                if refused is not None:
                    metrics.refused.labels(reason="origin").inc()
            if refused is not None:
                return refused.status, {**_TEXT, **dict(refused.headers)}, refused.reason
            try:
                model, pk = resolve_model(match["model"]), parse_pk(match["pk"])
            except UnknownTask as exc:
                return _text(404, _not_found(exc, client, headers))
            decision = await authorize(scope, headers, client, action, model, pk)
            if not decision.allowed:
                return _refusal(_denied(decision))
            logger.info(
                "%s of %s %s asked by %s",
                action,
                model.__name__,
                pk,
                client,
                extra={"task_kind": model.__name__, "task_id": str(pk)},
            )
            if action == "cancel":
                return await cancel(request, model, pk)
            return await start(model, pk, retry=action == "retry")
        if match := _PAGE.fullmatch(path):
            if request.method != "GET":
                return _text(405, "Use GET to watch a task, or POST to .../start, retry or cancel.")
            return await page(scope, headers, client, match["model"], match["pk"])
        return _text(404, f"Not found: {path!r}"[:300])

    async def probe(path: str, client: str, headers: Mapping[str, str]) -> Response:
        """``/live``, ``/health``, ``/ready``: what is wrong in detail only to this machine."""
        if path == "/live":
            return _text(200, "OK")
        if path == "/health":
            problem = await coordinator.health()
            if problem is None:
                return _text(200, "OK")
            local = _is_local(client, headers)
            return _text(503, problem if local else _outline(problem))
        problems = await readiness()
        if not problems:
            return _text(200, "OK")
        if not _is_local(client, headers):
            problems = [_outline(problem) for problem in problems]
        return 503, _DATABASE_DOWN, "not ready: " + "; ".join(problems)

    async def scrape(scope: dict[str, Any]) -> Response:
        """``/metrics``, for this machine's clients and those with the metrics token."""
        if not config.metrics:
            return _text(404, "Metrics are off (settings STREAMING['METRICS']).")
        client, headers = scope[_CLIENT], scope[_HEADERS]
        if not _is_local(client, headers) and not _has_token(headers, config.metrics_token):
            metrics.refused.labels(reason="metrics").inc()
            return _text(
                403,
                "Metrics are served to clients on the server's own machine, and to others "
                "that send 'Authorization: Bearer <STREAMING_METRICS_TOKEN>'.",
            )
        return 200, {"content-type": CONTENT_TYPE}, await metrics.render()

    async def readiness() -> list[str]:
        """What keeps this server from serving now: draining, the database, the bus."""
        if not coordinator.accepting:
            return ["draining"]
        problems = []
        database = await db.probe(2.0)
        if database is not None:
            problems.append(database)
        bus = await _bus_problem(coordinator.config.redis_url)
        if bus is not None:
            problems.append(bus)
        return problems

    async def page(
        scope: dict[str, Any], headers: dict[str, str], client: str, raw_model: str, raw_pk: str
    ) -> Response:
        refused = limits.take("stream", client, asyncio.get_running_loop().time())
        if refused is not None:
            return _refusal(refused)
        try:
            model, pk = resolve_model(raw_model), parse_pk(raw_pk)
        except UnknownTask as exc:
            return _text(404, _not_found(exc, client, headers))
        decision = await authorize(scope, headers, client, "stream", model, pk)
        if not decision.allowed:
            return _refusal(_denied(decision))
        status = await db.run(
            lambda: model._default_manager.filter(pk=pk).values_list("status", flat=True).afirst()
        )
        if status is None:
            return _text(404, f"{model.__name__} {pk} does not exist.")
        answer, body = watch.render(model, pk, status, _query(scope).get("token"))
        return 200, answer, body

    async def start(model: type[StreamTask], pk: int, *, retry: bool) -> Response:
        name = model.__name__
        try:
            if retry:
                started = await coordinator.retry_task(model, pk)
            else:
                started = await coordinator.start_task(model, pk)
        except CoordinatorClosed as exc:
            return _text(503, str(exc))
        except UnknownTask as exc:
            return _text(404, str(exc))
        if started:
            return _json(202, {"started": True})
        status = await db.run(
            lambda: model._default_manager.filter(pk=pk).values_list("status", flat=True).afirst()
        )
        expected = "FAILED, CANCELLED, TIMED_OUT or INTERRUPTED" if retry else "READY"
        return _json(409, {"started": False, "reason": f"{name} {pk} is {status}, not {expected}."})

    async def cancel(request: asgineer.HttpRequest, model: type[StreamTask], pk: int) -> Response:
        try:
            body = await request.get_body(limit=BODY_LIMIT)
        except asgineer.DisconnectedError:
            raise
        except OSError:
            return _text(413, f"The body must be at most {BODY_LIMIT} bytes.")
        try:
            parsed = json.loads(body) if body.strip() else {}
        except (ValueError, RecursionError):
            return _text(400, 'Body must be JSON, for example {"reason": "..."}.')
        reason = parsed.get("reason") if isinstance(parsed, dict) else None
        if reason is not None and not isinstance(reason, str):
            return _text(400, "'reason' must be a string.")
        if not await db.run(lambda: model._default_manager.filter(pk=pk).aexists()):
            return _text(404, f"{model.__name__} {pk} does not exist.")
        metrics.cancel_asked(f"{model.__name__}:{pk}")
        return _json(200, {"cancelled": await coordinator.cancel_task(model, pk, reason)})

    routes = asgineer.to_asgi(handler)
    return app


#: The client of a request that came over no network (a Unix socket).
_NO_ADDRESS = "-"


def _client(scope: dict[str, Any]) -> str:
    client = scope.get("client")
    return str(client[0]) if client else _NO_ADDRESS


def _is_local(client: str, headers: Mapping[str, str]) -> bool:
    """Whether ``client`` is on this machine (a loopback address, or a Unix socket).

    Not if the request came through a proxy that does not say who sent it
    (the rule of ``LoopbackOnly``): everyone behind it would look local.
    """
    if any(name in headers for name in PROXY_HEADERS):
        return False
    return client == _NO_ADDRESS or is_loopback(client)


def _listed(setting: str | list[str] | None) -> list[str]:
    if setting is None:
        return []
    return [setting] if isinstance(setting, str) else list(setting)


def _outline(problem: str) -> str:
    """A problem without its details (hosts, ports, errors), for clients elsewhere."""
    return problem.partition(":")[0]


def _unavailable(exc: db.DatabaseUnavailable, client: str, headers: Mapping[str, str]) -> str:
    detail = f"database unavailable: {exc}"
    return detail if _is_local(client, headers) else _outline(detail)


def _not_found(exc: UnknownTask, client: str, headers: Mapping[str, str]) -> str:
    """Why there is no such task; the models there are, to this machine's clients only."""
    if exc.known and _is_local(client, headers):
        return f"{exc} Known models: {', '.join(exc.known)}."
    return str(exc)


def _has_token(headers: Mapping[str, str], token: str | None) -> bool:
    scheme, _, value = headers.get("authorization", "").partition(" ")
    given = value.strip().encode()
    return bool(token) and scheme.lower() == "bearer" and hmac.compare_digest(given, token.encode())


def _headers(scope: dict[str, Any]) -> dict[str, str]:
    """The request's headers, names in lower case, the first of repeated ones.

    Decoded as latin-1, which takes any byte: a header that is not ASCII is
    then merely invalid where it matters, never an error.
    """
    found: dict[str, str] = {}
    for key, value in scope["headers"]:
        found.setdefault(key.decode("latin-1").lower(), value.decode("latin-1").strip())
    return found


def _query(scope: dict[str, Any]) -> dict[str, str]:
    pairs = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=False)
    found: dict[str, str] = {}
    for key, value in pairs:
        found.setdefault(key, value)
    return found


def _denied(decision: Decision) -> Refusal:
    extra = (("www-authenticate", 'Bearer realm="streaming"'),) if decision.status == 401 else ()
    return Refusal(decision.status, decision.reason or "Not allowed.", extra)


def _refusal(refusal: Refusal) -> Response:
    return refusal.status, {**_TEXT, **dict(refusal.headers)}, refusal.reason


async def _bus_problem(redis_url: str | None) -> str | None:
    """None if the bus can be used: in memory always, Redis if it answers a PING."""
    if not redis_url:
        return None
    import redis.asyncio as redis
    from redis.exceptions import RedisError

    try:
        async with (
            asyncio.timeout(2.0),
            redis.Redis.from_url(redis_url, socket_connect_timeout=2) as client,
        ):
            await client.ping()
    except (RedisError, OSError, TimeoutError) as exc:
        return f"bus unavailable: Redis does not answer ({type(exc).__name__}: {exc})"[:300]
    return None


_NO_WEBSOCKET = (
    "This server does not serve WebSocket; it streams with Server-Sent Events: "
    "GET /stream/<Model>/<id>."
)


async def _refuse_websocket(receive: Any, send: Any) -> None:
    """Turn a WebSocket handshake away: a close before accepting is answered 403 by the server."""
    if (await receive())["type"] == "websocket.connect":
        await send({"type": "websocket.close", "code": 1008, "reason": "WebSocket is not served"})


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


async def _respond(send: Any, status: int, reason: str, extra: Any = ()) -> None:
    body = reason.encode()
    headers = [(b"content-type", b"text/plain; charset=utf-8")] if body else []
    if status == 503 and not any(name == "retry-after" for name, _ in extra):
        headers.append((b"retry-after", b"1"))
    headers += [(name.encode(), value.encode("latin-1")) for name, value in extra]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


class StreamServer(uvicorn.Server):
    """uvicorn, told to drain the coordinator before it stops accepting connections."""

    def __init__(self, config: uvicorn.Config, coordinator: Coordinator, grace: float) -> None:
        super().__init__(config)
        self.coordinator = coordinator
        self.grace = grace
        self._loop: asyncio.AbstractEventLoop | None = None
        self._draining = False
        self._drain: asyncio.Task[None] | None = None

    async def startup(self, sockets: Any = None) -> None:
        self._loop = asyncio.get_running_loop()
        await self.coordinator.started()
        await super().startup(sockets=sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Runs in the signal handler, between two bytecodes of the loop's thread:
        # only flags and call_soon_threadsafe here. The interrupted frame may be
        # a request's, in the middle of an ORM call: its context says so to
        # asgiref (which then refuses another ORM call, "would deadlock"), so
        # what runs from here gets a fresh context, not a copy of that one.
        name = signal.Signals(sig).name
        if self._loop is None:  # not serving yet: nothing to drain
            super().handle_exit(sig, frame)
        elif self._draining:
            logger.warning("second signal %s: exiting now", name)
            self.force_exit = True
            self._loop.call_soon_threadsafe(self.coordinator.abandon, context=contextvars.Context())
            super().handle_exit(sig, frame)
        else:
            logger.info("signal %s: draining for up to %gs", name, self.grace)
            self._draining = True
            self._loop.call_soon_threadsafe(self._begin_drain, context=contextvars.Context())

    def _begin_drain(self) -> None:
        self._drain = asyncio.create_task(self._drain_then_exit(), name="streaming:drain")

    async def _drain_then_exit(self) -> None:
        metrics = Metrics.of(self.coordinator)
        metrics.shutdown_drains.inc()
        began = asyncio.get_running_loop().time()
        try:
            await self.coordinator.shutdown(self.grace)
            drained = asyncio.get_running_loop().time() - began
            metrics.drain_seconds.observe(drained)
            logger.info("drained in %.2fs", drained)
            # The ORM's connections belong to the one thread sync_to_async runs
            # it in; close them there, or they are only dropped at exit.
            await self.coordinator.close_connections()
            logger.info("database connections closed")
        finally:
            self.should_exit = True


def serve(
    host: str,
    port: int,
    *,
    grace: float | None = None,
    log_level: str = "info",
    sock: socket.socket | None = None,
) -> None:
    """Run the streaming server until SIGTERM/SIGINT, then shut down gracefully.

    With ``sock``, accept on that listening socket (one a supervisor shares
    between workers) instead of binding ``host:port``.
    """
    coordinator = Coordinator()
    settings = coordinator.config
    if grace is None:
        grace = settings.shutdown_grace
    metrics = Metrics.of(coordinator)
    config = uvicorn.Config(
        make_app(coordinator),
        host=host,
        port=port,
        log_level=log_level,
        lifespan="off",
        # WebSocket is not served: the app refuses an upgrade with a 4xx.
        ws="none",
        # Once the coordinator has drained, whatever is left gets this long.
        timeout_graceful_shutdown=5,
    )
    edge = EdgeLimits(
        header_bytes=settings.header_bytes,
        header_timeout=settings.header_timeout,
        connections_per_client=settings.max_connections_per_client,
        retry_after=math.ceil(settings.retry_ms / 1000),
        on_refusal=lambda reason: metrics.refused.labels(reason=reason).inc(),
        # A proxy uvicorn trusts speaks for many clients: the app counts them.
        trusted_proxies=",".join(_listed(config.forwarded_allow_ips)),
    )
    config.http = edge.protocol()
    # uvicorn's access lines carry each request's query, where an EventSource
    # sends its task token; made after uvicorn.Config has set its loggers up.
    logging.getLogger("uvicorn.access").addFilter(RedactTokens())
    server = StreamServer(config, coordinator, grace)
    # uvicorn re-raises the signal it caught once it has stopped; ignoring it by
    # then makes a graceful shutdown exit with status 0 instead of dying of it.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)
    sockets = [sock] if sock is not None else None
    grace_left = coordinator.config.cancel_grace
    run_then_close(
        server.serve(sockets=sockets),
        loop_factory(config),
        leftovers=lambda: leftover_seconds(forced=server.force_exit, cancel_grace=grace_left),
    )


def leftover_seconds(*, forced: bool, cancel_grace: float) -> float:
    """Seconds the tasks left at exit get to stop: a task's cancel grace, unless forced.

    A second signal means now: cancelled runs get a moment to record how they
    ended, not a whole cancel grace spent on a task that ignores its cancel.
    """
    return min(cancel_grace, FORCED_LEFTOVERS) if forced else cancel_grace


def loop_factory(config: uvicorn.Config) -> Callable[[], asyncio.AbstractEventLoop]:
    """The event loop uvicorn would run (uvloop when installed)."""
    factory = getattr(config, "get_loop_factory", None)  # uvicorn 0.36 and later
    made = factory() if factory is not None else None
    if made is None:
        config.setup_event_loop()  # earlier releases install a policy instead
        return asyncio.new_event_loop
    return made


def run_then_close(
    main: Awaitable[None],
    new_loop: Callable[[], asyncio.AbstractEventLoop],
    *,
    leftovers: Callable[[], float],
) -> None:
    """Run ``main``, then give the tasks it left behind ``leftovers()`` seconds to stop.

    ``asyncio.run`` would wait for ever for a task that swallows its
    cancellation, so a server with one could never exit, not even on a
    second signal. Tasks still running after that are abandoned, and said so.
    """
    loop = new_loop()
    try:
        loop.run_until_complete(main)
        left = [task for task in asyncio.all_tasks(loop) if not task.done()]
        for task in left:
            task.cancel()
        if left:
            _, stubborn = loop.run_until_complete(asyncio.wait(left, timeout=leftovers()))
            if stubborn:
                names = ", ".join(sorted(task.get_name() for task in stubborn))
                logger.error(
                    "exiting without %d task(s) that ignore cancellation: %s", len(stubborn), names
                )
        loop.run_until_complete(loop.shutdown_asyncgens())
    finally:
        loop.close()
