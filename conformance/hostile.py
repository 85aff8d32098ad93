"""Careless and hostile clients on raw sockets: what a server must survive at its edge.

Each one talks to a real server over 127.0.0.1, below any HTTP client
library, because what it does is what a library would never send: a
WebSocket handshake to an SSE server, a request head that never ends,
connections that send half a request and then nothing, or a header line now
and then. Attackers connect from :data:`ATTACKER`, another loopback address
(Linux routes all of 127/8 to the loopback interface), so a server that
counts per client address sees them apart from the victim on 127.0.0.1.

Whether a server held up is judged from the victim's side, as a ratio:
:func:`latencies` times the same requests before and during an attack, on
the same connection, so a loaded machine slows both alike.

Malformed requests are drawn by hypothesis (:func:`hostile_request`): any
method, path, header bytes and body, half of them on the real routes of a
real task, where a request gets furthest before it is judged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import socket
import statistics
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

from hypothesis import strategies as st

from .clients import http_client
from .contract import TaskRef

#: The address attackers connect from: a second client, as far as the server can tell.
ATTACKER = "127.0.0.2"
#: How many times slower the victim's median request may get under an attack.
SLOWDOWN_LIMIT = 10.0

_STATUS = re.compile(rb"HTTP/1\.[01] (\d{3})")


def _address(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").rstrip("/").split(":")
    return host, int(port)


def _status(head: bytes) -> int | None:
    match = _STATUS.match(head)
    return int(match[1]) if match else None


def websocket_handshake(url: str, path: str) -> int | None:
    """The status a WebSocket handshake to ``path`` is answered with (None: closed unanswered)."""
    host, port = _address(url)
    request = (
        f"GET {path} HTTP/1.1\r\n"
        f"Host: {host}:{port}\r\n"
        "Upgrade: websocket\r\n"
        "Connection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        "Sec-WebSocket-Version: 13\r\n"
        f"Origin: http://{host}:{port}\r\n"
        "\r\n"
    ).encode()
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(request)
        head = b""
        with contextlib.suppress(OSError):
            while b"\r\n" not in head:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                head += chunk
    return _status(head)


def handshake_paths(ref: TaskRef) -> list[str]:
    """Where a WebSocket handshake is tried: ``ref``'s stream and task, a probe, no route."""
    return [ref.stream_path, f"/tasks/{ref.model}/{ref.id}", "/health", "/no-such-path"]


async def handshakes(url: str, ref: TaskRef) -> dict[str, int | None]:
    """The status each of :func:`handshake_paths` answers a WebSocket handshake with."""
    return {
        path: await asyncio.to_thread(websocket_handshake, url, path)
        for path in handshake_paths(ref)
    }


def refused_with_4xx(answers: dict[str, int | None]) -> bool:
    """Whether every handshake was answered, with a 4xx."""
    return all(status is not None and 400 <= status < 500 for status in answers.values())


@contextlib.contextmanager
def logged_errors() -> Iterator[list[logging.LogRecord]]:
    """Log records at ERROR or above, from any logger of this process, while the context is open.

    A logger that does not propagate (uvicorn's own) gets the handler too,
    so that none of them is missed.
    """
    records: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Collect(logging.ERROR)
    manager = logging.Logger.manager
    loggers = [logging.getLogger()] + [
        found
        for found in manager.loggerDict.values()
        if isinstance(found, logging.Logger) and not found.propagate
    ]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        yield records
    finally:
        for logger in loggers:
            logger.removeHandler(handler)


def status_of(url: str, request: bytes, *, timeout: float = 10.0) -> int | None:
    """Send one raw request; the response's status, or None if the server closed without one."""
    host, port = _address(url)
    with socket.create_connection((host, port), timeout=timeout) as sock:
        with contextlib.suppress(OSError):  # refused mid-send: the answer may still be there
            sock.sendall(request)
        head = b""
        with contextlib.suppress(OSError):
            while b"\r\n" not in head:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                head += chunk
    return _status(head)


def request_with_header(url: str, path: str, size: int) -> int | None:
    """The status of a complete ``GET path`` carrying one header of ``size`` bytes."""
    host, port = _address(url)
    request = (
        f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\nX-Padding: ".encode()
        + b"a" * size
        + b"\r\n\r\n"
    )
    return status_of(url, request, timeout=30)


# -- malformed requests ---------------------------------------------------------------------


