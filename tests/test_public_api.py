"""Pin the public namespace: what implementations and cases import from ``conformance``."""

from __future__ import annotations

import types

import pytest

import conformance
from conformance import contract

pytestmark = pytest.mark.timeout(30)

PUBLIC = [
    "Behaviour",
    "Capability",
    "EVENT_TYPE_PATTERN",
    "Event",
    "FAREWELL_EVENT",
    "Implementation",
    "MAX_HEADER_BYTES",
    "OVERFLOW_EVENT",
    "Runtime",
    "RuntimeClosed",
    "RuntimeStats",
    "STREAM_RESET_EVENT",
    "ServerSpec",
    "Subscription",
    "TERMINAL_EVENTS",
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

CONTRACT = sorted([*set(PUBLIC) - {"WaitTimeout", "eventually"}, "ASGIApp", "Limits"])


def test_all_when_listed_then_exactly_the_pinned_names_once_each() -> None:
    assert sorted(conformance.__all__) == PUBLIC
    assert len(set(conformance.__all__)) == len(conformance.__all__)


def test_all_when_star_imported_then_every_name_resolves() -> None:
    namespace: dict[str, object] = {}
    exec("from conformance import *", namespace)
    namespace.pop("__builtins__")
    assert sorted(namespace) == PUBLIC
    for name in PUBLIC:
        assert namespace[name] is getattr(conformance, name)


def test_namespace_when_listed_then_only_submodules_are_outside_all() -> None:
    public = {name for name in dir(conformance) if not name.startswith("_")}
    extra = {
        n for n in public - set(PUBLIC) if not isinstance(getattr(conformance, n), types.ModuleType)
    }
    assert extra == set()


def test_contract_all_when_listed_then_pinned_and_importable() -> None:
    assert sorted(contract.__all__) == CONTRACT
    for name in contract.__all__:
        assert hasattr(contract, name), name
