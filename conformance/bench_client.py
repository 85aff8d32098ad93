"""The benchmark's clients: a separate process of bare SSE connections.

    python -m conformance.bench_client --url http://127.0.0.1:8888 --path /stream/M/1 \\
        --clients 1000 [--first K]

It opens ``--clients`` connections, prints ``{"ready": N}`` once every one has
its response headers (the server has registered it), then reads each stream
to its end and prints one JSON summary: per client, how many events came, in
order or not, and when (``time.monotonic()``, which is the same clock in
every process on Linux) the first, the last and the terminal event arrived.
With ``--first K`` it instead connects K times, one after another, and
reports how long each waited for its first event.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import re
import time
from typing import Any

_ID = re.compile(rb"\nid: (\d+)\n")
_END = re.compile(rb"event: (complete|cancelled|error|timeout|interrupted|shutdown)\n")


class Stream:
    """What one client saw: the bytes, and when."""

    __slots__ = ("body", "first", "last", "terminal", "terminal_at")

    def __init__(self) -> None:
        self.body = bytearray()
        self.first: float | None = None
        self.last: float | None = None
        self.terminal: str | None = None
        self.terminal_at: float | None = None

    def summary(self) -> dict[str, Any]:
        ids = [int(n) for n in _ID.findall(bytes(self.body))]
        in_order = all(b == a + 1 for a, b in itertools.pairwise(ids))
        return {
            "events": len(ids),
            "in_order": in_order,
            "first": self.first,
            "last": self.last,
            "terminal": self.terminal,
            "terminal_at": self.terminal_at,
        }


async def connect(host: str, port: int, path: str) -> tuple[asyncio.StreamReader, Any]:
    reader, writer = await asyncio.open_connection(host, port, limit=2**20)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
    head = await reader.readuntil(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(head.decode(errors="replace"))
    return reader, writer


async def read(reader: asyncio.StreamReader, writer: Any, stream: Stream) -> None:
    tail = b""
    try:
        while chunk := await reader.read(65536):
            now = time.monotonic()
            if stream.first is None and b"\nid: " in chunk:
                stream.first = now
            if b"\nid: " in chunk:
                stream.last = now
            if stream.terminal is None and (found := _END.search(tail + chunk)):
                stream.terminal, stream.terminal_at = found[1].decode(), now
            stream.body += chunk
            tail = chunk[-64:]
    finally:
        writer.close()


async def fan_out(host: str, port: int, path: str, clients: int) -> None:
    connections = await asyncio.gather(*(connect(host, port, path) for _ in range(clients)))
    print(json.dumps({"ready": clients}), flush=True)
    streams = [Stream() for _ in connections]
    await asyncio.gather(*(read(r, w, s) for (r, w), s in zip(connections, streams, strict=True)))
    print(json.dumps({"streams": [s.summary() for s in streams]}), flush=True)


async def first_events(host: str, port: int, path: str, count: int) -> None:
    waits = []
    for _ in range(count):
        began = time.monotonic()
        reader, writer = await connect(host, port, path)
        while b"\nid: " not in await reader.read(65536):
            pass
        waits.append(time.monotonic() - began)
        writer.close()
    print(json.dumps({"first_event": waits}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--path", required=True)
    parser.add_argument("--clients", type=int, default=1)
    parser.add_argument("--first", type=int, default=0)
    args = parser.parse_args()
    host, port = args.url.removeprefix("http://").split(":")
    try:
        import uvloop

        runner: Any = uvloop.run
    except ImportError:
        runner = asyncio.run
    if args.first:
        runner(first_events(host, int(port), args.path, args.first))
    else:
        runner(fan_out(host, int(port), args.path, args.clients))


if __name__ == "__main__":
    main()
