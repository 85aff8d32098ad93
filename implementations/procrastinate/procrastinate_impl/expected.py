"""The cases procrastinate 3.10.0 fails under the suite, each with who fails and why.

Measured on full runs (``pytest conformance/suites --impl procrastinate``).
Every reason names who fails: **library** (procrastinate), **uvicorn** (the
server the glue's HTTP interface runs on), or **suite**
(a case that presumes runs live in the runtime's own process: see
README.md). None is the glue's. A key is a case ID, or ``ID:part`` for the
tests of it whose node ID contains ``part``.
"""

from __future__ import annotations

_WORKER = (
    "procrastinate's worker is a process of its own (its Django docs run it as "
    "`./manage.py procrastinate worker`), and a job carries only its JSON arguments"
)

EXPECTED_FAILURES: dict[str, str] = {
    "ASYNC-14": (
        "library: procrastinate names the asyncio task of a job 'process job <task name>[<job "
        "id>]' (Worker._fetch_and_process_jobs), naming neither the suite's task nor its model; "
        f"and suite: the case looks for that name among the runtime's own asyncio tasks, but "
        f"{_WORKER}"
    ),
    "ASYNC-17": (
        f"library: {_WORKER}, so a context variable set by the caller of start_task cannot "
        "reach the job: nothing carries it across"
    ),
    "EDGE-24": (
        "uvicorn: it times nothing before a connection's first request head is complete "
        "(--timeout-keep-alive starts only after a response), so a connection that never "
        "finishes its head stays open; the ASGI app never sees it"
    ),
    "CANCEL-9": (
        "library: procrastinate aborts an async job by cancelling its asyncio task once "
        "(Worker._abort_job); a job that swallows that CancelledError runs on, 'doing' with "
        "abort_requested, until its worker stops: never cancelled again, never recorded "
        "(FINDINGS.md, 1)"
    ),
    "ASYNC-1:swallowing_its_timeouts_cancellation": (
        "glue: its per-run time limit (asyncio.timeout: procrastinate has none) cancels the "
        "job once; a task that swallows that cancellation runs on and is never recorded "
        "TIMED_OUT"
    ),
    "EDGE-4:resuming_in_an_earlier_run": (
        "glue: a stream resumed from a run that ended goes on with the next run's events "
        "after that run's terminal event (the glue's SSE view and bus, not procrastinate)"
    ),
}

#: Lost in some interleavings, won in others: graded xfail whether they fail or not.
RACY_FAILURES: dict[str, str] = {}
