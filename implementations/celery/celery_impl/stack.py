"""What the web side and the worker share: the Celery app's settings, the glue's keys in Redis.

Everything lives under one prefix per grading session, so sessions that
share a Redis (pytest-xdist workers, other suites) never see each other:
the broker's and the result backend's keys (Celery's ``global_keyprefix``),
the queue, and the glue's task records.
"""

from __future__ import annotations

from datetime import UTC, datetime

from celery import Celery

#: The one Celery task of the stack: it runs a behaviour (worker.run_behaviour).
TASK_NAME = "celery_impl.run_behaviour"

#: The model name in URLs: one kind for every behaviour, as a team's one task table would.
MODEL = "task"

#: Celery states the glue stores for outcomes Celery has no state of its own for.
CANCELLED, TIMED_OUT, INTERRUPTED = "CANCELLED", "TIMED_OUT", "INTERRUPTED"
#: Celery's custom progress state, as its docs name it ("Custom states").
PROGRESS = "PROGRESS"


def now() -> str:
    return datetime.now(UTC).isoformat()


def make_app(redis_url: str, prefix: str) -> Celery:
    """The Celery app, configured as Celery's Redis docs say, under the session's prefix."""
    app = Celery("celery_impl", broker=redis_url, backend=redis_url)
    app.conf.update(
        # Keys of the broker and of the result backend, under the session's prefix.
        broker_transport_options={"global_keyprefix": f"{prefix}:"},
        result_backend_transport_options={"global_keyprefix": f"{prefix}:"},
        task_default_queue=prefix,
        task_default_exchange=prefix,
        task_default_routing_key=prefix,
        broker_connection_retry_on_startup=True,
        # Cancel goes through the result backend (AbortableTask), never remote control,
        # so the worker needs no pidbox: one less fan-out channel shared by sessions.
        worker_enable_remote_control=False,
        worker_send_task_events=False,
        task_acks_late=False,
        worker_prefetch_multiplier=1,
        worker_hijack_root_logger=False,
        result_extended=False,
    )
    return app


class Keys:
    """The glue's keys: task records and fields, beside Celery's under the same prefix."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.sequence = f"{prefix}:glue:sequence"
        self.ready = f"{prefix}:glue:worker-ready"

    def task(self, task_id: str) -> str:
        return f"{self.prefix}:glue:task:{task_id}"

    def fields(self, task_id: str) -> str:
        return f"{self.prefix}:glue:fields:{task_id}"

    def celery_id(self, task_id: str) -> str:
        """The Celery task id of a task's run: one run per task (no retry declared)."""
        return f"{self.prefix}-{task_id}"


# The task record's transitions, each one atomic in Redis. A record holds:
# status (READY, RUNNING, or CLAIMED by a cancel before any start), stop
# ("" or "cancel" or "interrupt", with reason) set by whoever stops a run,
# and finishing ("1" once the worker has decided the run's own outcome), so
# that a cancel and the run's end never both win (RACE-3).

#: KEYS[1] record; ARGV[1] started_at -> 1 started, 0 not READY, -1 unknown.
START = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return -1 end
if status ~= 'READY' then return 0 end
redis.call('HSET', KEYS[1], 'status', 'RUNNING', 'started_at', ARGV[1])
return 1
"""

#: KEYS[1] record; ARGV[1] stop kind, ARGV[2] reason ->
#: 2 claimed a READY task, 1 stopping a run, 0 nothing to stop, -1 unknown.
STOP = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return -1 end
if status == 'READY' and ARGV[1] == 'cancel' then
  redis.call('HSET', KEYS[1], 'status', 'CLAIMED', 'stop', 'cancel', 'reason', ARGV[2])
  return 2
end
if status ~= 'RUNNING' then return 0 end
if redis.call('HGET', KEYS[1], 'stop') or redis.call('HGET', KEYS[1], 'finishing') then
  return 0
end
redis.call('HSET', KEYS[1], 'stop', ARGV[1], 'reason', ARGV[2])
return 1
"""

#: KEYS[1] record; ARGV[1] the terminal event's id -> {stop, reason}: empty when the
#: run's own outcome stands, else who stopped it first.
FINISH = """
local stop = redis.call('HGET', KEYS[1], 'stop')
if stop then return {stop, redis.call('HGET', KEYS[1], 'reason') or ''} end
redis.call('HSET', KEYS[1], 'finishing', '1', 'terminal_id', ARGV[1])
return {'', ''}
"""
