"""The SSE wire below any HTTP library: clients on bare sockets, and frames read from bytes.

Some cases need what a client library hides or cannot afford: a thousand
streams open in one process, a client that resets its connection, stops
reading, reads slowly or dies with its process, the frames exactly as they
were sent. These clients talk to a server on 127.0.0.1 over asyncio streams
(or from a child process) and parse the frames themselves. A test double of
the other side is here too: an upstream that answers and then hangs.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import struct
import sys
from collections.abc import AsyncIterator, Callable

import httpx
import psutil

from .clients import HttpStatusError
from .contract import TERMINAL_EVENTS, TaskRef
from .waiting import eventually

#: Bytes a bare client's reader buffers: one read of a big frame.
READ_LIMIT = 2**16


def _address(base_url: str) -> tuple[str, int]:
    host, port = base_url.removeprefix("http://").rstrip("/").split(":")
    return host, int(port)


def _check_head(head: bytes) -> None:
    if not head.startswith(b"HTTP/1.1 200"):
        raise HttpStatusError(int(head[9:12]), head.decode(errors="replace"))


# -- streams by the hundred -------------------------------------------------------------


async def read_raw_stream(
    base_url: str,
    ref: TaskRef,
    *,
    opened: Callable[[], None] | None = None,
    keep_alive: bool = False,
    to_end: bool = False,
) -> bytes:
    """One bare-socket SSE client: send the request, check the headers, read; return the body.

    It reads through the stream's first terminal event, or to its end if that
    comes first; with ``to_end``, to the end of the stream however many
    terminal events came (whether a stream ends is for the cases that judge
    that: FUNC-2, SHUT). ``opened`` is called once the response headers are
    in, that is once the server has registered this client (HTTP-4). The
    request asks for the connection to close with the stream, unless
    ``keep_alive``: then the stream ends when the server closes the
    connection (as a draining server must). Light enough to run by the
    thousand in one process, where an HTTP client library would not be.
    """
    host, port = _address(base_url)
    reader, writer = await asyncio.open_connection(host, port)
    try:
        closing = "" if keep_alive else "Connection: close\r\n"
        writer.write(f"GET {ref.stream_path} HTTP/1.1\r\nHost: {host}\r\n{closing}\r\n".encode())
        head = await reader.readuntil(b"\r\n\r\n")
        _check_head(head)
        if opened is not None:
            opened()
        if to_end:
            return await reader.read()
        return await _read_through_terminal(reader, chunked=b"chunked" in head.lower())
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


#: A terminal event's frame, whole, and its first line, in a stream's payload (not chunked):
#: any of SPEC's terminal types after ``event:`` (its space optional), lines ending in
#: CRLF, LF or CR.
_TERMINAL = b"|".join(sorted(t.encode() for t in TERMINAL_EVENTS))
_EOL = rb"(?:\r\n|\r(?!\n)|\n)"
_TERMINAL_START = re.compile(rb"(?:^|[\r\n])event: ?(?:%s)%s" % (_TERMINAL, _EOL))
_TERMINAL_FRAME = re.compile(
    rb"(?:^|[\r\n])event: ?(?:%s)%s(?:[^\r\n]+%s)*?%s" % (_TERMINAL, _EOL, _EOL, _EOL)
)
#: A blank line: the end of a frame.
_FRAME_END = re.compile(_EOL + _EOL)


async def _read_through_terminal(reader: asyncio.StreamReader, *, chunked: bool) -> bytes:
    """Read until a terminal event's frame has arrived whole, or the stream ends; the raw body."""
    body = bytearray()
    payload = _Payload(chunked=chunked)
    while chunk := await reader.read(READ_LIMIT):
        body += chunk
        if payload.feed(chunk):
            break
    return bytes(body)


