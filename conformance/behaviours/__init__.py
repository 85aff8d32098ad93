"""Task behaviours the suites supply: module-level, so any process can import them.

Each takes a :class:`~conformance.contract.TaskContext` and reads its
parameters from the task's fields. Behaviours that must wait for the case
(a step, a release) wait on their fields, which the case changes with
``Runtime.write_fields``: the case drives the task, never a clock. What a
case must see from inside a task, a behaviour reports through events or
stored fields.

The modules hold them by what they do: :mod:`.events` send events and end,
:mod:`.failures` raise, :mod:`.cancellation` wait until stopped,
:mod:`.timeouts` have a clock in them, :mod:`.payloads` send what is hard to
carry, :mod:`.fields` are about their stored fields.
"""

from __future__ import annotations

import inspect

from .cancellation import (
    block_then_end,
    children,
    cleanup_on_stop,
    cleanup_probe,
    cleanup_raises,
    cleanup_writes_on_cancel,
    fetch,
    park,
    park_forever,
    report_cancelling,
    shielded_work,
    slow_cleanup,
    swallow_always,
    swallow_once,
)
from .events import (
    burst,
    concurrent_senders,
    reached,
    stepper,
    steps,
    tagged_burst,
    through_step,
    ticker,
    trickle,
    wait_for_flag,
    yielding_burst,
)
from .failures import (
    RAISABLE,
    fail,
    fail_when_released,
    group_many_fail,
    group_one_fails,
    handle_with_except_star,
    raise_named,
)
from .fields import (
    CALLER_VALUE,
    RUN_MARKER,
    count_runs,
    field_writer,
    report_context,
    report_task_name,
    run_markers,
    storage_probe,
    wait_for_field,
    write_fields,
)
from .payloads import (
    EDGE_EVENT_TYPES,
    HOSTILE_EVENT_TYPES,
    NOT_STRICT_JSON,
    ODD_DATA,
    ODD_MESSAGE,
    big_events,
    digest,
    odd_payload,
    pattern,
    raise_odd,
    send_hostile_types,
    send_non_json,
    send_terminal,
)
from .timeouts import (
    inside_long_timeout,
    own_timeout_caught,
    own_timeout_expires,
    work_for,
    work_then_mark,
)

__all__ = [
    "CALLER_VALUE",
    "EDGE_EVENT_TYPES",
    "HOSTILE_EVENT_TYPES",
    "NOT_STRICT_JSON",
    "ODD_DATA",
    "ODD_MESSAGE",
    "RAISABLE",
    "RUN_MARKER",
    "big_events",
    "block_then_end",
    "burst",
    "children",
    "cleanup_on_stop",
    "cleanup_probe",
    "cleanup_raises",
    "cleanup_writes_on_cancel",
    "concurrent_senders",
    "count_runs",
    "digest",
    "fail",
    "fail_when_released",
    "fetch",
    "field_writer",
    "group_many_fail",
    "group_one_fails",
    "handle_with_except_star",
    "inside_long_timeout",
    "odd_payload",
    "own_timeout_caught",
    "own_timeout_expires",
    "park",
    "park_forever",
    "pattern",
    "raise_named",
    "raise_odd",
    "reached",
    "report_cancelling",
    "report_context",
    "report_task_name",
    "run_markers",
    "send_hostile_types",
    "send_non_json",
    "send_terminal",
    "shielded_work",
    "slow_cleanup",
    "stepper",
    "steps",
    "storage_probe",
    "swallow_always",
    "swallow_once",
    "tagged_burst",
    "through_step",
    "ticker",
    "trickle",
    "wait_for_field",
    "wait_for_flag",
    "work_for",
    "work_then_mark",
    "write_fields",
    "yielding_burst",
]

# A behaviour's import path is stored with its task and imported by other
# processes (contract.behaviour_path): each is named by this package, so a
# path such as "conformance.behaviours:park" stays valid whichever of its
# modules holds the function.
for _name in __all__:
    if inspect.isfunction(globals()[_name]):
        globals()[_name].__module__ = __name__
del _name
