"""The reference's own guarantees that no implementation-neutral case can see.

The conformance suites judge behaviour from outside; these tests pin the
reference's internals where its design promises something: the state guard's
wording, the bus's explicit overflow, the SSE bytes, the timeout precedence,
the run columns a task's own save cannot clobber, and the server closing its
ORM connections in the thread that owns them (SHUT-14, retired from the suite).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections.abc import AsyncIterator

import httpx
import pytest
from asgiref.sync import sync_to_async

from conformance.clients import http_client, serve_asgi

# The coordinator reaches the database from the ORM's own thread, so each test
# gets a real transaction (and a flushed database after it), not a wrapped one.
pytestmark = [pytest.mark.timeout(30), pytest.mark.django_db(transaction=True)]


async def drain(subscriber) -> list[str]:
    types = []
    async with asyncio.timeout(10):
        async for message in subscriber:
            types.append(message.event.type)
    return types


# -- states ---------------------------------------------------------------------


def test_transition_when_not_allowed_then_error_names_both_states_and_the_way() -> None:
    from streaming.states import InvalidTransition, TaskStatus, check_transition

    with pytest.raises(InvalidTransition) as caught:
        check_transition(TaskStatus.SUCCESSFUL, TaskStatus.RUNNING)
    assert str(caught.value) == (
        "Cannot move a task from SUCCESSFUL to RUNNING: RUNNING is reached only from "
        "CANCELLED, FAILED, INTERRUPTED, READY, TIMED_OUT."
    )
    check_transition(TaskStatus.READY, TaskStatus.RUNNING)


@pytest.mark.asyncio
async def test_atransition_when_a_caller_asks_for_a_path_the_model_lacks_then_raises_first() -> (
    None
):
    from streaming.models import ExampleTask
    from streaming.states import InvalidTransition, TaskStatus

    row = await ExampleTask.objects.acreate(status=TaskStatus.SUCCESSFUL)
    # The guard in Python: a caller's mistake raises before anything is written.
    with pytest.raises(InvalidTransition, match="from SUCCESSFUL to RUNNING"):
        await ExampleTask.atransition(
            row.pk, TaskStatus.RUNNING, sources=frozenset({TaskStatus.SUCCESSFUL})
        )
    with pytest.raises(InvalidTransition, match=r"^Nothing moves a task to READY"):
        await ExampleTask.atransition(row.pk, TaskStatus.READY)
    # The guard in the database: an allowed path from where the task is not.
    assert not await ExampleTask.atransition(row.pk, TaskStatus.RUNNING)
    assert (await ExampleTask.objects.aget(pk=row.pk)).status == TaskStatus.SUCCESSFUL


def test_status_when_asked_if_finished_then_only_ready_and_running_are_not() -> None:
    from streaming.states import TaskStatus

    assert {status for status in TaskStatus if not status.is_finished} == {
        TaskStatus.READY,
        TaskStatus.RUNNING,
    }


# -- bus --------------------------------------------------------------------------


def _event(number: int, type: str = "tick"):
    from streaming.events import Event

    return Event(number, type, {"n": number}, 1, "BehaviourTask", "2026-01-01T00:00:00+00:00")


@pytest.mark.asyncio
async def test_slow_subscriber_when_queue_overflows_then_told_once_and_dropped_others_intact() -> (
    None
):
    from streaming.hub import Hub

    hub = Hub(queue_size=5)
    hub.open("T:1")
    slow, fast = hub.subscribe("T:1"), hub.subscribe("T:1")
    received = []
    for number in range(1, 9):
        hub.publish("T:1", _event(number))
        received.append((await fast.get()).event.id)
    notice = await slow.get()
    assert (notice.event.type, notice.event.data["last_event_id"]) == ("overflow", None)
    assert slow.overflowed and slow.closed
    assert received == list(range(1, 9))
    assert hub.stats() == {"topics": 1, "subscribers": 1}
    fast.close()


@pytest.mark.asyncio
async def test_resume_when_task_already_finished_then_missed_events_replayed_from_history() -> None:
    from streaming.hub import Hub

    hub = Hub()
    hub.open("T:1")
    for number in range(1, 4):
        hub.publish("T:1", _event(number))
    hub.publish("T:1", _event(4, "complete"), final=True)
    resumed = hub.subscribe("T:1", after=2)
    assert [m.event.id async for m in resumed] == [3, 4]
    assert hub.stats() == {"topics": 0, "subscribers": 0}


def test_message_when_encoded_then_guide_wire_format_and_bytes_shared() -> None:
    from streaming.events import Event
    from streaming.hub import Message

    event = Event(7, "progress", {"step": 1}, 3, "ExampleTask", "2026-01-01T00:00:00+00:00")
    message = Message(event)
    assert message.sse == (
        b'event: progress\ndata: {"step": 1, "_task_id": 3, "_model": "ExampleTask", '
        b'"_timestamp": "2026-01-01T00:00:00+00:00"}\nid: 7\n\n'
    )
    assert message.sse is message.sse


# -- coordinator ------------------------------------------------------------------


@pytest.mark.asyncio
async def test_cancel_when_task_running_then_supervisor_ends_cancelled_not_swallowed(
    coordinator,
) -> None:
    from streaming.models import BehaviourTask

    task = await BehaviourTask.objects.acreate(behaviour="conformance.behaviours:park")
    subscriber = await coordinator.subscribe(BehaviourTask, task.pk)
    await coordinator.start_task(BehaviourTask, task.pk)
    assert (await subscriber.get()).event.type == "start"
    run = coordinator.run_of(f"BehaviourTask:{task.pk}")
    assert await coordinator.cancel_task(BehaviourTask, task.pk, "stop")
    with pytest.raises(asyncio.CancelledError):
        await run.supervisor
    assert run.supervisor.cancelled()
    subscriber.close()


@pytest.mark.parametrize(
    ("setting", "kind", "task", "expected"),
    [
        (0.05, None, None, "TIMED_OUT"),
        (None, 0.05, None, "TIMED_OUT"),
        (30.0, 0.05, None, "TIMED_OUT"),
        (0.05, 0.05, 30.0, "SUCCESSFUL"),
    ],
    ids=["settings-default", "per-kind", "kind-beats-settings", "task-beats-both"],
)
@pytest.mark.asyncio
async def test_timeout_when_set_at_several_levels_then_task_beats_kind_beats_settings(
    monkeypatch: pytest.MonkeyPatch,
    setting: float | None,
    kind: float | None,
    task: float | None,
    expected: str,
) -> None:
    from streaming.coordinator import Coordinator
    from streaming.models import ExampleTask

    monkeypatch.setattr(ExampleTask, "default_timeout", kind)
    coordinator = Coordinator(task_timeout=setting)
    try:
        row = await ExampleTask.objects.acreate(step_delay=0.3, timeout_seconds=task)
        subscriber = await coordinator.subscribe(ExampleTask, row.pk)
        await coordinator.start_task(ExampleTask, row.pk)
        types = await drain(subscriber)
        await row.arefresh_from_db()
        assert (row.status, types[-1]) == (
            expected,
            "timeout" if expected == "TIMED_OUT" else "complete",
        )
    finally:
        await coordinator.shutdown(1.0)


@pytest.mark.asyncio
async def test_task_save_when_run_columns_changed_meanwhile_then_they_are_not_overwritten(
    coordinator,
) -> None:
    from streaming.models import ContinueTask
    from streaming.states import TaskStatus

    row = await ContinueTask.objects.acreate(poll_interval=0.01)
    await coordinator.start_task(ContinueTask, row.pk)
    run = coordinator.run_of(f"ContinueTask:{row.pk}")
    # Another worker records a cancel; then the running instance saves itself.
    await ContinueTask.objects.filter(pk=row.pk).aupdate(status=TaskStatus.CANCELLED)
    run.task.message = "saved by the task"
    await run.task.asave()
    stored = await ContinueTask.objects.aget(pk=row.pk)
    assert (stored.status, stored.message) == (TaskStatus.CANCELLED, "saved by the task")
    await ContinueTask.objects.filter(pk=row.pk).aupdate(continue_field=True)


@pytest.mark.asyncio
async def test_task_save_when_a_stale_copy_is_saved_after_it_ended_then_its_ending_stays(
    coordinator,
) -> None:
    from streaming.models import ExampleTask
    from streaming.states import TaskStatus

    row = await ExampleTask.objects.acreate()
    stale = await ExampleTask.objects.aget(pk=row.pk)  # a shell's copy, say
    assert await coordinator.cancel_task(ExampleTask, row.pk, "not needed")
    stale.message = "edited in a shell"
    await stale.asave()
    stored = await ExampleTask.objects.aget(pk=row.pk)
    assert (stored.status, stored.message) == (TaskStatus.CANCELLED, "edited in a shell")
    assert stored.final_event is not None and "not needed" in stored.error


@pytest.mark.asyncio
async def test_guide_tasks_when_run_then_events_match_the_guide(coordinator) -> None:
    from streaming.models import ContinueTask, ExampleTask

    example = await ExampleTask.objects.acreate(message="Hello, World!", step_delay=0)
    subscriber = await coordinator.subscribe(ExampleTask, example.pk)
    await coordinator.start_task(ExampleTask, example.pk)
    events = [m.event async for m in subscriber]
    assert [e.type for e in events] == ["start", "progress", "progress", "progress", "complete"]
    assert dict(events[0].data) == {"message": "Hello, World!", "total_steps": 3}
    assert dict(events[2].data) == {
        "step": 2,
        "total_steps": 3,
        "message": "Step 2 of 3",
        "data": "Processing step 2...",
    }
    assert dict(events[-1].data) == {"message": "Task completed successfully", "total_steps": 3}

    waiting = await ContinueTask.objects.acreate(
        message="Waiting for signal...", poll_interval=0.01
    )
    subscriber = await coordinator.subscribe(ContinueTask, waiting.pk)
    await coordinator.start_task(ContinueTask, waiting.pk)
    assert dict((await subscriber.get()).event.data) == {
        "message": "Waiting for signal...",
        "continue": False,
    }
    await ContinueTask.objects.filter(pk=waiting.pk).aupdate(continue_field=True)
    rest = [m.event async for m in subscriber]
    assert [(e.type, dict(e.data)) for e in rest] == [
        ("final", {"message": "Continue signal received", "continue": True}),
        ("complete", {"message": "Task completed successfully"}),
    ]


@pytest.mark.asyncio
async def test_fetch_task_when_body_arrives_then_progress_and_complete_with_bytes(
    coordinator,
) -> None:
    from streaming.models import HttpxFetchTask

    async def body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nconnection: close\r\n\r\nhello")
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    server = await asyncio.start_server(body, "127.0.0.1", 0)
    async with server:
        port = server.sockets[0].getsockname()[1]
        task = await HttpxFetchTask.objects.acreate(url=f"http://127.0.0.1:{port}/")
        subscriber = await coordinator.subscribe(HttpxFetchTask, task.pk)
        await coordinator.start_task(HttpxFetchTask, task.pk)
        events = [m.event async for m in subscriber]
    assert [e.type for e in events][:2] == ["fetching", "response"]
    assert events[-1].type == "complete" and events[-1].data["bytes"] == 5, events


# -- server -----------------------------------------------------------------------


@contextlib.asynccontextmanager
async def served(coordinator) -> AsyncIterator[httpx.AsyncClient]:
    from streaming.server import make_app

    async with serve_asgi(make_app(coordinator)) as url:
        async with http_client(url) as http:
            yield http


@pytest.mark.parametrize(
    ("method", "path", "headers", "body"),
    [
        ("GET", "/stream/ExampleTask/{pk}", {"last-event-id": "abc"}, None),
        ("POST", "/tasks/ExampleTask/{pk}/cancel", {}, b"{not json"),
        ("POST", "/tasks/ExampleTask/{pk}/cancel", {}, b'{"reason": 5}'),
    ],
    ids=["bad-last-event-id", "cancel-body-not-json", "cancel-reason-not-text"],
)
@pytest.mark.asyncio
async def test_bad_input_when_sent_then_400_with_reason_and_task_untouched(
    coordinator, method: str, path: str, headers: dict[str, str], body: bytes | None
) -> None:
    from streaming.models import ExampleTask

    row = await ExampleTask.objects.acreate()
    async with served(coordinator) as http:
        response = await http.request(method, path.format(pk=row.pk), headers=headers, content=body)
    assert response.status_code == 400 and response.text.strip(), response.text
    assert (await ExampleTask.objects.aget(pk=row.pk)).status == "READY"


@pytest.mark.asyncio
async def test_signal_when_it_interrupts_an_orm_call_then_the_drain_still_reaches_the_orm(
    coordinator,
) -> None:
    """A signal handler runs in whatever context it interrupted.

    asgiref marks the context of a coroutine awaiting an ORM call and refuses
    a second call from that context ("would deadlock"); a drain started with a
    copy of it could not close the database connections.
    """
    import signal

    import uvicorn
    from asgiref.sync import SyncToAsync

    from streaming.server import StreamServer, make_app

    server = StreamServer(uvicorn.Config(make_app(coordinator)), coordinator, grace=0.1)
    server._loop = asyncio.get_running_loop()

    def interrupted_orm_call() -> None:
        SyncToAsync.deadlock_context.set(True)
        server.handle_exit(signal.SIGTERM, None)

    contextvars.copy_context().run(interrupted_orm_call)
    # The handler scheduled the drain's start before this task's next step.
    await asyncio.sleep(0)
    assert server._drain is not None
    async with asyncio.timeout(10):
        await server._drain
    assert server.should_exit


@pytest.mark.asyncio
async def test_drain_when_finished_then_orm_connections_are_closed_in_their_thread(
    coordinator,
) -> None:
    import uvicorn
    from django.db import connections

    from streaming.models import ExampleTask
    from streaming.server import StreamServer, make_app

    def connected() -> bool:
        return connections["default"].connection is not None

    await ExampleTask.objects.acount()
    assert await sync_to_async(connected)()
    server = StreamServer(uvicorn.Config(make_app(coordinator)), coordinator, grace=0.1)
    await server._drain_then_exit()
    assert server.should_exit
    assert not await sync_to_async(connected)()


def test_exit_when_forced_by_a_second_signal_then_leftover_tasks_get_a_moment_not_a_grace() -> None:
    from streaming.server import FORCED_LEFTOVERS, leftover_seconds

    assert leftover_seconds(forced=False, cancel_grace=5.0) == 5.0
    assert leftover_seconds(forced=True, cancel_grace=5.0) == FORCED_LEFTOVERS == 0.5
    assert leftover_seconds(forced=True, cancel_grace=0.2) == 0.2