class _Payload:
    """A stream's payload as it arrives, chunked encoding removed: has a terminal frame ended?"""

    def __init__(self, *, chunked: bool) -> None:
        self.chunked = chunked
        self.text = bytearray()
        self.raw = bytearray()  # received, not yet decoded: part of a chunk's size line
        self.left = 0  # bytes of the current chunk's data still to come
        self.skip = 0  # bytes of the CRLF after a chunk's data still to come
        self.candidate: int | None = None  # where a terminal event's frame begins

    def feed(self, data: bytes) -> bool:
        before = len(self.text)
        if self.chunked:
            self._decode(data)
        else:
            self.text += data
        if self.candidate is None:
            found = _TERMINAL_START.search(self.text, max(0, before - 64))
            self.candidate = found.start() if found else None
        return self.candidate is not None and bool(_TERMINAL_FRAME.match(self.text, self.candidate))

    def _decode(self, data: bytes) -> None:
        self.raw += data
        while self.raw:
            if self.skip:
                taken = min(self.skip, len(self.raw))
                del self.raw[:taken]
                self.skip -= taken
            elif self.left:
                piece = self.raw[: self.left]
                self.text += piece
                del self.raw[: len(piece)]
                self.left -= len(piece)
                self.skip = 0 if self.left else 2
            else:
                line, sep, _ = self.raw.partition(b"\r\n")
                if not sep:
                    return
                del self.raw[: len(line) + 2]
                self.left = int(line.split(b";")[0], 16)
                if not self.left:  # the last chunk
                    self.raw.clear()
                    return


async def open_streams(
    base_url: str, ref: TaskRef, count: int, *, keep_alive: bool = False, to_end: bool = False
) -> list[asyncio.Task[bytes]]:
    """``count`` :func:`read_raw_stream` clients of ``ref``, returned once every one is registered.

    Each reads in a task of its own; :func:`stream_bodies` collects what they
    read, :func:`close_streams` closes them. If not all of them open, they
    are closed and the case fails.
    """
    registered: list[None] = []
    readers = [
        asyncio.create_task(
            read_raw_stream(
                base_url,
                ref,
                opened=lambda: registered.append(None),
                keep_alive=keep_alive,
                to_end=to_end,
            ),
            name=f"conformance:raw-client-{n}",
        )
        for n in range(count)
    ]
    try:
        await eventually(
            lambda: len(registered) == count or any(r.done() for r in readers),
            timeout=60,
            what=f"{count} streams to be open",
        )
        failed = [r.exception() for r in readers if r.done() and r.exception()]
        assert len(registered) == count, (
            f"{len(registered)} of {count} streams opened: {failed[:3]}"
        )
    except BaseException:
        await close_streams(readers)
        raise
    return readers


async def close_streams(readers: list[asyncio.Task[bytes]]) -> None:
    """Close the streams of :func:`open_streams`."""
    for reader in readers:
        reader.cancel()
    await asyncio.gather(*readers, return_exceptions=True)


async def stream_bodies(readers: list[asyncio.Task[bytes]], timeout: float) -> list[bytes]:
    """What each stream of :func:`open_streams` received, once every one has ended."""
    try:
        async with asyncio.timeout(timeout):
            return await asyncio.gather(*readers)
    finally:
        await close_streams(readers)


# -- frames -------------------------------------------------------------------------------


def raw_frames(body: bytes, *, cut: bool = False) -> list[dict[str, str]]:
    """The SSE frames of a raw response body that carry data (chunked encoding removed).

    ``cut`` says the body is what a read had when it stopped, not a whole
    response: its last frame counts even without the blank line that would
    end it, and a chunk cut short counts for what arrived of it.
    """
    text = _unchunk(body).decode(errors="replace")
    return sse_frames(f"{text}\n\n" if cut else text)


#: A line's end in an event stream: CRLF, LF or a lone CR (WHATWG's EventSource).
_LINE_END = re.compile(r"\r\n|\r|\n")


