"""Conformance suite for streaming task coordinators.

An implementation imports :mod:`conformance.contract` and registers a factory
in the ``conformance.implementations`` entry-point group; ``pytest --impl
NAME`` runs the suites in ``conformance/suites`` against it.
"""

from .contract import (
    CONTRACT_VERSION,
    EVENT_TYPE_PATTERN,
    FAREWELL_EVENT,
    MAX_HEADER_BYTES,
    OVERFLOW_EVENT,
    STREAM_RESET_EVENT,
    TERMINAL_EVENTS,
    WAITING_EVENT,
    Behaviour,
    Capability,
    Event,
    Implementation,
    Runtime,
    RuntimeClosed,
    RuntimeStats,
    ServerSpec,
    Subscription,
    TaskContext,
    TaskRef,
    TaskState,
    TaskStatus,
    Timings,
    UnknownTask,
    behaviour_path,
    resolve_behaviour,
)
from .waiting import WaitTimeout, eventually

__all__ = [
    "CONTRACT_VERSION",
    "EVENT_TYPE_PATTERN",
    "FAREWELL_EVENT",
    "MAX_HEADER_BYTES",
    "OVERFLOW_EVENT",
    "STREAM_RESET_EVENT",
    "TERMINAL_EVENTS",
    "WAITING_EVENT",
    "Behaviour",
    "Capability",
    "Event",
    "Implementation",
    "Runtime",
    "RuntimeClosed",
    "RuntimeStats",
    "ServerSpec",
    "Subscription",
    "TaskContext",
    "TaskRef",
    "TaskState",
    "TaskStatus",
    "Timings",
    "UnknownTask",
    "WaitTimeout",
    "behaviour_path",
    "eventually",
    "resolve_behaviour",
]
