"""What cases read off events, streams and states, and the checks they share.

Small views (the types, ids or terminal events a client saw) keep an
assertion to one line; the checks that several cases make fail with every
client's trace, so a broken interleaving or a gap can be read off the
message.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from .clients import ClientStream
from .contract import FAREWELL_EVENT, STREAM_RESET_EVENT, Event, TaskState, TaskStatus
from .races import Race

#: The status a run's terminal event stands for.
STATUS_OF = {
    "complete": TaskStatus.SUCCESSFUL,
    "error": TaskStatus.FAILED,
    "cancelled": TaskStatus.CANCELLED,
    "timeout": TaskStatus.TIMED_OUT,
}


# -- views --------------------------------------------------------------------------------


def types(events: Iterable[Event]) -> list[str]:
    """The events' types, in order."""
    return [event.type for event in events]


def ids(events: Iterable[Event]) -> list[int]:
    """The events' ids, in order."""
    return [event.id for event in events]


def terminals(events: Iterable[Event]) -> list[str]:
    """The types of the terminal events among ``events``."""
    return [event.type for event in events if event.is_terminal]


def consecutive(numbers: Sequence[int]) -> bool:
    """Whether each number is one more than the one before."""
    return all(b == a + 1 for a, b in itertools.pairwise(numbers))


def seen_as(events: Sequence[Event]) -> list[tuple[int, str, dict[str, object]]]:
    """What two clients of one task must agree on: each event's id, type and data."""
    return [(event.id, event.type, dict(event.data)) for event in events]


def listed_errors(event: Event) -> list[tuple[str, str]]:
    """The ``(error_type, message)`` pairs an ``error`` event lists for an exception group."""
    return [(e.get("error_type"), e.get("message")) for e in event.data.get("errors", [])]


def ended(state: TaskState) -> datetime:
    """When the run recorded in ``state`` ended."""
    assert state.completed_at, state
    return datetime.fromisoformat(state.completed_at)


def ran_for(state: TaskState) -> float:
    """Seconds from the recorded start to the recorded end of a run."""
    assert state.started_at, state
    return (ended(state) - datetime.fromisoformat(state.started_at)).total_seconds()


def traces(streams: Iterable[ClientStream], limit: int = 8) -> str:
    """The traces of several clients, the first ``limit`` of them, for failure messages."""
    shown = list(streams)
    text = "\n".join(f"client {i} of {s.ref}:\n{s.trace()}" for i, s in enumerate(shown[:limit]))
    if len(shown) > limit:
        text += f"\n(and {len(shown) - limit} more clients)"
    return text


# -- checks -------------------------------------------------------------------------------


def told(event: Event) -> bool:
    """Whether ``event`` carries the human-readable ``message`` SPEC's table asks of it."""
    message = event.data.get("message")
    return isinstance(message, str) and bool(message.strip())


def names_limit(event: Event, seconds: float) -> bool:
    """Whether a ``timeout`` event names the limit of ``seconds`` that stopped the task."""
    limit = event.data.get("timeout")
    return (
        isinstance(limit, int | float)
        and not isinstance(limit, bool)
        and abs(limit - seconds) < 1e-6
    )


def check_resumed(events: Sequence[Event], after: int, trace: str) -> None:
    """Check a resumed stream: ids above ``after``, increasing, each gap announced first."""
    last = after
    announced = False
    for event in events:
        if event.type == STREAM_RESET_EVENT:
            announced = True
            continue
        assert event.id > last, f"id {event.id} repeats or goes back (after {last}).\n{trace}"
        assert event.id == last + 1 or announced, (
            f"ids jump from {last} to {event.id} with no {STREAM_RESET_EVENT!r} before.\n{trace}"
        )
        last, announced = event.id, False


def one_terminal_matching_status(
    race: Race, streams: Sequence[ClientStream], state: TaskState
) -> str:
    """Every client saw exactly one terminal event, last, all the same, matching ``state``."""
    for stream in streams:
        assert len(terminals(stream.seen)) == 1 and stream.seen[-1].is_terminal, (
            f"{race}: each client must receive exactly one terminal event, as its last.\n"
            f"{stream.trace()}"
        )
    kinds = {stream.seen[-1].type for stream in streams}
    assert len(kinds) == 1, f"{race}: every client must get the same terminal event.\n" + traces(
        streams
    )
    (kind,) = kinds
    assert STATUS_OF[kind] is state.status, (
        f"{race}: clients were told {kind!r} but the stored status is {state.status}.\n"
        + traces(streams)
    )
    return kind


async def farewell_then_end(stream: ClientStream) -> Mapping[str, Any]:
    """Read through the farewell (``shutdown``); fail unless the stream then ends; its data."""
    events = await stream.until(FAREWELL_EVENT)
    await stream.expect_end()
    return dict(events[-1].data)


__all__ = [
    "STATUS_OF",
    "check_resumed",
    "consecutive",
    "ended",
    "farewell_then_end",
    "ids",
    "listed_errors",
    "names_limit",
    "one_terminal_matching_status",
    "ran_for",
    "seen_as",
    "terminals",
    "told",
    "traces",
    "types",
]
