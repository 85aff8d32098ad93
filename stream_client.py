#!/usr/bin/env python
"""Watch one task's event stream and print each event as it arrives.

    python stream_client.py ExampleTask 1 [--server http://127.0.0.1:8888]

Exits 0 when the stream ends with an event, 1 when the server cannot be
reached or does not know the task. Needs only httpx.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from typing import Any

import httpx

RULE = "=" * 60


async def parse_sse(lines: AsyncIterator[str]) -> AsyncIterator[tuple[str, dict[str, Any]]]:
    """Yield (event type, JSON data) for each event in a stream of SSE lines."""
    event_type, data_lines = "message", []
    async for line in lines:
        if not line:
            if data_lines:
                yield event_type, json.loads("\n".join(data_lines))
            event_type, data_lines = "message", []
        elif line.startswith(":"):
            continue  # a comment: keepalive
        else:
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "event":
                event_type = value
            elif name == "data":
                data_lines.append(value)


def shown(text: object) -> str:
    """``text`` with control characters escaped (``\\x1b``, ``\\n``).

    What a server sends must not drive the terminal: an escape sequence in an
    event could clear the screen, retitle the window or hide what came before.
    """
    return "".join(
        char if char.isprintable() else char.encode("unicode_escape").decode("ascii")
        for char in str(text)
    )


def print_event(number: int, event_type: str, data: dict[str, Any]) -> None:
    print(f"[{number}] Event: {shown(event_type.upper())}")
    print(f"    Timestamp: {shown(data.get('_timestamp', ''))}")
    for key, value in data.items():
        if not key.startswith("_"):
            print(f"    {shown(key)}: {shown(value)}")
    print(flush=True)


async def watch(url: str) -> int:
    print(RULE)
    print(f"Connecting to: {url}")
    print(RULE)
    print(flush=True)
    received, last_type = 0, None
    try:
        async with httpx.AsyncClient(timeout=httpx.Timeout(10, read=None)) as http:
            async with http.stream("GET", url) as response:
                if response.status_code != 200:
                    await response.aread()
                    print(
                        f"Server answered {response.status_code}: {shown(response.text)}",
                        file=sys.stderr,
                    )
                    return 1
                async for event_type, data in parse_sse(response.aiter_lines()):
                    received += 1
                    last_type = event_type
                    print_event(received, event_type, data)
    except httpx.HTTPError as exc:
        print(f"Could not stream from {url}: {_reason(exc)}", file=sys.stderr)
        return 1
    except asyncio.CancelledError:
        # Ctrl+C: asyncio.run cancels this task, so the interrupt arrives at an
        # await, never halfway through the HTTP client's bookkeeping (a
        # KeyboardInterrupt at an arbitrary bytecode could leave a lock held
        # and hang the exit).
        print("\nDisconnected.", flush=True)
        return 0
    print(RULE)
    print(f"Stream ended with: {(last_type or 'nothing').upper()}")
    print(f"Total events received: {received}")
    print(RULE)
    return 0


def _reason(exc: BaseException) -> str:
    """The most specific cause: the OS's own words (say, "Connection refused") if any."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, OSError) and cause.errno:
            return os.strerror(cause.errno)
        cause = cause.__cause__ or cause.__context__
    return str(exc)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="Task model, for example ExampleTask")
    parser.add_argument("task_id", type=int, help="Task id")
    parser.add_argument(
        "--server",
        default="http://127.0.0.1:8888",
        help="Base URL of the streaming server (default: %(default)s).",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return asyncio.run(watch(f"{args.server.rstrip('/')}/stream/{args.model}/{args.task_id}"))


if __name__ == "__main__":
    sys.exit(main())
