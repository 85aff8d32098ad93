"""The yardstick: a minimal broadcaster on raw ASGI, one queue per client.

It does the least an SSE fan-out can do: ``GET /stream/<key>`` registers a
queue and writes whatever is put in it, one ``send`` per event;
``POST /publish/<key>?count=N&size=S`` puts N encoded events into every queue
of that key, then a terminal one; ``GET /health`` answers. No storage, no ids
kept, no history, no shutdown handling. The benchmark serves it under the
same uvicorn (uvloop, httptools) as the implementation it measures, so the
ratio of the two is the implementation's own cost.

    python -m conformance.bench_baseline --port 8890
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections import defaultdict
from typing import Any
from urllib.parse import parse_qs

import uvicorn

_streams: defaultdict[str, set[asyncio.Queue[bytes | None]]] = defaultdict(set)


def _frame(key: str, number: int, type: str, data: dict[str, Any]) -> bytes:
    payload = json.dumps({**data, "_task_id": key, "_model": "Baseline"})
    return f"event: {type}\ndata: {payload}\nid: {number}\n\n".encode()


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    path = scope["path"]
    if path == "/health":
        await _answer(send, 200, b"OK")
    elif path.startswith("/stream/"):
        await _stream(path.removeprefix("/stream/"), receive, send)
    elif path.startswith("/publish/") and scope["method"] == "POST":
        query = parse_qs(scope["query_string"].decode())
        count = int(query.get("count", ["1"])[0])
        size = int(query.get("size", ["0"])[0])
        asyncio.get_running_loop().create_task(
            _publish(path.removeprefix("/publish/"), count, size)
        )
        await _answer(send, 202, b"publishing")
    else:
        await _answer(send, 404, b"not found")


async def _answer(send: Any, status: int, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status, "headers": []})
    await send({"type": "http.response.body", "body": body})


async def _stream(key: str, receive: Any, send: Any) -> None:
    queue: asyncio.Queue[bytes | None] = asyncio.Queue()
    _streams[key].add(queue)
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/event-stream")],
        }
    )

    async def watch() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        queue.put_nowait(None)

    watcher = asyncio.create_task(watch())
    try:
        while (frame := await queue.get()) is not None:
            await send({"type": "http.response.body", "body": frame, "more_body": True})
            if frame.startswith(b"event: complete"):
                break
        await send({"type": "http.response.body", "body": b""})
    finally:
        _streams[key].discard(queue)
        watcher.cancel()


async def _publish(key: str, count: int, size: int) -> None:
    body = "x" * size
    for number in range(1, count + 1):
        frame = _frame(key, number, "tick", {"index": number - 1, "body": body})
        for queue in tuple(_streams[key]):
            queue.put_nowait(frame)
        await asyncio.sleep(0)  # as the implementation's tasks do after each event
    final = _frame(key, count + 1, "complete", {})
    for queue in tuple(_streams[key]):
        queue.put_nowait(final)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", lifespan="off")


if __name__ == "__main__":
    main()
