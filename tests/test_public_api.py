"""Pin the public namespace: what implementations and cases import from ``conformance``."""

from __future__ import annotations

import dataclasses
import enum
import inspect
import types
from pathlib import Path

import pytest

import conformance
from conformance import contract

pytestmark = pytest.mark.timeout(30)

PUBLIC = [
    "Behaviour",
    "CONTRACT_VERSION",
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
    "WAITING_EVENT",
    "WaitTimeout",
    "behaviour_path",
    "eventually",
    "resolve_behaviour",
]

CONTRACT = sorted([*set(PUBLIC) - {"WaitTimeout", "eventually"}, "ASGIApp", "Budgets", "Limits"])


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


# -- the contract's signatures ------------------------------------------------------
# Pinned at the contract version they were released with. A change (a method's
# parameters, a field, a default, an enum member) must be named in
# CHANGELOG.md's Unreleased section: that is where a third party looks.
# Re-pin on release (bump CONTRACT_VERSION too): python tests/test_public_api.py

PINNED = Path(__file__).with_name("contract_signatures.txt")
CHANGELOG = Path(__file__).resolve().parents[1] / "CHANGELOG.md"


def signatures() -> dict[str, str]:
    """Each public thing of the contract, by qualified name, to a line that describes it."""
    found: dict[str, str] = {}
    for name in contract.__all__:
        value = getattr(contract, name)
        if isinstance(value, type) and issubclass(value, enum.Enum):
            for member in value:
                found[f"{name}.{member.name}"] = repr(member.value)
        elif dataclasses.is_dataclass(value):
            for item in dataclasses.fields(value):
                default = item.default if item.default is not dataclasses.MISSING else "-"
                found[f"{name}.{item.name}"] = f"{item.type} = {default!r}"
        elif isinstance(value, type):
            annotations = inspect.get_annotations(value)
            for attribute, member in list(vars(value).items()):
                if attribute.startswith("_"):
                    continue
                if isinstance(member, property):
                    found[f"{name}.{attribute}"] = f"property {inspect.signature(member.fget)}"
                elif callable(member) or isinstance(member, classmethod | staticmethod):
                    function = getattr(member, "__func__", member)
                    found[f"{name}.{attribute}"] = str(inspect.signature(function))
                else:
                    annotation = annotations.get(attribute, "")
                    found[f"{name}.{attribute}"] = f"{annotation} = {member!r}"
        elif inspect.isfunction(value):
            found[name] = str(inspect.signature(value))
        elif isinstance(value, frozenset):
            found[name] = repr(sorted(value))
        elif name != "CONTRACT_VERSION":  # its change is the release itself
            found[name] = repr(value)
    return found


def pinned() -> tuple[str, dict[str, str]]:
    version, *lines = PINNED.read_text(encoding="utf-8").splitlines()
    return version.removeprefix("contract "), dict(line.split("\t", 1) for line in lines)


def unannounced(changelog: str, before: dict[str, str], now: dict[str, str]) -> list[str]:
    """Names whose signature changed since the pin, and that the Unreleased section omits."""
    unreleased = changelog.split("## Unreleased", 1)[1].split("\n## ", 1)[0]
    changed = {n for n in before.keys() | now.keys() if before.get(n) != now.get(n)}
    return sorted(name for name in changed if name not in unreleased)


def test_contract_signatures_when_changed_since_the_pin_then_each_change_is_in_the_changelog() -> (
    None
):
    version, before = pinned()
    missing = unannounced(CHANGELOG.read_text(encoding="utf-8"), before, signatures())
    assert not missing, (
        f"Contract signatures changed since {version} and CHANGELOG.md's Unreleased section "
        f"does not name them: {', '.join(missing)}. Name each there (marked **Breaking** if "
        "an implementation must change; conformance/MIGRATING.md then says how)."
    )


def test_unannounced_when_a_signature_changes_then_named_until_the_changelog_says_it() -> None:
    before = {"Runtime.write_fields": "(self, ref, **fields)", "Timings.keepalive": "float"}
    now = {"Runtime.write_fields": "(self, ref, *, fields)", "Timings.keepalive": "float"}
    now["Timings.idle"] = "float = 1.0"
    silent = "## Unreleased\n- nothing\n\n## 2.0\n- Runtime.write_fields\n"
    told = "## Unreleased\n- **Breaking** Runtime.write_fields ...; Timings.idle added\n"
    assert unannounced(silent, before, now) == ["Runtime.write_fields", "Timings.idle"]
    assert unannounced(told, before, now) == []


if __name__ == "__main__":
    lines = [f"{name}\t{line}" for name, line in sorted(signatures().items())]
    PINNED.write_text("\n".join([f"contract {contract.CONTRACT_VERSION}", *lines]) + "\n")
    print(f"pinned {len(lines)} signatures of contract {contract.CONTRACT_VERSION} in {PINNED}")
