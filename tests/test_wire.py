"""The suite's reading of raw SSE bodies: chunked encoding, and bodies cut where a read stopped.

A case that reads a stream on a bare socket stops reading when it has what
it wants, wherever the TCP reads put that point: in the middle of a chunk,
right after one, or after a frame's last line but before its blank line. The
frames read must not depend on where that is.
"""

from __future__ import annotations

import asyncio
import json

import pytest

from conformance.contract import TaskRef
from conformance.wire import connect_and_reset, raw_frames, read_raw_stream

pytestmark = pytest.mark.timeout(10)

FRAMES = [
    b'event: start\r\ndata: {"n": 1}\r\nid: 1\r\n\r\n',
    b'event: big\r\ndata: {"body": "' + b"x" * 300 + b'"}\r\nid: 2\r\n\r\n',
    b'event: complete\r\ndata: {"n": 3}\r\nid: 3\r\n',
]


def chunked(*pieces: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for piece in pieces)


def events(body: bytes, *, cut: bool) -> list[tuple[str, dict[str, object]]]:
    return [(f["event"], json.loads(f["data"])) for f in raw_frames(body, cut=cut)]


EXPECTED = [("start", {"n": 1}), ("big", {"body": "x" * 300}), ("complete", {"n": 3})]


def test_body_cut_right_after_a_chunk_then_frames_read_whole() -> None:
    # The read stopped just after the chunk that ends with `event: complete`'s
    # frame; the big event came in two chunks, as a server may write it.
    body = chunked(FRAMES[0], FRAMES[1][:100], FRAMES[1][100:], FRAMES[2])
    assert events(body, cut=True) == EXPECTED


def test_body_cut_inside_a_chunk_then_what_arrived_is_read() -> None:
    body = chunked(FRAMES[0] + FRAMES[1], FRAMES[2] + b"\r\nevent: next\r\ndata: {")
    assert events(body[: len(body) - 10], cut=True)[:3] == EXPECTED


def test_body_cut_inside_a_chunk_size_line_then_what_came_before_is_read() -> None:
    body = chunked(*FRAMES) + b"1"
    assert events(body, cut=True) == EXPECTED


def test_body_not_chunked_then_read_as_it_is() -> None:
    assert events(b"".join(FRAMES), cut=True) == EXPECTED


def test_frame_without_its_blank_line_then_dropped_unless_the_body_was_cut() -> None:
    assert events(chunked(*FRAMES), cut=False) == EXPECTED[:2]


def test_chunked_body_broken_after_its_first_chunk_then_fails_loudly() -> None:
    body = chunked(FRAMES[0]) + b"zz\r\n" + FRAMES[1]
    with pytest.raises(AssertionError, match="chunked encoding"):
        raw_frames(body)


# -- a bare client of a stream that stays open after its terminal event ------------------


async def read_from_server_left_open(head: bytes, writes: list[bytes]) -> bytes:
    """What read_raw_stream returns from a server that answers with ``head`` and ``writes``.

    The server leaves the connection open after its last write.
    """
    held: list[asyncio.StreamWriter] = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(head)
        for data in writes:
            writer.write(data)
            await writer.drain()
        held.append(writer)  # open until the client leaves

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        try:
            return await asyncio.wait_for(
                read_raw_stream(f"http://127.0.0.1:{port}", TaskRef("Task", "1")), 5
            )
        finally:
            for writer in held:
                writer.close()


CHUNKED_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
)


@pytest.mark.asyncio
@pytest.mark.parametrize("split", [1, 7, 4096], ids=["bytewise", "odd-pieces", "whole"])
async def test_stream_left_open_after_its_terminal_event_then_read_through_it(split: int) -> None:
    # The frames in chunks written in pieces of `split` bytes: the terminal
    # frame's end may fall anywhere, even inside a chunk's CRLF. A type that
    # only begins like a terminal one ends nothing.
    lookalike = b'event: completed\r\ndata: {"n": 2}\r\nid: 2\r\n\r\n'
    body = chunked(FRAMES[0], lookalike, FRAMES[1][:100], FRAMES[1][100:], FRAMES[2] + b"\r\n")
    writes = [body[n : n + split] for n in range(0, len(body), split)]
    received = await read_from_server_left_open(CHUNKED_HEAD, writes)
    assert events(received, cut=False) == [EXPECTED[0], ("completed", {"n": 2}), *EXPECTED[1:]]


# -- any framing WHATWG's parser reads: CRLF, LF or CR, fields in any order -----------------

CRLF_FRAMES = [
    b'id: 1\r\nevent: start\r\ndata: {"n": 1}\r\n\r\n',
    b'id:2\revent:big\rdata:{"body": "' + b"x" * 300 + b'"}\r\r',
    b'id: 3\nevent:complete\ndata: {"n": 3}\n\n',
]


def test_frames_when_lines_end_in_crlf_cr_or_lf_and_fields_come_in_any_order_then_read() -> None:
    assert events(chunked(*CRLF_FRAMES), cut=False) == EXPECTED
    assert [f["id"] for f in raw_frames(chunked(*CRLF_FRAMES))] == ["1", "2", "3"]


@pytest.mark.asyncio
async def test_stream_framed_with_crlf_then_read_through_its_terminal_event() -> None:
    writes = [chunked(CRLF_FRAMES[0]), chunked(CRLF_FRAMES[1]), chunked(CRLF_FRAMES[2])]
    received = await read_from_server_left_open(CHUNKED_HEAD, writes)
    assert events(received, cut=False) == EXPECTED


@pytest.mark.asyncio
async def test_reset_after_frames_when_framed_with_crlf_then_frames_counted() -> None:
    # Chunked framing's own CRLFs must not count as frames' blank lines.
    frames = [CRLF_FRAMES[0], CRLF_FRAMES[0].replace(b"start", b"more")]
    held: list[asyncio.StreamWriter] = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(CHUNKED_HEAD + chunked(frames[0]))
        await writer.drain()
        held.append(writer)
        # The second frame only once the client could have mistaken the first
        # chunk's CRLFs for two frames, had it counted them.
        writer.write(chunked(frames[1]))

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        try:
            read = await connect_and_reset(f"http://127.0.0.1:{port}", TaskRef("Task", "1"), 2)
        finally:
            for writer in held:
                writer.close()
    assert read == 2