def build_request(method: str, path: str, pairs: list[tuple[bytes, bytes]], body: bytes) -> bytes:
    """An HTTP/1.1 request of ``method`` and ``path`` with header ``pairs`` and ``body``."""
    head = [f"{method} {path} HTTP/1.1".encode(), b"Host: 127.0.0.1"]
    head += [name + b": " + value for name, value in pairs]
    head += [b"Content-Length: %d" % len(body), b"Connection: close"]
    return b"\r\n".join(head) + b"\r\n\r\n" + body


def nested(depth: int) -> bytes:
    """A JSON array nested ``depth`` deep: a recursive parser's stack overflow."""
    return b"[" * depth + b"]" * depth


#: Header values, with the bytes a UTF-8 decoder refuses; never CR or LF (that is framing).
_HEADER_VALUES = st.binary(max_size=40).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))
_HEADER_NAMES = st.sampled_from(
    [b"Last-Event-ID", b"Last-Event-ID", b"Content-Type", b"Accept", b"Origin", b"X-Anything"]
) | st.from_regex(rb"\A[A-Za-z0-9-]{1,20}\Z")
_SPECIAL_BODIES = st.sampled_from(
    [
        b'{"reason": "fine"}',
        b'{"reason": 42}',
        b'{"reason": "\\ud800"}',
        b"[]",
        b"null",
        b'"just a string"',
        nested(20_000),
        b"[" * 50_000,
        b'{"reason": "' + b"x" * 2_000_000 + b'"}',
        b"\xff\xfe{}",
    ]
)
_BODIES = st.one_of(st.just(b""), st.binary(max_size=200))


def hostile_request(model: str, task_id: str) -> st.SearchStrategy[bytes]:
    """Whole HTTP/1.1 requests: any method, path, header bytes and body.

    Half of them use the real routes of a real task with the right method,
    where a request gets furthest into the implementation before it is judged.
    """
    segment = st.sampled_from([model, "NoSuchModel", task_id, "0", "-1", "%00", "%ff", "..", ""])
    segment |= st.text(min_size=1, max_size=12).map(lambda t: t.encode().hex())
    real = st.sampled_from(
        [
            ("GET", f"/stream/{model}/{task_id}"),
            ("POST", f"/tasks/{model}/{task_id}/start"),
            ("POST", f"/tasks/{model}/{task_id}/cancel"),
            ("POST", f"/tasks/{model}/{task_id}/retry"),
            ("GET", "/health"),
        ]
    )
    made_up_paths = st.one_of(
        segment.map(lambda p: f"/stream/{model}/{p}"),
        st.tuples(segment, segment).map(lambda p: f"/stream/{p[0]}/{p[1]}"),
        st.tuples(segment, st.sampled_from(["start", "cancel", "retry", "stop", ""])).map(
            lambda p: f"/tasks/{model}/{p[0]}/{p[1]}"
        ),
        st.sampled_from(["/", "/stream", "/tasks", "//stream//", "/%2e%2e/etc", "*"]),
        st.lists(segment, max_size=5).map(lambda parts: "/" + "/".join(parts)),
    )
    methods = st.sampled_from(["GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH"])
    methods |= st.from_regex(r"\A[A-Z]{1,12}\Z")
    made_up = st.tuples(methods, made_up_paths)
    headers = st.lists(st.tuples(_HEADER_NAMES, _HEADER_VALUES), max_size=6)
    return st.builds(
        lambda route, pairs, body: build_request(route[0], route[1], pairs, body),
        st.one_of(real, made_up),
        headers,
        st.one_of(_BODIES, _SPECIAL_BODIES),
    )


# -- floods -------------------------------------------------------------------------------


@dataclass
class Flood:
    """What one flooding attacker managed: per connection, the bytes the server took."""

    #: Bytes sent on each connection before the server refused it (or the cap was reached).
    sent: list[int] = field(default_factory=list)
    #: Statuses the server answered with, where it answered before closing.
    statuses: list[int] = field(default_factory=list)
    #: Connections still open when the attacker reached its cap: never refused.
    unrefused: int = 0


