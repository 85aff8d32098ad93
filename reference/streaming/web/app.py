"""The ASGI app: each request through the checks (``checks.py``) to its handler."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import asgineer

from .. import db
from ..config import Config
from ..coordinator import Coordinator
from ..ops.guard import PROBES
from . import checks, handlers
from .request import DATABASE_DOWN, Request, Response, respond, text
from .services import Services

ASGIApp = Callable[[dict[str, Any], Any, Any], Awaitable[None]]

#: Where the app leaves a request it has checked, for its asgineer handler.
_REQUEST = "streaming.request"


def make_app(coordinator: Coordinator, *, config: Config | None = None) -> ASGIApp:
    """The ASGI app for one coordinator.

    ``config`` replaces the coordinator's own settings for this app's HTTP
    side (authorization, CORS, limits, stream timings): two apps on one
    coordinator can be configured differently.
    """
    return App(Services.build(coordinator, config if config is not None else coordinator.config))


class App:
    """One coordinator's HTTP side: streams on raw ASGI, the rest through asgineer."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self.routes = asgineer.to_asgi(self.handle)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "websocket":
            await _refuse_websocket(receive, send)
            return
        if scope["type"] != "http":  # lifespan
            await self.routes(scope, receive, send)
            return
        services, request = self.services, Request.of(scope)
        refusal = await checks.first_refusal(checks.EVERY_REQUEST, services, request)
        if refusal is None and request.path in PROBES:
            await self.routes(scope, receive, send)  # unlimited, for load balancers
            return
        if refusal is None:
            refusal = await checks.preflight(services, request)
        if refusal is not None:
            await respond(send, refusal.status, refusal.reason, refusal.headers)
            return
        server_wide = request.path != "/metrics"  # a full server still answers its scrapes
        refusal = services.limits.enter(request.client, server_wide=server_wide)
        if refusal is not None:
            await respond(send, refusal.status, refusal.reason, refusal.headers)
            return
        try:
            if request.path.startswith("/stream/"):
                await handlers.stream(services, request, receive, send)
            else:
                scope[_REQUEST] = request
                await self.routes(scope, receive, send)
        finally:
            services.limits.leave(request.client, server_wide=server_wide)

    async def handle(self, http: asgineer.HttpRequest) -> Response | None:
        """asgineer's handler: every route but a stream's."""
        checked = http.scope.get(_REQUEST)
        request = checked if checked is not None else Request.of(http.scope)
        try:
            status, headers, body = await self.dispatch(request, http)
        except db.DatabaseUnavailable as exc:
            status, headers, body = 503, DATABASE_DOWN, checks.unavailable(exc, request)
        if checked is not None:  # the probes send no CORS headers
            cors = self.services.guard.cors_headers(request.headers.get("origin"))
            headers = {**headers, **dict(cors)}
        return status, headers, body

    async def dispatch(self, request: Request, http: asgineer.HttpRequest) -> Response:
        services, path = self.services, request.path
        if path in PROBES:
            return await handlers.probe(services, request)
        if path == "/metrics":
            return await handlers.scrape(services, request)
        if match := checks.COMMAND_PATH.fullmatch(path):
            request.route = match.groupdict()
            return await handlers.command(services, request, http)
        if match := checks.PAGE_PATH.fullmatch(path):
            request.route = match.groupdict()
            return await handlers.page(services, request)
        if path == checks.INDEX_PATH:
            return await handlers.index(services, request)
        return text(404, f"Not found: {path!r}"[:300])


async def _refuse_websocket(receive: Any, send: Any) -> None:
    """Turn a WebSocket handshake away: a close before accepting is answered 403 by the server."""
    if (await receive())["type"] == "websocket.connect":
        await send({"type": "websocket.close", "code": 1008, "reason": "WebSocket is not served"})
