"""The server's edge (protocol.py): request heads limited in size and time, connections per client.

Each test starts ``runserver_stream`` as a real process and attacks it over
real sockets, the way the findings of the attack from outside did. The
attacker connects from 127.0.0.2, another address of the loopback interface,
so the server counts it apart from the victim on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import re
import socket
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from conformance.hostile import ATTACKER

pytestmark = pytest.mark.timeout(90)

_STATUS = re.compile(rb"HTTP/1\.1 (\d{3}) ")


def _connect(url: str, source: str = ATTACKER) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=20, source_address=(source, 0))


def _answer(sock: socket.socket) -> bytes:
    """What the server sends until it closes (or resets) the connection."""
    received = b""
    with contextlib.suppress(OSError):
        while chunk := sock.recv(65536):
            received += chunk
    return received


def _status(answer: bytes) -> int | None:
    match = _STATUS.match(answer)
    return int(match[1]) if match else None


@contextlib.contextmanager
def _unfinished(url: str, count: int) -> Iterator[list[socket.socket]]:
    """``count`` connections from the attacker, each with half a request sent."""
    opened: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = _connect(url)
            opened.append(sock)
            with contextlib.suppress(OSError):  # refused at once: the point of some tests
                sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        yield opened
    finally:
        for sock in opened:
            sock.close()


def test_server_when_one_client_opens_more_connections_than_it_has_files_then_others_served(
    start_server: Callable[..., Any], run: Callable[..., Any]
) -> None:
    # The finding: 1,100 unfinished requests against a limit of 1,024 open
    # files, and every other client got an empty reply. The default cap of
    # connections per client (256) now counts unfinished requests too.
    server = start_server(open_files=1024)
    with _unfinished(server.url, 1100) as attacks:
        health = httpx.get(f"{server.url}/health", timeout=10)
        assert (health.status_code, health.text) == (200, "OK"), server.describe()
        created = run("manage.py", "create_task", "--server", server.url, "--step-delay", "0")
        assert created.returncode == 0, created.stderr
        with httpx.stream("GET", f"{server.url}/stream/ExampleTask/1", timeout=20) as stream:
            assert stream.status_code == 200
            assert "event: complete" in stream.read().decode()
        answers = [_status(_answer(sock)) for sock in attacks[256:]]
    assert answers.count(429) >= 800, f"connections past the cap got {set(answers)}"


def test_client_when_it_holds_its_cap_in_unfinished_requests_then_next_connection_429(
    start_server: Callable[..., Any], env: dict[str, str], wait_until: Callable[..., Any]
) -> None:
    server = start_server(env={**env, "STREAMING_MAX_CONNECTIONS_PER_CLIENT": "5"})
    with _unfinished(server.url, 5) as held:
        with _connect(server.url) as sixth:
            # Refused on connecting, before it reads a byte: what a client sent
            # by then would be unread when the server closes, and the reset that
            # follows can destroy the answer. So this client reads first.
            answer = _answer(sixth)
        assert _status(answer) == 429, answer
        # Retry-After is the reconnect delay streams suggest (RETRY_MS, 2 s), in whole seconds.
        assert b"retry-after: 2\r\n" in answer.lower() and b"at most 5 at once" in answer
        # Another client is not counted with the attacker.
        assert httpx.get(f"{server.url}/health", timeout=10).status_code == 200
        held.pop().close()

        def admitted() -> bool:
            with _connect(server.url) as again:
                again.sendall(
                    b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
                )
                return _status(_answer(again)) == 200

        wait_until(admitted, 10, "a connection to be admitted once one of the five closed")


def test_request_head_when_not_complete_in_time_then_408_also_on_a_kept_alive_connection(
    start_server: Callable[..., Any], env: dict[str, str]
) -> None:
    server = start_server(env={**env, "STREAMING_HEADER_TIMEOUT": "1"})
    with _connect(server.url) as silent:
        answer = _answer(silent)  # it sends nothing at all
    assert _status(answer) == 408, answer
    assert b"over 1s to arrive" in answer
    with _connect(server.url) as kept:
        kept.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        first = b""
        while not first.endswith(b"\r\n\r\nOK"):  # /health's whole answer
            chunk = kept.recv(65536)
            assert chunk, first
            first += chunk
        assert _status(first) == 200, first
        # The next request on the same connection starts, and never ends.
        kept.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        answer = _answer(kept)
    assert _status(answer) == 408, answer


def test_kept_alive_connection_when_it_sends_bytes_that_begin_no_request_then_408(
    start_server: Callable[..., Any], env: dict[str, str]
) -> None:
    # A CRLF between requests begins no message, so neither the parser's
    # callbacks nor uvicorn's keep-alive timeout (cancelled by any byte) would
    # ever close the connection: the head deadline must start with any byte.
    server = start_server(env={**env, "STREAMING_HEADER_TIMEOUT": "1"})
    with _connect(server.url) as kept:
        kept.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        first = b""
        while not first.endswith(b"\r\n\r\nOK"):
            chunk = kept.recv(65536)
            assert chunk, first
            first += chunk
        kept.sendall(b"\r\n")
        answer = _answer(kept)
    assert _status(answer) == 408, answer


def test_head_deadline_when_the_next_head_begins_during_a_long_stream_then_the_stream_ends_first(
    start_server: Callable[..., Any], env: dict[str, str], run: Callable[..., Any]
) -> None:
    # The next request's head begins while a stream is being answered. Its
    # deadline (1 s) must not cut the stream (3 s); once the stream has
    # ended, the head that never completed is late, and refused.
    server = start_server(env={**env, "STREAMING_HEADER_TIMEOUT": "1"})
    created = run("manage.py", "create_task", "--server", server.url, "--step-delay", "1")
    assert created.returncode == 0, created.stderr
    with _connect(server.url, "127.0.0.1") as sock:
        sock.sendall(
            b"GET /stream/ExampleTask/1 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
            b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        )
        answers = _answer(sock)
    stream, _, refusal = answers.partition(b"HTTP/1.1 408 ")
    assert b"event: complete" in stream, answers
    assert refusal.endswith(b"over 1s to arrive."), answers[-300:]


def test_request_head_when_over_the_limit_then_431_and_a_body_past_it_is_not_counted(
    start_server: Callable[..., Any], env: dict[str, str], run: Callable[..., Any]
) -> None:
    server = start_server(env={**env, "STREAMING_HEADER_BYTES": "2048"})
    with _connect(server.url) as big:
        with contextlib.suppress(OSError):
            big.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 4096)
        answer = _answer(big)
    assert _status(answer) == 431, answer
    # A client that sent more than the head still reads the answer: the
    # server closes in stages (sends it, drops what follows) rather than
    # resetting a connection with bytes unread.
    with _connect(server.url) as more:
        more.sendall(b"GET /health HTTP/1.1\r\nX-Big: " + b"a" * 40_000)
        answer = _answer(more)
        # What it sends after the answer is read and dropped, not met with a reset...
        for _ in range(3):
            more.sendall(b"a" * 8192)
    assert _status(answer) == 431, answer
    # ...up to a bound: one that goes on sending is cut off, not read for ever.
    with _connect(server.url) as flood:
        flood.sendall(b"GET /health HTTP/1.1\r\nX-Big: " + b"a" * 4096)
        assert _status(_answer(flood)) == 431
        with pytest.raises(OSError):
            for _ in range(100):
                flood.sendall(b"a" * 65536)
    # A whole head over the limit, in one write, is refused too.
    with _connect(server.url, "127.0.0.1") as whole:
        with contextlib.suppress(OSError):
            whole.sendall(
                b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: %s\r\n\r\n" % (b"a" * 4096)
            )
        answer = _answer(whole)
    assert _status(answer) == 431, answer
    # Two requests of 1,500 bytes each in one write: each head is within the
    # limit, though together they are over it.
    padded = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: %s\r\n\r\n" % (b"p" * 1450)
    with _connect(server.url, "127.0.0.1") as pipelined:
        pipelined.sendall(padded + padded.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n"))
        answers = _answer(pipelined)
    assert answers.count(b"HTTP/1.1 200 OK") == 2, answers
    # A body many times the head's limit, sent in one write with the head: the
    # head ends within the limit, so the request is served.
    assert run("manage.py", "create_task", "--no-start").returncode == 0
    body = b'{"reason": "' + b"r" * 20_000 + b'"}'
    with _connect(server.url, "127.0.0.1") as command:
        command.sendall(
            b"POST /tasks/ExampleTask/1/cancel HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nConnection: close\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body) + body
        )
        answer = _answer(command)
    assert _status(answer) == 200 and b'"cancelled": true' in answer, answer
    metrics = httpx.get(f"{server.url}/metrics", timeout=10).text
    assert 'streaming_requests_refused_total{reason="header_size"} 4.0' in metrics


def test_websocket_handshake_when_sent_to_the_server_then_400_saying_what_it_serves(
    server: Any,
) -> None:
    with _connect(server.url, "127.0.0.1") as sock:
        sock.sendall(
            b"GET /stream/ExampleTask/1 HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            b"Sec-WebSocket-Version: 13\r\n\r\n"
        )
        answer = _answer(sock)
    assert _status(answer) == 400, answer
    assert b"does not serve WebSocket" in answer and b"connection: close" in answer.lower()
    metrics = httpx.get(f"{server.url}/metrics", timeout=10).text
    assert 'streaming_requests_refused_total{reason="websocket"} 1.0' in metrics
