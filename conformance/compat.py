"""Shims that let an implementation written against the previous major contract be graded.

``MIGRATING.md`` lists what changed between versions. For the previous
major version (1.x), the old names keep working here, each forwarding to
its new one, and the plugin says so once, in the session's header:

- A :class:`~conformance.contract.Runtime` subclass that defines
  ``update_fields`` and no ``write_fields`` gets a ``write_fields`` that
  calls it (``Runtime.__init_subclass__`` asks :func:`shim_runtime_class`).
- The context a 1.x implementation gives a behaviour has ``refresh`` and
  ``update_fields``; the suite's behaviours call ``read_fields`` and
  ``write_fields``. :class:`LegacyRuntime` hands the implementation, in place
  of each behaviour, an *adapter*: a module-level function of this module
  that gives the behaviour a context with both names. Adapters are named by
  import path like any behaviour (``conformance.compat:v1_...``), so a server
  process imports them too.
"""

from __future__ import annotations

import re
import sys
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .contract import Behaviour, Implementation, Runtime, TaskContext, TaskRef

#: The major version whose names the shims forward.
LEGACY_MAJOR = 1
#: Old name -> new name, for what the shims saw an implementation use.
RENAMED = {
    "Runtime.update_fields": "Runtime.write_fields",
    "TaskContext.refresh": "TaskContext.read_fields",
    "TaskContext.update_fields": "TaskContext.write_fields",
}
#: Old names some class of this process used (the plugin reports them).
USED: set[str] = set()
#: The Runtime classes that got write_fields from update_fields.
SHIMMED: weakref.WeakSet[type] = weakref.WeakSet()
#: What changed between versions, with code before and after; it ships with the suite.
MIGRATION_NOTES = Path(__file__).with_name("MIGRATING.md")

_PREFIX = "v1_"


def shim_runtime_class(cls: type) -> None:
    """Give a 1.x ``Runtime`` subclass (``update_fields``, no ``write_fields``) the new name.

    Only while ``write_fields`` is still the contract's abstract one: a 2.x
    class that happens to have a helper named ``update_fields`` is left alone.
    """
    defines = vars(cls)
    inherited = getattr(cls, "write_fields", None)
    if "update_fields" not in defines or not getattr(inherited, "__isabstractmethod__", False):
        return
    legacy = defines["update_fields"]

    async def write_fields(self: Runtime, ref: TaskRef, **fields: Any) -> None:
        await legacy(self, ref, **fields)

    write_fields.__qualname__ = f"{cls.__qualname__}.write_fields"
    cls.write_fields = write_fields  # type: ignore[attr-defined]
    USED.add("Runtime.update_fields")
    SHIMMED.add(cls)


class ContractMismatch(Exception):
    """An implementation of a contract version the suite cannot grade: the one message to show."""


@dataclass(frozen=True)
class Terms:
    """How the suite grades an implementation, as to contract versions."""

    #: The version it declares, or None.
    declared: str | None
    #: Graded through the shims for the previous major version; None: decided
    #: when a runtime starts (an undeclared version, see :func:`is_legacy`).
    shimmed: bool | None

    @property
    def contract(self) -> str:
        """What a graded record says of it: ``2.1``, ``1.0 (shims)``, ``2.1.0 (undeclared)``."""
        from .contract import CONTRACT_VERSION

        if self.shimmed:
            return f"{self.declared or LEGACY_MAJOR} (shims)"
        return self.declared or f"{CONTRACT_VERSION} (undeclared)"


def terms(impl: Implementation) -> Terms:
    """How ``impl`` is graded; :class:`ContractMismatch` if it cannot be."""
    from .contract import CONTRACT_VERSION

    current = _parse(CONTRACT_VERSION)
    assert current is not None
    declared = impl.contract_version
    if declared is None:
        return Terms(None, None)
    version = _parse(declared)
    if version is None:
        raise ContractMismatch(
            f"{impl.name} declares contract_version {declared!r}: expected a version such "
            f"as '{current[0]}.{current[1]}'."
        )
    if version[0] == current[0]:
        return Terms(declared, False)
    if version[0] == LEGACY_MAJOR:
        return Terms(declared, True)
    if version[0] > current[0]:
        raise ContractMismatch(
            f"{impl.name} is written for contract {declared}, and this suite speaks "
            f"contract {CONTRACT_VERSION}: install a streaming-conformance that speaks "
            f"{version[0]}.x (pip install -U streaming-conformance)."
        )
    raise ContractMismatch(
        f"{impl.name} is written for contract {declared}, and this suite speaks contract "
        f"{CONTRACT_VERSION}, grading {LEGACY_MAJOR}.x at the oldest. What changed, with "
        f"code before and after: {MIGRATION_NOTES}."
    )


def is_legacy(runtime: object) -> bool:
    """Whether ``runtime``'s class names its fields as 1.x did (the shim found it)."""
    return any(cls in SHIMMED for cls in type(runtime).__mro__)


