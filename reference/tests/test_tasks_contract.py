"""``StreamingBackend`` against Django's documented contract for a task backend.

In this process: the backend writes rows, a coordinator here runs them
(``Pickup.once``, what a server does every half second), and the results
are read back as Django's ``TaskResult``. The ``@task`` functions below are
the test's own; the refusals are Django's (``InvalidTask``) where Django
refuses, with Django's words.
"""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from conformance.waiting import eventually
from streaming.tasks import send_event, send_event_sync
from streaming.tasks.compat import (
    InvalidTask,
    TaskResultDoesNotExist,
    TaskResultStatus,
    task_backends,
)
from streaming.tasks.compat import task_decorator as task

pytestmark = [
    pytest.mark.timeout(30),
    pytest.mark.asyncio,
    pytest.mark.django_db(transaction=True),
]


@task(takes_context=True)
async def whoami(context: Any, tag: str) -> dict[str, Any]:
    await send_event(context, "progress", {"tag": tag})
    result = context.task_result
    return {"id": result.id, "attempt": context.attempt, "tag": tag, "status": result.status}


@task(takes_context=True)
def sync_thread(context: Any) -> list[Any]:
    send_event_sync(context, "progress", {"thread": threading.current_thread().name})
    time.sleep(0.3)  # the loop must go on meanwhile
    return [threading.current_thread() is threading.main_thread(), context.task_result.id]


@task
async def plain(a: int, b: int = 0) -> int:
    return a + b


@task(priority=10)
async def first() -> str:
    return "first"


@task
async def oops() -> None:
    raise KeyError("missing")


async def finished(result_id: str) -> Any:
    backend = task_backends["default"]

    async def done() -> Any:
        result = await backend.aget_result(result_id)
        return result if result.is_finished else None

    return await eventually(done, timeout=10, what=f"task result {result_id} finished")


@pytest.fixture
def pickup(coordinator: Any) -> Any:
    from streaming.tasks.pickup import Pickup

    return Pickup(coordinator, {"default"})


async def test_enqueue_when_valid_then_ready_result_with_id_args_and_enqueued_at() -> None:
    result = await plain.aenqueue(1, b=2)
    assert result.status == TaskResultStatus.READY and not result.is_finished
    assert result.id.isdigit() and result.args == [1] and result.kwargs == {"b": 2}
    assert result.enqueued_at is not None and result.started_at is None
    assert result.backend == "default" and result.task.func is plain.func
    again = await plain.aget_result(result.id)
    assert (again.id, again.status, again.args) == (result.id, TaskResultStatus.READY, [1])
    with pytest.raises(ValueError, match="Task has not finished yet"):
        again.return_value  # noqa: B018 - Django's property raises


async def test_async_task_with_context_when_run_then_successful_with_return_value_and_times(
    pickup: Any, coordinator: Any
) -> None:
    result = await whoami.aenqueue("x")
    subscriber = await coordinator.subscribe("tasks", int(result.id))
    assert await pickup.once() == 1
    done = await finished(result.id)
    assert done.status == TaskResultStatus.SUCCESSFUL
    assert done.return_value == {"id": result.id, "attempt": 1, "tag": "x", "status": "RUNNING"}
    assert done.started_at <= done.finished_at and done.last_attempted_at == done.started_at
    assert done.worker_ids == [coordinator.owner] and done.errors == []
    progress = (await subscriber.get()).event
    assert (progress.type, dict(progress.data), progress.model) == (
        "progress",
        {"tag": "x"},
        "tasks",
    )
    subscriber.close()


async def test_sync_task_when_run_then_in_a_thread_while_the_loop_goes_on(pickup: Any) -> None:
    result = await sync_thread.aenqueue()
    await pickup.once()
    # Ticks of this loop while the task sleeps in its thread: the pauses pace
    # the count, and the wait for the result has a deadline of its own.
    ticks = 0
    async with asyncio.timeout(10):
        while not (await sync_thread.aget_result(result.id)).is_finished:
            await asyncio.sleep(0.01)
            ticks += 1
    done = await sync_thread.aget_result(result.id)
    assert done.status == TaskResultStatus.SUCCESSFUL, done.errors
    assert done.return_value == [False, result.id]
    assert ticks >= 10, "the event loop stood still while the sync task slept"


