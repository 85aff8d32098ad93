"""The HTTP interface: Starlette routes, the stream an sse-starlette ``EventSourceResponse``.

sse-starlette writes the frames, sends the keep-alive pings, drops a client
whose writes stall (``send_timeout``) and ends the stream when its client
disconnects. The glue validates the path, registers the client before the
response starts (HTTP-4), and adds ``_task_id``, ``_model`` and ``_timestamp``
to each event's data, as SPEC's frame has them.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from sse_starlette import EventSourceResponse, JSONServerSentEvent, ServerSentEvent
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from conformance.contract import TaskRef, UnknownTask

from .stack import MODEL

if TYPE_CHECKING:
    from .runtime import CeleryRuntime, Client

#: A task id as SPEC writes it: plain ASCII decimal, no sign, no leading zero (EDGE-22).
CANONICAL_ID = re.compile(r"0|[1-9][0-9]{0,18}")
#: The reconnect delay each stream suggests (EDGE-15), in milliseconds.
RETRY_MS = 2000
#: sse-starlette's ping interval and per-write deadline under the suite (adapter.timings).
KEEPALIVE, WRITE_DEADLINE = 1.0, 2.0


def make_web_app(runtime: CeleryRuntime) -> Starlette:
    """The routes SPEC's HTTP interface names, over ``runtime``."""

    def ref_of(request: Request) -> TaskRef | None:
        model, task_id = request.path_params["model"], request.path_params["id"]
        if model != MODEL or not CANONICAL_ID.fullmatch(task_id) or int(task_id) >= 2**63:
            return None
        return TaskRef(model, task_id)

    def unknown(request: Request) -> Response:
        return PlainTextResponse(f"No task at {request.url.path}.", status_code=404)

    async def health(request: Request) -> Response:
        if runtime.closed:
            return PlainTextResponse("Shutting down.", status_code=503)
        return PlainTextResponse("OK")

    async def stream(request: Request) -> Response:
        ref = ref_of(request)
        if ref is None:
            return unknown(request)
        try:
            client = await runtime.subscribe(ref)  # registered before the headers (HTTP-4)
        except UnknownTask:
            return unknown(request)
        return EventSourceResponse(
            frames(client),
            ping=KEEPALIVE,
            send_timeout=WRITE_DEADLINE,
            headers={"cache-control": "no-cache"},
        )

    async def command(request: Request) -> Response:
        origin = request.headers.get("origin")
        if origin is not None and origin != f"{request.url.scheme}://{request.headers.get('host')}":
            # A page on another site may not command tasks (OPS-3): Starlette has no such
            # check of its own unless CORS middleware is configured, and that never refuses.
            return PlainTextResponse(f"Commands from {origin} are refused.", status_code=403)
        ref = ref_of(request)
        if ref is None:
            return unknown(request)
        action = request.path_params["action"]
        try:
            if action == "start":
                if await runtime.start_task(ref):
                    return PlainTextResponse("Started.", status_code=202)
                state = await runtime.get_state(ref)
                return PlainTextResponse(f"The task is {state.status}, not READY.", status_code=409)
            if action == "cancel":
                reason = await _reason(request)
                if isinstance(reason, Response):
                    return reason
                await runtime.get_state(ref)  # 404 for an unknown task
                cancelled = await runtime.cancel_task(ref, reason)
                return JSONResponse({"cancelled": cancelled})
        except UnknownTask:
            return unknown(request)
        return PlainTextResponse(f"No action {action!r}.", status_code=404)

    return Starlette(
        routes=[
            Route("/health", health, methods=["GET"]),
            Route("/stream/{model}/{id}", stream, methods=["GET"]),
            Route("/tasks/{model}/{id}/{action}", command, methods=["POST"]),
        ]
    )


async def _reason(request: Request) -> str | Response | None:
    """The cancel's optional ``{"reason": "..."}``; 400 for a body that is not that."""
    body = await request.body()
    if not body.strip():
        return None
    try:
        payload: Any = json.loads(body)
    except (ValueError, RecursionError):
        return PlainTextResponse("The body is not JSON.", status_code=400)
    if not isinstance(payload, dict) or not isinstance(payload.get("reason", ""), str):
        return PlainTextResponse('Send {"reason": "..."} or nothing.', status_code=400)
    return payload.get("reason") or None


async def frames(client: Client) -> AsyncIterator[ServerSentEvent]:
    """The client's events as SSE frames, a reconnect delay first; it leaves when done."""
    try:
        yield ServerSentEvent(retry=RETRY_MS)
        async for event in client:
            meta = {"_task_id": event.task_id, "_model": event.model, "_timestamp": event.timestamp}
            data = {**event.data, **meta}
            if event.type == "shutdown":
                yield JSONServerSentEvent(data, event=event.type, id=str(event.id), retry=RETRY_MS)
            else:
                yield JSONServerSentEvent(data, event=event.type, id=str(event.id))
    finally:
        await client.aclose()
