"""Tasks whose events are the point: forged, hostile, not JSON, odd, or ten megabytes.

An implementation must refuse what would break the stream (a terminal event a
task sends itself, a type outside SPEC's characters, data that is not strict
JSON) and carry everything else through to every client intact, whatever its
characters or size.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Mapping
from typing import Any

from ..contract import TaskContext

#: Event types outside SPEC's character set (FUNC-19). The first three would
#: each forge a frame if written into SSE as they are: a ``complete`` with an
#: id of 999 that the task never sent.
HOSTILE_EVENT_TYPES = (
    'progress\ndata: {"forged": true}\nid: 999\n\nevent: complete',
    "progress\r\nid: 999",
    "progress\rid: 999",
    "",
    "two words",
    "tab\there",
    "nul\x00",
    "caf\u00e9",
    "x" * 65,
)
#: Types at the edges of the character set, which must be sent as they are.
EDGE_EVENT_TYPES = ("a", "Z-9_z.0", "x" * 64)

#: Event data that is not strict JSON (FUNC-20): RFC 8259 has no NaN or infinity.
NOT_STRICT_JSON: tuple[Mapping[str, Any], ...] = (
    {"value": float("nan")},
    {"value": float("inf")},
    {"value": float("-inf")},
    {"nested": [1, {"deeper": float("nan")}]},
)

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


async def send_terminal(ctx: TaskContext) -> None:
    """Try to send a ``complete`` event itself; report whether it was refused."""
    try:
        await ctx.send_event("complete", {"forged": True})
    except Exception as exc:  # the refusal is the point
        await ctx.send_event("refused", {"error_type": type(exc).__name__, "message": str(exc)})
    else:
        await ctx.send_event("accepted", {})


async def send_hostile_types(ctx: TaskContext) -> None:
    """Try every type in HOSTILE_EVENT_TYPES, then the edge ones; report what went through."""
    accepted = []
    for kind in HOSTILE_EVENT_TYPES:
        try:
            await ctx.send_event(kind, {"forged": True})
        except Exception:  # the refusal is the point
            continue
        accepted.append(kind)
    for kind in EDGE_EVENT_TYPES:
        await ctx.send_event(kind, {"edge": True})
    await ctx.send_event("report", {"accepted": accepted})


async def send_non_json(ctx: TaskContext) -> Mapping[str, Any] | None:
    """Try each of NOT_STRICT_JSON; report how many were sent; return NaN if asked to."""
    accepted = 0
    for data in NOT_STRICT_JSON:
        try:
            await ctx.send_event("bad", data)
        except Exception:  # the refusal is the point
            continue
        accepted += 1
    await ctx.send_event("report", {"accepted": accepted})
    if ctx.fields.get("return_nan"):
        return {"score": float("nan")}
    return None


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
    """The SHA-256 of ``text``: what a case compares a big body by."""
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