async def test_failing_task_when_run_then_failed_with_class_path_and_traceback(
    pickup: Any,
) -> None:
    result = await oops.aenqueue()
    await pickup.once()
    done = await finished(result.id)
    assert done.status == TaskResultStatus.FAILED
    [error] = done.errors
    assert error.exception_class is KeyError
    assert 'raise KeyError("missing")' in error.traceback
    with pytest.raises(ValueError, match="Task failed"):
        done.return_value  # noqa: B018 - Django's property raises


async def test_pickup_when_several_are_due_then_higher_priority_first_and_deferred_later(
    pickup: Any,
) -> None:
    later = await plain.using(run_after=timezone.now() + timedelta(hours=1)).aenqueue(0)
    low = await plain.aenqueue(1)
    high = await first.aenqueue()
    assert await pickup.once() == 2
    low_done, high_done = await finished(low.id), await finished(high.id)
    assert high_done.started_at < low_done.started_at
    assert (await plain.aget_result(later.id)).status == TaskResultStatus.READY


async def test_get_result_when_no_such_result_then_task_result_does_not_exist() -> None:
    backend = task_backends["default"]
    for result_id in ("999999", "nope", "-1", "1" * 40):
        with pytest.raises(TaskResultDoesNotExist):
            await backend.aget_result(result_id)


async def test_cancel_when_ready_then_failed_with_cancelled_error_and_ending_cancelled() -> None:
    from streaming.tasks import acancel, aending

    result = await plain.aenqueue(1)
    assert await acancel(result.id, "not needed") is True
    assert await acancel(result.id) is False
    done = await plain.aget_result(result.id)
    assert done.status == TaskResultStatus.FAILED
    assert done.errors[-1].exception_class is asyncio.CancelledError
    assert "not needed" in done.errors[-1].traceback
    assert await aending(result.id) == "CANCELLED"
    with pytest.raises(TaskResultDoesNotExist):
        await acancel("12345678")


async def test_task_when_not_what_the_backend_runs_then_invalid_task_as_django_says() -> None:
    def local() -> None:
        pass

    with pytest.raises(InvalidTask, match="module level"):
        task(local)
    with pytest.raises(InvalidTask, match="first argument of 'context'"):
        task(takes_context=True)(plain.func)
    with pytest.raises(InvalidTask, match="Queue 'elsewhere' is not valid"):
        plain.using(queue_name="elsewhere")
    with pytest.raises(InvalidTask, match="priority must be a whole number"):
        plain.using(priority=101)
    with pytest.raises(InvalidTask, match="aware datetime"):
        plain.using(run_after=timezone.now().replace(tzinfo=None))


async def test_enqueue_when_arguments_are_not_json_then_type_error_naming_them() -> None:
    with pytest.raises(TypeError, match=r"The arguments of .*plain must be JSON"):
        await plain.aenqueue(object())


async def test_send_event_when_the_task_is_not_running_here_then_it_says_so() -> None:
    from streaming.tasks.compat import TaskContext

    result = await plain.aenqueue(1)
    with pytest.raises(RuntimeError, match=f"task result {result.id}: it is not running"):
        await send_event(TaskContext(task_result=result), "progress", {})
    with pytest.raises(TypeError, match="pass the TaskContext"):
        send_event_sync(result, "progress", {})


async def test_compat_when_django_has_its_own_tasks_then_it_is_used_not_the_backport() -> None:
    import django

    from streaming.tasks import StreamingBackend
    from streaming.tasks.compat import SOURCE, BaseTaskBackend

    assert SOURCE == ("django.tasks" if django.VERSION >= (6, 0) else "django_tasks")
    assert BaseTaskBackend.__module__.startswith(SOURCE)
    assert isinstance(task_backends["default"], StreamingBackend)
    assert type(plain).__module__.startswith(SOURCE)
