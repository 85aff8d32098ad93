"""One HTTP request as the checks and handlers see it, and the answers they give."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from ..keys import TaskKey
from ..listing import TaskQuery
from ..models import StreamTask
from ..ops.policy import PROXY_HEADERS, is_loopback

#: What a non-stream handler returns, as asgineer takes it.
Response = tuple[int, dict[str, str], str | bytes]

#: A task id or event id: ASCII decimal, no sign, no leading zero, below 2**63.
DECIMAL = re.compile(r"0|[1-9][0-9]{0,17}")
#: The query parameter a stream takes for ``Last-Event-ID`` when the header is not sent.
LAST_EVENT_ID = "last_event_id"
#: The client of a request that came over no network (a Unix socket).
NO_ADDRESS = "-"
TEXT = {"content-type": "text/plain; charset=utf-8"}
JSON = {"content-type": "application/json"}
#: A 503 while the database (or what a probe needs) is away: try again in a second.
DATABASE_DOWN = {**TEXT, "retry-after": "1"}


@dataclass(slots=True)
class Request:
    """What the app read of one request: its scope's parts, and the task it names."""

    scope: dict[str, Any]
    path: str
    method: str
    #: Names in lower case, the first of repeated ones (see :func:`headers_of`).
    headers: dict[str, str]
    #: The peer's address, or NO_ADDRESS.
    client: str
    #: The route's parts (``model``, ``pk``, ``command``), as the path spelt them.
    route: dict[str, str] = field(default_factory=dict)
    #: The task, once a check has found it.
    model: type[StreamTask] | None = None
    pk: int | None = None
    #: What the task list is asked for, once a check has read it.
    listing: TaskQuery | None = None

    @classmethod
    def of(cls, scope: dict[str, Any]) -> Request:
        return cls(scope, scope["path"], scope["method"], headers_of(scope), client_of(scope))

    def task(self) -> tuple[type[StreamTask], int]:
        """The task's model and id, which a check (``known_task``) found."""
        assert self.model is not None and self.pk is not None, "no check has found the task"
        return self.model, self.pk

    @property
    def key(self) -> TaskKey:
        model, pk = self.task()
        return TaskKey(model.__name__, pk)

    @property
    def local(self) -> bool:
        """Whether the client is on this machine (a loopback address, or a Unix socket).

        Not if the request came through a proxy that does not say who sent it
        (the rule of ``LoopbackOnly``): everyone behind it would look local.
        """
        if any(name in self.headers for name in PROXY_HEADERS):
            return False
        return self.client == NO_ADDRESS or is_loopback(self.client)

    def last_event_id(self) -> str:
        """Where a stream resumes: ``Last-Event-ID``, else ``?last_event_id=``; "" for now.

        A browser's ``EventSource`` sets the header on its reconnects only: the
        watch page opens its stream after the events it shows with the query,
        and the browser's header, when it reconnects, says where it got to since.
        """
        return self.headers.get("last-event-id", "") or self.query().get(LAST_EVENT_ID, "")

    def query(self) -> dict[str, str]:
        """The query string's parameters, the first of repeated ones."""
        raw = self.scope.get("query_string", b"").decode("latin-1")
        found: dict[str, str] = {}
        for key, value in parse_qsl(raw, keep_blank_values=False):
            found.setdefault(key, value)
        return found


def headers_of(scope: Mapping[str, Any]) -> dict[str, str]:
    """The request's headers, names in lower case, the first of repeated ones.

    Decoded as latin-1, which takes any byte: a header that is not ASCII is
    then merely invalid where it matters, never an error.
    """
    found: dict[str, str] = {}
    for key, value in scope["headers"]:
        found.setdefault(key.decode("latin-1").lower(), value.decode("latin-1").strip())
    return found


def client_of(scope: Mapping[str, Any]) -> str:
    client = scope.get("client")
    return str(client[0]) if client else NO_ADDRESS


def text(status: int, body: str, extra: Mapping[str, str] | None = None) -> Response:
    return status, {**TEXT, **(extra or {})}, body


def as_json(status: int, body: Mapping[str, Any]) -> Response:
    return status, JSON, json.dumps(body)


def outline(problem: str) -> str:
    """A problem without its details (hosts, ports, errors), for clients elsewhere."""
    return problem.partition(":")[0]


async def respond(send: Any, status: int, reason: str, extra: Any = ()) -> None:
    """Answer a request the app handles itself (outside asgineer) with ``reason`` as text."""
    body = reason.encode()
    headers = [(b"content-type", b"text/plain; charset=utf-8")] if body else []
    if status == 503 and not any(name == "retry-after" for name, _ in extra):
        headers.append((b"retry-after", b"1"))
    headers += [(name.encode(), value.encode("latin-1")) for name, value in extra]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})