def note(name: str, contract: str) -> str:
    """One line on how ``name`` was graded, from a record's ``contract``; "" if plainly."""
    from .contract import CONTRACT_VERSION

    if contract.endswith("(shims)"):
        declared = contract.removesuffix(" (shims)")
        written = (
            f"is written for contract {declared}"
            if declared != str(LEGACY_MAJOR)
            else f"declares no contract_version and names fields as contract {LEGACY_MAJOR}.x "
            "did (update_fields)"
        )
        return (
            f"{name} {written}: graded against {CONTRACT_VERSION} through the shims for "
            f"{LEGACY_MAJOR}.x, which forward the old names to the new ones; see "
            f"{MIGRATION_NOTES}"
        )
    if contract.endswith("(undeclared)"):
        major, minor = contract.split(".")[:2]
        return (
            f"{name} declares no contract_version: graded against {CONTRACT_VERSION}; declare "
            f'the version it was written for (contract_version = "{major}.{minor}")'
        )
    version, current = _parse(contract), _parse(CONTRACT_VERSION)
    if version is not None and current is not None and version > current:
        return (
            f"{name} is written for contract {contract}, newer than this suite's "
            f"{CONTRACT_VERSION}: what the newer versions added is not graded; upgrade "
            "streaming-conformance"
        )
    return ""


def _parse(version: str) -> tuple[int, int] | None:
    match = re.fullmatch(r"(\d+)(?:\.(\d+))?(?:\.\d+)?", version.strip())
    return (int(match[1]), int(match[2] or 0)) if match else None


class LegacyContext:
    """A 1.x context with the 2.x names on top; everything else is the implementation's."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    @property
    def task_id(self) -> str:
        return str(self._inner.task_id)

    @property
    def fields(self) -> Mapping[str, Any]:
        return self._inner.fields  # type: ignore[no-any-return]

    async def send_event(self, type: str, data: Mapping[str, Any] | None = None) -> None:
        await self._inner.send_event(type, data)

    async def read_fields(self) -> Mapping[str, Any]:
        if hasattr(self._inner, "read_fields"):
            return await self._inner.read_fields()  # type: ignore[no-any-return]
        return await self._inner.refresh()  # type: ignore[no-any-return]

    async def write_fields(self, **changes: Any) -> None:
        if hasattr(self._inner, "write_fields"):
            await self._inner.write_fields(**changes)
        else:
            await self._inner.update_fields(**changes)


def adapter(behaviour: Behaviour) -> Behaviour:
    """The module-level adapter that runs ``behaviour`` with a :class:`LegacyContext`."""
    from .contract import behaviour_path

    name = _PREFIX + _encode(behaviour_path(behaviour))
    return getattr(sys.modules[__name__], name)  # type: ignore[no-any-return]


def __getattr__(name: str) -> Any:
    """Make the adapter ``name`` names on first use, in whichever process imports it."""
    if not name.startswith(_PREFIX):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from .contract import resolve_behaviour

    behaviour = resolve_behaviour(_decode(name.removeprefix(_PREFIX)))

    async def adapted(ctx: TaskContext) -> Mapping[str, Any] | None:
        if not hasattr(ctx, "read_fields"):
            USED.add("TaskContext.refresh")
        if not hasattr(ctx, "write_fields"):
            USED.add("TaskContext.update_fields")
        return await behaviour(LegacyContext(ctx))

    adapted.__name__ = adapted.__qualname__ = name
    adapted.__module__ = __name__
    globals()[name] = adapted
    return adapted


# An import path as an identifier, reversibly: "_" is "_u", "." is "_d", ":" is "_c".
_ENCODE = {"_": "_u", ".": "_d", ":": "_c"}
_DECODE = {code: char for char, code in _ENCODE.items()}


def _encode(path: str) -> str:
    return "".join(_ENCODE.get(char, char) for char in path)


def _decode(name: str) -> str:
    return re.sub(r"_[udc]", lambda match: _DECODE[match[0]], name)


def legacy_runtime(inner: Runtime) -> Runtime:
    """``inner``, its ``create_task`` given adapters instead of behaviours (see module doc)."""
    from .contract import Runtime

    class LegacyRuntime(Runtime):
        async def create_task(self, kind: Behaviour, fields: Any = None, **options: Any) -> Any:
            return await inner.create_task(adapter(kind), fields, **options)

        async def start_task(self, ref: TaskRef) -> bool:
            return await inner.start_task(ref)

        async def cancel_task(self, ref: TaskRef, reason: str | None = None) -> bool:
            return await inner.cancel_task(ref, reason)

        async def retry_task(self, ref: TaskRef) -> bool:
            return await inner.retry_task(ref)

        async def get_state(self, ref: TaskRef) -> Any:
            return await inner.get_state(ref)

        async def write_fields(self, ref: TaskRef, **fields: Any) -> None:
            await inner.write_fields(ref, **fields)

        async def subscribe(self, ref: TaskRef, *, last_event_id: int | None = None) -> Any:
            return await inner.subscribe(ref, last_event_id=last_event_id)

        def asgi_app(self) -> Any:
            return inner.asgi_app()

        def guarded_asgi_app(self) -> Any:
            return inner.guarded_asgi_app()

        def stats(self) -> Any:
            return inner.stats()

        async def shutdown(self, grace: float = 5.0) -> None:
            await inner.shutdown(grace)

        def __getattr__(self, name: str) -> Any:
            return getattr(inner, name)

    return LegacyRuntime()
