"""The harness's HTTP client against a server that closes idle keep-alive connections.

A server may close a connection that has been idle for its keep-alive time,
and a request sent on it at that instant is lost: the client wrote it before
the close reached it, and gets "Server disconnected without sending a
response". A client may not send a POST again on its own, so the harness must
never reuse a connection that a server could be closing. Seen in CI: a RACE-6
start posted on a connection idle for about 5 s, httpx's reuse limit and
uvicorn's keep-alive alike.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from conformance.clients import IDLE_REUSE, http_client

pytestmark = [pytest.mark.timeout(20), pytest.mark.asyncio]

#: The idle time after which the server below takes the next request for its close.
CLOSES_IDLE = IDLE_REUSE + 0.2


async def _serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """HTTP/1.1 with keep-alive; a request on a connection idle past CLOSES_IDLE meets its close.

    That is the instant a real server's keep-alive timer fires, made certain:
    the request arrived, and the close went first.
    """
    loop = asyncio.get_running_loop()
    idle_since = loop.time()
    try:
        while head := await reader.readuntil(b"\r\n\r\n"):
            if loop.time() - idle_since >= CLOSES_IDLE:
                break
            length = next(
                (
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                ),
                0,
            )
            await reader.readexactly(length)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()
            idle_since = loop.time()
    except asyncio.IncompleteReadError:
        pass  # the client closed it
    finally:
        writer.close()


@pytest_asyncio.fixture
async def url() -> AsyncIterator[str]:
    server = await asyncio.start_server(_serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        yield f"http://127.0.0.1:{port}"


async def test_post_when_the_connection_idled_past_the_reuse_limit_then_a_new_one_answers(
    url: str,
) -> None:
    async with http_client() as http:
        assert (await http.post(url + "/start")).status_code == 200
        # The idle time under test, not a wait for something to happen.
        await asyncio.sleep(CLOSES_IDLE + 0.2)
        assert (await http.post(url + "/start")).status_code == 200


async def test_posts_when_close_together_then_they_share_one_connection(url: str) -> None:
    async with http_client() as http:
        first = await http.post(url + "/start")
        second = await http.post(url + "/start")
    assert (first.status_code, second.status_code) == (200, 200)
    # The reuse limit shortens keep-alive; it does not turn it off.
    assert first.extensions["network_stream"] is second.extensions["network_stream"]