def flood_heads(url: str, stop: threading.Event, *, cap: int, chunk: int = 256 * 1024) -> Flood:
    """Send request heads that never end, one connection after another, until ``stop``.

    Each connection sends a request line and the start of a header, then
    header bytes without end, up to ``cap`` bytes; a server that refuses it
    (answers, or closes) makes the attacker start the next one. Run it in a
    thread: it blocks.
    """
    host, port = _address(url)
    flood = Flood()
    filler = b"a" * chunk
    while not stop.is_set():
        sent = 0
        refused = False
        try:
            sock = socket.create_connection((host, port), timeout=10, source_address=(ATTACKER, 0))
        except OSError:
            continue  # the server's backlog is full for a moment: try again
        with sock:
            try:
                sock.sendall(b"GET /health HTTP/1.1\r\nHost: %s\r\nX-Flood: " % host.encode())
                while sent < cap and not stop.is_set():
                    sock.sendall(filler)
                    sent += chunk
            except TimeoutError:
                pass  # the server stopped reading, without refusing: not refused
            except OSError:
                refused = True
            if not refused and sent < cap and stop.is_set():
                break  # stopped by the case, not by the server: not a finished attempt
            with contextlib.suppress(OSError):
                sock.settimeout(0.5 if refused else 0.01)
                status = _status(sock.recv(4096))
                if status is not None:
                    flood.statuses.append(status)
                    refused = True
        flood.sent.append(sent)
        if not refused:
            flood.unrefused += 1
    return flood


async def latencies(url: str, path: str, count: int) -> list[float]:
    """Seconds each of ``count`` sequential ``GET path`` took, on one kept-alive connection.

    Every answer must be 200: a victim refused is a victim denied.
    """
    took: list[float] = []
    async with http_client(url, timeout=30) as http:
        await http.get(path)  # the connection is open before the first measurement
        for _ in range(count):
            began = time.perf_counter()
            response = await http.get(path)
            took.append(time.perf_counter() - began)
            assert response.status_code == 200, (path, response.status_code, response.text)
    return took


def slowdown(before: list[float], during: list[float]) -> str | None:
    """Why the victim was held up (its median grew past :data:`SLOWDOWN_LIMIT`), or None."""
    was, now = statistics.median(before), statistics.median(during)
    if now <= was * SLOWDOWN_LIMIT:
        return None
    return (
        f"the victim's median request took {now * 1000:.1f} ms under attack, "
        f"{now / was:.0f} times its {was * 1000:.2f} ms before (at most {SLOWDOWN_LIMIT:g} times)"
    )


@dataclass
class SlowConnection:
    """One attacker's connection that never finishes its request head."""

    trickle: bool
    opened: float = 0.0
    #: Loop time the server closed it (EOF or reset); None while open.
    closed: float | None = None
    #: What the server answered before closing, if anything.
    answer: bytes = b""


@contextlib.asynccontextmanager
async def slow_connections(
    url: str, count: int, *, interval: float
) -> AsyncIterator[list[SlowConnection]]:
    """``count`` connections from :data:`ATTACKER` whose request heads never end.

    Half send a request line and one header, then nothing. The other half
    then send another header line every ``interval`` seconds (slowloris),
    so a server that times out only silence never closes them. Each
    connection notes when the server closed it. All are closed on exit.
    """
    host, port = _address(url)
    loop = asyncio.get_running_loop()
    connections = [SlowConnection(trickle=index % 2 == 1) for index in range(count)]
    streams: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    holders: list[asyncio.Task[None]] = []

    async def hold(
        connection: SlowConnection,
        index: int,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        line = 0
        while True:
            try:
                async with asyncio.timeout(interval if connection.trickle else None):
                    data = await reader.read(4096)
            except TimeoutError:
                line += 1
                writer.write(b"X-Slow-%d-%d: a\r\n" % (index, line))
                with contextlib.suppress(OSError):
                    await writer.drain()
                continue
            except OSError:
                data = b""
            if not data:
                connection.closed = loop.time()
                return
            connection.answer += data

    try:
        for connection in connections:
            reader, writer = await asyncio.open_connection(host, port, local_addr=(ATTACKER, 0))
            streams.append((reader, writer))
            connection.opened = loop.time()
            writer.write(f"GET /health HTTP/1.1\r\nHost: {host}:{port}\r\n".encode())
        for index, (reader, writer) in enumerate(streams):
            holding = hold(connections[index], index, reader, writer)
            holders.append(asyncio.create_task(holding, name="conformance:slow-connection"))
        yield connections
    finally:
        for holder in holders:
            holder.cancel()
        await asyncio.gather(*holders, return_exceptions=True)
        for _, writer in streams:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


__all__ = [
    "ATTACKER",
    "SLOWDOWN_LIMIT",
    "Flood",
    "SlowConnection",
    "build_request",
    "flood_heads",
    "handshake_paths",
    "handshakes",
    "hostile_request",
    "latencies",
    "logged_errors",
    "nested",
    "refused_with_4xx",
    "request_with_header",
    "slow_connections",
    "slowdown",
    "status_of",
    "websocket_handshake",
]
