"""The glue's HTTP commands: health, start, cancel, and plain-text refusals.

Streams are the library's own view (``urls.py``); these are the task side,
which django-eventstream does not have.
"""

from __future__ import annotations

import json
from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse

from conformance.contract import RuntimeClosed

from .models import Task
from .runner import MODEL, current_runner


def _text(status: int, text: str) -> HttpResponse:
    return HttpResponse(text, status=status, content_type="text/plain; charset=utf-8")


async def health(request: HttpRequest) -> HttpResponse:
    if request.method != "GET":
        return _text(405, "Use GET for /health.")
    if current_runner().closed:
        return _text(503, "Shutting down.")
    return _text(200, "OK")


def _foreign(request: HttpRequest) -> HttpResponse | None:
    """403 for a command a page on another site sent (its Origin is not this server's)."""
    origin = request.headers.get("origin")
    own = f"{request.scheme}://{request.META.get('HTTP_HOST', '')}"
    if origin is not None and origin != own:
        return _text(403, f"Commands from another origin ({origin!r}) are refused.")
    return None


async def start(request: HttpRequest, model: str, task_id: int) -> HttpResponse:
    if request.method != "POST":
        return _text(405, "Use POST to start a task.")
    if refused := _foreign(request):
        return refused
    if model != MODEL:
        return _text(404, f"No task kind {model!r}.")
    try:
        started = await current_runner().start(task_id)
    except Task.DoesNotExist:
        return _text(404, f"No task {model} {task_id}.")
    except RuntimeClosed:
        return _text(503, "Shutting down: no task is started.")
    if started:
        return _text(202, "started")
    return _text(409, f"Task {model} {task_id} is not READY.")


async def cancel(request: HttpRequest, model: str, task_id: int) -> HttpResponse:
    if request.method != "POST":
        return _text(405, "Use POST to cancel a task.")
    if refused := _foreign(request):
        return refused
    if model != MODEL or not await Task.objects.filter(pk=task_id).aexists():
        return _text(404, f"No task {model} {task_id}.")
    reason = _reason(request.body)
    cancelled = await current_runner().cancel(task_id, reason)
    return JsonResponse({"cancelled": cancelled})


def _reason(body: bytes) -> str | None:
    try:
        data: Any = json.loads(body or b"{}")
    except (ValueError, RecursionError):  # invalid, not UTF-8, or nested too deep
        return None
    reason = data.get("reason") if isinstance(data, dict) else None
    if not isinstance(reason, str) or not reason:
        return None
    try:
        reason.encode()
    except UnicodeEncodeError:  # a lone surrogate ("\ud800") cannot be stored
        return None
    return reason


def not_found(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    return _text(404, f"Not found: {request.path!r}.")


def server_error(request: HttpRequest) -> HttpResponse:
    return _text(500, "Server error.")
