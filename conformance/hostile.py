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

import httpx

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


def request_with_header(url: str, path: str, size: int) -> int | None:
    """The status of a complete ``GET path`` carrying one header of ``size`` bytes."""
    host, port = _address(url)
    request = (
        f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\nX-Padding: ".encode()
        + b"a" * size
        + b"\r\n\r\n"
    )
    with socket.create_connection((host, port), timeout=30) as sock:
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
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
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
    "flood_heads",
    "latencies",
    "logged_errors",
    "request_with_header",
    "slow_connections",
    "slowdown",
    "websocket_handshake",
]