def sse_frames(text: str) -> list[dict[str, str]]:
    """The frames (field name -> value) that carry data in an event stream's text.

    As the WHATWG parser reads it: lines end in CRLF, LF or CR; a field's
    value loses one leading space; a line starting with ``:`` is a comment;
    a frame is dispatched by a blank line, and only if it has ``data``.
    """
    frames: list[dict[str, str]] = []
    current: dict[str, str] = {}
    # What follows the last line break is no line yet, nor is a frame without its blank line.
    *lines, _unfinished = _LINE_END.split(text)
    for line in lines:
        if line == "":
            if "data" in current:
                frames.append(current)
            current = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(":")
            current[name] = value.removeprefix(" ")
    return frames


def event_types(text: str) -> list[str]:
    """The types of the frames in an event stream's text, in order (``message`` if unnamed)."""
    return [frame.get("event", "message") for frame in sse_frames(text)]


def frame_ids(body: bytes) -> list[int]:
    """The ids of a raw body's frames, in order (0 for a frame without one)."""
    return [int(frame.get("id", 0)) for frame in raw_frames(body)]


def _unchunk(body: bytes) -> bytes:
    """The payload of an HTTP/1.1 chunked body (a body that is not chunked comes back whole).

    The body may stop anywhere, as a read does: inside a chunk (what arrived
    of it counts) or inside a chunk's size line (dropped). A body whose first
    line is no chunk size is not chunked; one that breaks the encoding later
    fails the case, rather than passing chunk sizes off as data.
    """
    out = bytearray()
    rest = body
    while rest:
        size_line, sep, after = rest.partition(b"\r\n")
        if not sep:
            break  # the read stopped inside a size line
        try:
            size = int(size_line.split(b";")[0], 16)
        except ValueError:
            if not out:
                return body  # not chunked after all
            raise AssertionError(
                f"broken chunked encoding at byte {len(body) - len(rest)}: {size_line[:40]!r}"
            ) from None
        if size == 0:
            break
        out += after[:size]
        rest = after[size + 2 :]
    return bytes(out)


async def read_frames(response: httpx.Response, *, timeout: float = 10.0) -> list[dict[str, str]]:
    """The frames (field name -> value) of a streamed response that carry data.

    Read through the first terminal event, or until the response ends, within
    ``timeout`` seconds: whether the stream then ends is FUNC-2's to judge,
    not every case's that reads frames. As in the WHATWG parser, a block
    without ``data`` dispatches no event (a lone ``retry:`` block only sets
    the reconnection time). A field that appears twice in one frame fails the
    case.
    """
    frames: list[dict[str, str]] = []
    current: dict[str, str] = {}
    try:
        async with asyncio.timeout(timeout):
            async for line in response.aiter_lines():
                if line == "":
                    if "data" in current:
                        frames.append(current)
                        if current.get("event") in TERMINAL_EVENTS:
                            break
                    current = {}
                elif not line.startswith(":"):
                    name, _, value = line.partition(":")
                    assert name not in current, f"field {name!r} repeated in one frame: {line!r}"
                    current[name] = value.removeprefix(" ")
    except TimeoutError:
        raise AssertionError(
            f"no terminal event nor end of stream in {timeout} s; frames so far: {frames}"
        ) from None
    return frames


# -- careless clients ----------------------------------------------------------------------


