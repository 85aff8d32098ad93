"""The cases Celery 5.7 with Redis fails under the suite, each with who fails and why.

Measured on full runs (``pytest conformance/suites --impl celery -n 3``).
Every reason names who fails: **library** (Celery, or sse-starlette, the SSE
library the stack serves with), **stack** (what a worker in another process
rules out, whoever writes it), or **suite** (a case that fails whatever the
implementation does: see README.md). None is the glue's. A key is a case ID,
or ``ID:part`` for the tests of it whose node ID contains ``part``.
"""

from __future__ import annotations

_LOST_ABORT = (
    "library: AbortableAsyncResult.abort() stores the state ABORTED in the result backend, "
    "and the task's next update_state (its progress, Celery's documented way) overwrites it, "
    "so is_aborted() never sees it: an abort that reaches a task before its first progress "
    "report, or between two, is lost, and the task runs on (FINDINGS.md, 1)"
)
_ABORT_OVERWRITES = (
    "library: an abort() that lands just after a run stored its final state overwrites that "
    "state with ABORTED (the Redis backend keeps only SUCCESS from being overwritten), so the "
    "run's end is never readable (FINDINGS.md, 2)"
)
_BASE_EXCEPTION = (
    "library: Celery's tracer (app/trace.py) re-raises a BaseException that is not an "
    "Exception (SystemExit, KeyboardInterrupt, asyncio.CancelledError) without storing any "
    "state; in the threads pool it ends in the pool's future, and the task stays in its last "
    "progress state for ever: no error, no FAILURE (FINDINGS.md, 3)"
)
_GROUP = (
    "library: the result backend stores an exception as its type name and args; an "
    "ExceptionGroup's leaves become one repr string, and decode_result rebuilds a plain "
    "Exception, so the error names neither ExceptionGroup nor its children (no `errors`)"
)
_RACE_ABORT = f"{_LOST_ABORT}; or {_ABORT_OVERWRITES}"

EXPECTED_FAILURES: dict[str, str] = {
    # Asyncio patterns.
    "ASYNC-8": _GROUP,
    "ASYNC-9": _GROUP,
    "ASYNC-17": (
        "stack: the task runs in the Celery worker, another process; a message carries its "
        "arguments and headers, never the caller's context variables"
    ),
    "ASYNC-1:swallowing_its_timeouts_cancellation": (
        "glue: its per-run time limit (asyncio.timeout in the worker: Celery's time limits "
        "kill a pool process, not an asyncio task) cancels the run once; a task that "
        "swallows that cancellation runs on and is never recorded TIMED_OUT (the case came "
        "with the soak, issue 27)"
    ),
    "ASYNC-14": (
        "stack, and suite: the asyncio task that runs a task is in the Celery worker, "
        "another process, named 'task:<id> celery run' there; the case looks for it among "
        "the runtime's own asyncio tasks"
    ),
    # Edge cases.
    "EDGE-1:SystemExit": _BASE_EXCEPTION,
    "EDGE-1:KeyboardInterrupt": _BASE_EXCEPTION,
    "EDGE-1:CancelledError": _BASE_EXCEPTION,
    "EDGE-17:stops_reading": (
        "library: sse-starlette's send_timeout (2 s here) did not close the stream of a client "
        "that stopped reading within the case's 7 s; its other clients received every event"
    ),
}

#: Lost in some interleavings, won in others: graded xfail whether they fail or not.
RACY_FAILURES: dict[str, str] = {
    "CANCEL-8": f"{_LOST_ABORT}: the case cancels as soon as the start returns, which races "
    "the task's first progress report",
    "EDGE-17:reading_slowly": (
        "library: sse-starlette's send_timeout bounds each whole send (anyio.move_on_after "
        "around send), not a stall: when the 8 MB event's one send outlasts it while the "
        "client reads slowly but steadily, the stream is cut mid-event (9.4 MB read; in "
        "other runs the send ends in time)"
    ),
    "RACE-3": _RACE_ABORT,
    "RACE-11": f"{_LOST_ABORT} (the shutdown's interrupt is an abort too)",
    "RACE-16": _RACE_ABORT,
    "RACE-19": f"{_LOST_ABORT}: the cancel is lost unless it claims the task before the start",
    "RACE-20": f"{_LOST_ABORT} (the shutdown's interrupt is an abort too)",
    "RACE-21": f"{_LOST_ABORT}: the cancel is lost unless it claims the task before the start",
}
