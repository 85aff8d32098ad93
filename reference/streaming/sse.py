"""Server-Sent Events wire format: encoding only, no Django and no I/O.

The shape is the testing guide's (``event:`` then ``data:`` as one JSON line)
plus ``id:`` so that clients can resume with ``Last-Event-ID``. ``json.dumps``
never emits a raw newline, so one ``data:`` line always suffices.
"""

from __future__ import annotations

import json

from .events import Event

#: Response headers of every event stream.
HEADERS = {
    "content-type": "text/event-stream; charset=utf-8",
    "cache-control": "no-cache",
    # nginx and some proxies buffer responses unless told not to.
    "x-accel-buffering": "no",
}

#: An SSE comment: ignored by clients, keeps idle connections (and proxies) open.
KEEPALIVE = b": keepalive\n\n"


def encode(event: Event) -> bytes:
    """Encode one event as an SSE frame."""
    retry = f"retry: {event.retry}\n" if event.retry is not None else ""
    data = json.dumps(event.payload(), default=str)
    return f"event: {event.type}\ndata: {data}\nid: {event.id}\n{retry}\n".encode()
