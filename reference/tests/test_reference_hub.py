"""The hub, method by method: the in-process fan-out every client's events go through.

The suites see the hub through HTTP and the runtime; these tests hold each of
its promises on its own, with no database and no server: the bytes of a
frame, the bounds of a history, the order and numbering of what a subscriber
is given, and what the hub forgets and when.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from typing import Any

import pytest

pytestmark = pytest.mark.timeout(30)

KEY = "T:1"
STAMP = "2026-01-01T00:00:00+00:00"


def _event(number: int, type: str = "tick", model: str = "T", **data: Any) -> Any:
    from streaming.events import Event

    return Event(number, type, data or {"n": number}, 1, model, STAMP)


def _message(number: int, *, final: bool = False, **data: Any) -> Any:
    from streaming.hub import Message

    return Message(_event(number, **data), final=final)


def _ids(messages: list[Any]) -> list[tuple[str, int]]:
    return [(m.event.type, m.event.id) for m in messages]


# -- Message and its frame ------------------------------------------------------------------


def test_message_when_made_then_data_encoded_once_with_its_size_and_not_final() -> None:
    from streaming.hub import Message

    when = datetime(2026, 1, 2, tzinfo=UTC)
    message = Message(_event(1, at=when))
    assert message.json == json.dumps({"at": str(when)})
    assert message.size == len(message.json)
    assert message.final is False
    assert repr(message) == "<Message tick id=1>"
    given = Message(_event(2), final=True, json_data='{"kept": "as given"}')
    assert (given.json, given.size, given.final) == ('{"kept": "as given"}', 20, True)
    assert repr(given) == "<Message tick id=2 final>"


def test_frame_when_built_then_one_data_line_with_metadata_and_the_same_bytes_each_time() -> None:
    from streaming.events import Event
    from streaming.hub import Message

    message = _message(7)
    assert message.sse == (
        b'event: tick\ndata: {"n": 7, "_task_id": 1, "_model": "T", '
        b'"_timestamp": "2026-01-01T00:00:00+00:00"}\nid: 7\n\n'
    )
    assert message.sse is message.sse  # encoded once, shared by every client
    empty = Message(Event(3, "start", {}, "9", "M", STAMP, retry=1500))
    assert empty.sse == (
        b'event: start\ndata: {"_task_id": "9", "_model": "M", '
        b'"_timestamp": "2026-01-01T00:00:00+00:00"}\nid: 3\nretry: 1500\n\n'
    )


def test_frame_when_data_has_metadata_keys_then_the_events_own_metadata_wins() -> None:
    from streaming.events import Event
    from streaming.hub import Message

    when = datetime(2026, 1, 2, tzinfo=UTC)
    event = Event(4, "tick", {"_model": "forged", "at": when}, 1, "T", STAMP)
    lines = Message(event).sse.decode().split("\n")
    assert lines[0] == "event: tick" and lines[2] == "id: 4"
    assert json.loads(lines[1].removeprefix("data: ")) == {
        "_model": "T",
        "at": str(when),
        "_task_id": 1,
        "_timestamp": STAMP,
    }


# -- History ---------------------------------------------------------------------------------


def test_history_when_full_in_count_then_oldest_goes_and_bytes_follow() -> None:
    from streaming.hub import History

    history = History(max_events=2, max_bytes=10_000)
    assert history.latest is None and history.bytes == 0
    sizes = []
    for number in (1, 2, 3):
        message = _message(number, pad="x" * number)
        sizes.append(message.size)
        history.append(message)
    assert [m.event.id for m in history.messages] == [2, 3]
    assert history.bytes == sizes[1] + sizes[2]
    assert history.latest is not None and history.latest.event.id == 3
    history.clear()
    assert (list(history.messages), history.bytes, history.latest) == ([], 0, None)


def test_history_when_over_its_bytes_then_oldest_go_but_the_latest_stays() -> None:
    from streaming.hub import History

    small, big = _message(1, pad="x"), _message(2, pad="x" * 100)
    history = History(max_events=10, max_bytes=small.size + big.size)
    history.append(small)
    history.append(big)
    assert [m.event.id for m in history.messages] == [1, 2]  # exactly at the budget
    history.append(_message(3, pad="y"))
    assert [m.event.id for m in history.messages] == [2, 3]
    huge = _message(4, pad="z" * 1000)
    history.append(huge)
    assert [m.event.id for m in history.messages] == [4]
    assert history.bytes == huge.size


# -- Subscriber --------------------------------------------------------------------------------


def test_subscriber_when_events_queued_then_taken_at_once_in_order_with_last_id() -> None:
    from streaming.hub import Hub

    hub = Hub()
    hub.open(KEY)
    subscriber = hub.subscribe(KEY)
    assert repr(subscriber) == "<Subscriber T:1 queued=0 done=False>"
    for number in (1, 2, 3):
        hub.publish(KEY, _event(number))
    assert repr(subscriber) == "<Subscriber T:1 queued=3 done=False>"
    assert subscriber.last_id is None and subscriber.queued_id == 3
    assert _ids(subscriber.take()) == [("tick", 1), ("tick", 2), ("tick", 3)]
    assert subscriber.last_id == 3
    assert subscriber.take() == []
    assert not subscriber.ended and not subscriber.closed


def test_subscriber_when_ids_jump_then_a_reset_says_which_were_skipped() -> None:
    from streaming.hub import Hub

    hub = Hub()
    hub.open(KEY)
    subscriber = hub.subscribe(KEY)
    hub.publish(KEY, _event(1))
    hub.publish(KEY, _event(5))
    taken = subscriber.take()
    assert _ids(taken) == [("tick", 1), ("stream-reset", 1), ("tick", 5)]
    assert taken[1].event.data == {
        "reason": "events after the requested id are no longer available",
        "last_event_id": 1,
        "oldest_available_id": 5,
    }
    assert (taken[1].event.model, taken[1].event.task_id) == ("T", "1")
    assert subscriber.last_id == 5  # the last real event, not the reset


def test_subscriber_when_older_events_come_after_newer_then_they_are_dropped() -> None:
    # Found by the soak (issue 27): a client resuming on another worker with
    # Last-Event-ID 5 was sent 6 and 7, then that worker's reader of Redis
    # seeded the topic from the stream's start, and the client was sent a
    # stream-reset and events 1, 2, 3 again (MULTI-4). Ids only rise on a stream.
    from streaming.hub import Hub

    hub = Hub()
    hub.open(KEY)
    subscriber = hub.subscribe(KEY, after=5)
    for number in (6, 7, 1, 2, 7, 8):
        hub.publish(KEY, _event(number))
    assert _ids(subscriber.take()) == [("tick", 6), ("tick", 7), ("tick", 8)]


def test_subscriber_when_control_events_come_then_they_leave_the_numbering_alone() -> None:
    from streaming.hub import Hub

    hub = Hub()
    hub.open(KEY)
    subscriber = hub.subscribe(KEY)
    hub.publish(KEY, _event(1))
    subscriber.push(_message(1, type="stream-reset"))
    hub.publish(KEY, _event(2))
    assert _ids(subscriber.take()) == [("tick", 1), ("stream-reset", 1), ("tick", 2)]
    subscriber.push(_message(2, type="stream-reset"))
    assert _ids(subscriber.take()) == [("stream-reset", 2)]
    assert subscriber.last_id == 2


def test_subscriber_when_full_then_overflow_notice_carries_last_id_and_final_still_fits() -> None:
    from streaming.hub import Hub

    hub = Hub(queue_size=2)
    hub.open(KEY)
    subscriber = hub.subscribe(KEY)
    hub.publish(KEY, _event(1))
    assert subscriber.take()[0].event.id == 1
    hub.publish(KEY, _event(2))
    hub.publish(KEY, _event(3))
    hub.publish(KEY, _event(4, type="complete"), final=True)  # full, but the final gets in
    assert _ids(subscriber.take()) == [("tick", 2), ("tick", 3), ("complete", 4)]
    assert subscriber.ended and not subscriber.overflowed
    hub.open("T:2")
    late = hub.subscribe("T:2")
    for number in (1, 2, 3):
        hub.publish("T:2", _event(number))
    [notice] = late.take()
    assert (notice.event.type, notice.event.id, notice.final) == ("overflow", 0, True)
    assert notice.event.data == {
        "reason": "client fell more than 2 events behind",
        "last_event_id": None,
    }
    assert late.overflowed and late.closed and not hub.has_subscribers("T:2")
    hub.publish("T:2", _event(4))
    assert late.take() == []  # nothing more after the notice


def test_subscriber_when_overflowing_after_reading_then_notice_id_is_the_last_read() -> None:
    from streaming.hub import Hub

    hub = Hub(queue_size=1)
    hub.open(KEY)
    subscriber = hub.subscribe(KEY)
    hub.publish(KEY, _event(1))
    subscriber.take()
    hub.publish(KEY, _event(2))
    hub.publish(KEY, _event(3))
    [notice] = subscriber.take()
    assert (notice.event.id, notice.event.data["last_event_id"]) == (1, 1)


def test_backfill_when_stored_events_are_older_than_queued_then_they_go_first_gaps_told() -> None:
    from streaming.hub import Hub

    hub = Hub()
    hub.open(KEY)
    hub.publish(KEY, _event(8))
    subscriber = hub.subscribe(KEY, after=3)  # the hub has 8 only: a reset, then 8
    assert _ids(list(subscriber._queue)) == [("stream-reset", 3), ("tick", 8)]
    stored = [_message(n) for n in (2, 3, 4, 5, 9)]  # 2, 3: not after; 9: not older than 8
    subscriber.backfill(stored, after=3)
    assert _ids(subscriber.take()) == [
        ("tick", 4),
        ("tick", 5),
        ("stream-reset", 5),
        ("tick", 8),
    ]


def test_backfill_when_nothing_queued_then_every_stored_event_after_the_id() -> None:
    from streaming.hub import Hub

    hub = Hub()
    subscriber = hub.subscribe(KEY, after=1)
    subscriber.backfill([_message(n) for n in (1, 2, 3)], after=1)
    assert _ids(subscriber.take()) == [("tick", 2), ("tick", 3)]
    gone = hub.subscribe(KEY, after=1)  # the stored events begin past the id asked for
    gone.backfill([_message(n) for n in (4, 5)], after=1)
    assert _ids(gone.take()) == [("stream-reset", 1), ("tick", 4), ("tick", 5)]


@pytest.mark.asyncio
async def test_subscriber_when_waiting_then_woken_by_a_push_a_wake_or_a_close() -> None:
    from streaming.hub import Hub

    hub = Hub()
    hub.open(KEY)
    subscriber = hub.subscribe(KEY)
    waiting = asyncio.create_task(subscriber.wait())
    await asyncio.sleep(0)  # one turn: it waits
    assert not waiting.done()
    hub.publish(KEY, _event(1))
    await asyncio.wait_for(waiting, 1)
    await asyncio.wait_for(subscriber.wait(), 1)  # something queued: returns at once
    assert (await subscriber.get()).event.id == 1 and subscriber.last_id == 1

    waiting = asyncio.create_task(subscriber.wait())
    await asyncio.sleep(0)
    subscriber.wake()
    await asyncio.wait_for(waiting, 1)
    assert subscriber.take() == []

    getting = asyncio.create_task(subscriber.get())
    await asyncio.sleep(0)
    subscriber.close()
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(getting, 1)
    assert subscriber.ended and subscriber.closed and not hub.has_subscribers(KEY)
    await asyncio.wait_for(subscriber.wait(), 1)  # ended: returns at once


@pytest.mark.asyncio
async def test_subscriber_when_final_read_then_iteration_ends_after_it() -> None:
    from streaming.hub import Hub

    hub = Hub()
    hub.open(KEY)
    subscriber = hub.subscribe(KEY)
    hub.publish(KEY, _event(1))
    hub.publish(KEY, _event(2, type="complete"), final=True)
    assert subscriber.ended and not subscriber.closed  # two still queued
    assert [(m.event.id, m.final) async for m in subscriber] == [(1, False), (2, True)]
    assert subscriber.closed and subscriber.last_id == 2
    subscriber.push(_message(3))
    assert subscriber.take() == []


# -- Hub: topics ----------------------------------------------------------------------------


def test_hub_when_a_resume_is_past_the_ending_it_kept_then_it_waits_for_the_later_run() -> None:
    # Found by the soak (issue 27): a worker that kept a task's first run's
    # ending (id 2) answered a resume after id 68, of the retried run whose
    # worker had just been killed, with a stream that ended at once, empty,
    # again and again, instead of waiting for that run's end.
    from streaming.hub import Hub

    hub = Hub()
    hub.open(KEY)
    hub.publish(KEY, _event(1))
    hub.publish(KEY, _event(2, type="complete"), final=True)
    subscriber = hub.subscribe(KEY, after=68)
    assert not subscriber.ended
    hub.publish(KEY, _event(69, type="interrupted"), final=True)
    assert _ids(subscriber.take()) == [("interrupted", 69)]


def test_hub_when_a_run_publishes_then_topic_lives_until_final_and_ending_is_remembered() -> None:
    from streaming.hub import Hub

    hub = Hub()
    hub.open(KEY)
    assert hub.active_keys() == {KEY} and hub.stats() == {"topics": 1, "subscribers": 0}
    assert repr(hub._topics[KEY]) == "<Topic T:1 subscribers=0 active=True>"
    assert hub.latest_id(KEY) is None and hub.kept_since(KEY) is None
    hub.publish(KEY, _event(1))
    hub.publish(KEY, _event(2))
    assert (hub.latest_id(KEY), hub.kept_since(KEY)) == (2, 1)
    final = hub.publish(KEY, _event(3, type="complete"), final=True)
    assert final.final and hub.active_keys() == set() and hub.stats()["topics"] == 0
    assert hub.latest_id(KEY) is None and hub.kept_since(KEY) == 1
    late = hub.subscribe(KEY)
    assert late.ended and _ids(late.take()) == [("complete", 3)]
    assert hub.stats() == {"topics": 0, "subscribers": 0}
    resumed = hub.subscribe(KEY, after=1)
    assert _ids(resumed.take()) == [("tick", 2), ("complete", 3)]
    hub.open(KEY)  # run again: the old ending is forgotten
    assert hub.kept_since(KEY) is None and hub._closed_bytes == 0


def test_hub_when_publishing_to_a_key_nobody_opened_then_subscribers_get_it() -> None:
    from streaming.hub import Hub

    hub = Hub()
    subscriber = hub.subscribe("T:9")
    hub.publish("T:9", _event(1))
    assert _ids(subscriber.take()) == [("tick", 1)]
    assert hub.watched_elsewhere() == ["T:9"] and hub.active_keys() == set()


def test_hub_when_released_then_history_gone_and_idle_topic_dropped() -> None:
    from streaming.hub import Hub

    hub = Hub()
    hub.open(KEY)
    hub.publish(KEY, _event(1))
    watched = hub.subscribe(KEY)
    hub.open("T:2")
    hub.publish("T:2", _event(1))
    hub.release(KEY)
    hub.release("T:2")
    hub.release("T:3")  # unknown: nothing happens
    assert KEY in hub._topics and "T:2" not in hub._topics
    assert hub.latest_id(KEY) is None and hub.kept_since(KEY) is None
    assert hub.watched_elsewhere() == [KEY] and hub.has_subscribers(KEY)
    watched.close()
    assert hub.stats() == {"topics": 0, "subscribers": 0}
    assert not hub.has_subscribers(KEY) and not hub.has_subscribers("T:4")


def test_say_farewell_when_clients_watch_then_each_told_with_its_last_id_and_counted() -> None:
    from streaming.hub import Hub

    hub = Hub()
    hub.open(KEY)
    hub.publish(KEY, _event(4))
    first, second = hub.subscribe(KEY), hub.subscribe(KEY)
    second.take()
    hub.open("T:2")
    nothing_yet = hub.subscribe("T:2")
    asked: list[tuple[str, int]] = []

    def farewell(key: str, last_id: int) -> Any:
        asked.append((key, last_id))
        return _event(last_id, type="shutdown")

    assert hub.say_farewell(farewell) == 3
    assert sorted(asked) == [(KEY, 4), (KEY, 4), ("T:2", 0)]
    assert _ids(first.take()) == [("tick", 4), ("shutdown", 4)]
    assert _ids(second.take()) == [("shutdown", 4)]
    assert _ids(nothing_yet.take()) == [("shutdown", 0)]
    assert hub.stats() == {"topics": 0, "subscribers": 0} and hub.active_keys() == set()


def test_subscribe_finished_when_the_hub_kept_that_ending_then_its_history_is_used() -> None:
    from streaming.hub import Hub

    hub = Hub()
    hub.open(KEY)
    hub.publish(KEY, _event(1))
    final = _event(2, type="complete")
    hub.publish(KEY, final, final=True)
    resumed = hub.subscribe_finished(KEY, final, after=0)
    assert _ids(resumed.take()) == [("tick", 1), ("complete", 2)]
    other = _event(5, type="cancelled")  # an ending this hub did not see
    told = hub.subscribe_finished(KEY, other, after=0)
    taken = told.take()
    assert _ids(taken) == [("stream-reset", 0), ("cancelled", 5)] and taken[-1].final
    assert hub.kept_since(KEY) == 5


def test_closed_history_when_over_budget_in_tasks_then_oldest_task_forgotten() -> None:
    from streaming.hub import Hub

    hub = Hub(remember_closed=2)
    for pk in (1, 2, 3):
        key = f"T:{pk}"
        hub.open(key)
        hub.publish(key, _event(1, type="complete"), final=True)
    assert list(hub._closed) == ["T:2", "T:3"]
    assert hub._closed_bytes == sum(m.size for ms in hub._closed.values() for m in ms)


def test_closed_history_when_one_ending_exceeds_the_budget_then_only_its_final_is_kept() -> None:
    from streaming.hub import Hub

    final = _message(3, type="complete")
    hub = Hub(closed_history_bytes=final.size)
    hub.open("T:1")
    hub.publish("T:1", _event(1, type="complete"), final=True)
    hub.open(KEY := "T:2")
    hub.publish(KEY, _event(1, pad="x" * 100))
    hub.publish(KEY, _event(2, pad="y" * 100))
    hub.publish(KEY, _event(3, type="complete"), final=True)
    assert list(hub._closed) == [KEY]
    assert _ids(list(hub._closed[KEY])) == [("complete", 3)]
    assert hub._closed_bytes == final.size