async def open_raw_stream(
    base_url: str, ref: TaskRef, *, receive_buffer: int | None = None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A stream of ``ref`` on a bare socket, its headers read; the case reads the rest.

    ``receive_buffer`` shrinks the socket's receive buffer, so that a client
    that stops reading fills it, and then the server's, soon.
    """
    host, port = _address(base_url)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if receive_buffer is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (host, port))
    reader, writer = await asyncio.open_connection(sock=sock, limit=READ_LIMIT)
    writer.write(f"GET {ref.stream_path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    _check_head(await reader.readuntil(b"\r\n\r\n"))
    return reader, writer


def reset(writer: asyncio.StreamWriter) -> None:
    """Close with an RST instead of a FIN: SO_LINGER with a zero timeout."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def connect_and_reset(base_url: str, ref: TaskRef, frames: int) -> int:
    """Open a stream on a bare socket, read ``frames`` frames, then reset the connection.

    Returns the frames read by then (a read may bring more than asked for).
    """
    async with asyncio.timeout(5):
        reader, writer = await open_raw_stream(base_url, ref)
        try:
            body = bytearray()
            # Each frame ends with a blank line, counted in the payload: with
            # CRLF line ends, chunked framing's CRLFs would look like blank lines.
            payload = _Payload(chunked=True)
            while len(_FRAME_END.findall(payload.text)) < frames:
                chunk = await reader.read(65536)
                assert chunk, f"the stream ended after {bytes(body)!r}"
                body += chunk
                payload.feed(chunk)
        finally:
            reset(writer)
    return len(_FRAME_END.findall(payload.text))


async def read_slowly(reader: asyncio.StreamReader, *, rate: float, until: bytes) -> bytes:
    """Read at about ``rate`` bytes a second until ``until`` has arrived; return it all.

    The pauses pace a slow client; they synchronise nothing.
    """
    body = bytearray()
    loop = asyncio.get_running_loop()
    began = loop.time()
    while until not in body[-len(until) - 65536 :]:
        chunk = await reader.read(65536)
        if not chunk:
            raise AssertionError(f"the server closed the stream after {len(body)} bytes")
        body += chunk
        ahead = len(body) / rate - (loop.time() - began)
        if ahead > 0:
            await asyncio.sleep(ahead)
    return bytes(body)


_KILLED_CLIENT = """
import signal, socket, sys
host, port, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
sock = socket.create_connection((host, port))
sock.sendall(f"GET {path} HTTP/1.1\\r\\nHost: {host}\\r\\n\\r\\n".encode())
head = b""
while b"\\r\\n\\r\\n" not in head:
    head += sock.recv(1)
print("ready", flush=True)
signal.pause()  # until the case kills this process
"""


async def killed_client(base_url: str, ref: TaskRef) -> None:
    """A client in a process of its own opens a stream of ``ref``, and the process is killed.

    Its connection ends the way a crashed client's does: the kernel closes it,
    with no request of the client's to say goodbye.
    """
    host, port = _address(base_url)
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _KILLED_CLIENT,
        host,
        str(port),
        ref.stream_path,
        stdout=asyncio.subprocess.PIPE,
        stdin=asyncio.subprocess.DEVNULL,
    )
    try:
        assert child.stdout is not None
        async with asyncio.timeout(20):
            assert (await child.stdout.readline()).strip() == b"ready"
    finally:
        child.kill()
        await child.wait()


def server_side_connection(port: int, client_port: int) -> bool:
    """Whether this process holds the server end of the connection from ``client_port``."""
    return any(
        conn.laddr and conn.raddr and conn.laddr.port == port and conn.raddr.port == client_port
        for conn in psutil.Process().net_connections(kind="tcp")
    )


# -- the other side --------------------------------------------------------------------------


class HangingUpstream:
    """An HTTP server that answers every request with headers and then nothing.

    A task's request to it is in flight for as long as the task runs; it
    notes when a client has connected and when one hangs up.
    """

    def __init__(self) -> None:
        self.connected = asyncio.Event()
        self.closed = asyncio.Event()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\n\r\n"
        )
        await writer.drain()
        self.connected.set()
        await reader.read()  # b"" once the client closes its end
        self.closed.set()
        writer.close()
        await writer.wait_closed()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[str]:
        """Serve on a free 127.0.0.1 port; yield the URL to request."""
        server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            yield f"http://127.0.0.1:{port}/slow"


__all__ = [
    "READ_LIMIT",
    "HangingUpstream",
    "close_streams",
    "connect_and_reset",
    "event_types",
    "frame_ids",
    "killed_client",
    "open_raw_stream",
    "open_streams",
    "raw_frames",
    "read_frames",
    "read_raw_stream",
    "read_slowly",
    "reset",
    "server_side_connection",
    "sse_frames",
    "stream_bodies",
]
