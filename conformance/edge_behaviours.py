"""Task behaviours for the edge-case suite: crashes, storage faults, big and odd payloads.

Like every behaviour, each is a module-level function a server process can
import. Those that probe storage catch what a failing storage call raises:
surviving that is what they show.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Mapping
from typing import Any

from .behaviours import wait_for_field
from .contract import TaskContext
from .waiting import POLL_INTERVAL

#: Exceptions :func:`raise_named` can raise, by the ``error_type`` clients must see.
RAISABLE: dict[str, type[BaseException]] = {
    "ValueError": ValueError,
    "MemoryError": MemoryError,
    "TimeoutError": TimeoutError,
    "SystemExit": SystemExit,
    "KeyboardInterrupt": KeyboardInterrupt,
    "CancelledError": asyncio.CancelledError,
}

#: A message a failing task raises with: every character a naive encoder breaks on.
ODD_MESSAGE = "two\nlines\r\nand a NUL \x00, a tab\t, a bell \x07 and a clef \U0001d11e"

#: Event data no encoding may bend: SSE's own syntax, control characters, astral planes.
ODD_DATA: Mapping[str, Any] = {
    "newlines": "one\ntwo\r\nthree\rfour\n\n",
    "sse_syntax": "event: forged\ndata: {}\nid: 999\nretry: 1\n\n",
    "nul": "before\x00after",
    "controls": "".join(chr(code) for code in range(1, 32)) + "\x7f\x85",
    "separators": "line\u2028paragraph\u2029end",
    "astral": "\U0001f600 \U0001d11e \U00010348",
    "bidi": "\u202eright-to-left\u202c",
    "bom": "\ufeffstarts with a byte-order mark",
    "escapes": '\\u0000 \\n \\" not escapes',
    "data: key": "a key that looks like a field",
    "": "an empty key",
    "nested": {"list": [1, 2.5, None, True, "x\ny"], "deep": {"deeper": [[["\x00"]]]}},
}


async def raise_named(ctx: TaskContext) -> None:
    """Send ``start``, then raise ``RAISABLE[fields['raise']](fields['message'])``."""
    await ctx.send_event("start", {})
    raise RAISABLE[ctx.fields["raise"]](ctx.fields.get("message", "raised on purpose"))


async def fail_when_released(ctx: TaskContext) -> None:
    """Count this run in field ``runs``, send ``start``, raise once ``release`` reaches the count.

    Created with ``release=1``, its first run fails at once; a run after a
    retry waits until the case writes ``release=2``, so a client can be
    watching before it ends.
    """
    run = int(ctx.fields.get("runs", 0)) + 1
    await ctx.write_fields(runs=run)
    await ctx.send_event("start", {"run": run})
    await wait_for_field(ctx, lambda fields: int(fields.get("release", 0)) >= run)
    raise ValueError(f"run {run} failed on purpose")


async def raise_odd(ctx: TaskContext) -> None:
    """Raise ValueError with :data:`ODD_MESSAGE`."""
    await ctx.send_event("start", {})
    raise ValueError(ODD_MESSAGE)


async def odd_payload(ctx: TaskContext) -> None:
    """Send one ``odd`` event whose data is :data:`ODD_DATA`."""
    await ctx.send_event("odd", ODD_DATA)


def pattern(size: int, start: int = 0) -> str:
    """``size`` characters, numbered lines from ``start``, that show any byte lost or moved."""
    lines = "".join(f"{n:07d}\n" for n in range(start, start + size // 8 + 1))
    return lines[:size]


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


async def big_events(ctx: TaskContext) -> Mapping[str, Any]:
    """Send ``fields['count']`` (default 1) ``big`` events of ``fields['size']`` characters.

    Each event's body is a different string (nothing shared between them);
    the first is ``pattern(size)``, whose digest the task returns. Making a
    body takes a second or more on a busy machine, so it is made in a thread:
    a task that held the loop that long would stop the implementation from
    renewing its lease, and be taken for lost.
    """
    size = int(ctx.fields["size"])
    count = int(ctx.fields.get("count", 1))
    for index in range(count):
        body = await asyncio.to_thread(pattern, size, index * (size // 8 + 1))
        await ctx.send_event("big", {"index": index, "body": body})
    return {"digest": await asyncio.to_thread(lambda: digest(pattern(size)))}


async def storage_probe(ctx: TaskContext) -> Mapping[str, Any]:
    """Write a field over and over; report each change between failing and working.

    Sends ``storage-error`` (with ``error_type``) when a write starts failing
    and ``storage-ok`` when one succeeds again; the events themselves need no
    storage. Returns once the stored field ``stop`` is true, or, with field
    ``end_on_error``, right after the first failure (so the run ends while
    storage is down).
    """
    await ctx.send_event("start", {})
    failing = False
    writes = 0
    while True:
        try:
            await ctx.write_fields(probe=writes)
            fields = await ctx.read_fields()
        except Exception as exc:  # whatever the implementation raises for a storage fault
            if not failing:
                failing = True
                await ctx.send_event(
                    "storage-error", {"error_type": type(exc).__name__, "message": str(exc)[:300]}
                )
                if ctx.fields.get("end_on_error"):
                    return {"ended": "while storage was down"}
        else:
            writes += 1
            if failing:
                failing = False
                await ctx.send_event("storage-ok", {"writes": writes})
            if fields.get("stop"):
                return {"writes": writes}
        await asyncio.sleep(POLL_INTERVAL * 4)  # the probe's pace, not a synchronisation


async def write_fields(ctx: TaskContext) -> Mapping[str, Any]:
    """Once field ``go`` is true, write ``fields['count']`` fields ``task_<n>``, one at a time."""
    await ctx.send_event("start", {})
    fields = ctx.fields
    while not fields.get("go"):
        await asyncio.sleep(POLL_INTERVAL)  # poll interval: the task waits on its stored state
        fields = await ctx.read_fields()
    count = int(fields["count"])
    for index in range(count):
        await ctx.write_fields(**{f"task_{index}": index})
    return {"written": count}
