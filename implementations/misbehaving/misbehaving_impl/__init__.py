"""Implementations that break the contract on purpose: the harness must grade them as promised.

Each is the reference with one fault planted, so whatever a case catches is
that fault. ``tests/test_misbehaving.py`` runs each against a few cases and
checks the grade the plugin gives and that the run goes on to the next case:

- ``misbehaving-hangs``: ``start_task`` never returns. A case that starts a
  task is graded *error* (timed out); the next case still runs.
- ``misbehaving-crashes``: ``Implementation.start`` raises. Every case that
  needs a runtime is graded *error* (setup failed).
- ``misbehaving-garbles``: its subscriptions hand out one event twice, swap
  two, and give one a data that is no JSON object. Cases that read a
  stream are graded *fail*.
- ``misbehaving-leaks``: every run leaves an asyncio task behind, and a
  client that leaves stays registered. Graded *fail*, for hygiene.
- ``misbehaving-hoards``: its server declares a budget of 8 MiB for finished
  tasks' events and keeps them all. EDGE-20 is graded *fail*.
- ``misbehaving-bloats``: its server opens a scratch database in memory for
  every run (64 KiB) and never closes it. PERF-4 is graded *fail*.

The last two are the teeth of the memory cases: each is a bug the cheap
bounds of EDGE-20 and PERF-4, derived from what the implementation declares,
must still catch.

The teeth of the soak (``python -m conformance soak``): ``misbehaving-doubles``,
``-forgets``, ``-off-by-one``, ``-boasts``, ``-premature`` and ``-clings``, each
the reference with one bug of :mod:`.soak_plants` planted in every process.
"""

from __future__ import annotations

import asyncio
import sys
from dataclasses import replace
from typing import Any

from conformance.contract import Event, Runtime, ServerSpec, Subscription, TaskRef
from streaming.adapter import ReferenceImplementation, ReferenceRuntime

__all__ = [
    "Bloats",
    "Boasts",
    "Clings",
    "Crashes",
    "Doubles",
    "Forgets",
    "Garbles",
    "Hangs",
    "Hoards",
    "Leaks",
    "OffByOne",
    "Premature",
]


class Hangs(ReferenceImplementation):
    name = "misbehaving-hangs"

    async def start(self) -> Runtime:
        return _HangingRuntime((await super().start()).coordinator)  # type: ignore[attr-defined]


class _HangingRuntime(ReferenceRuntime):
    async def start_task(self, ref: TaskRef) -> bool:
        await asyncio.Event().wait()  # nothing ever sets it
        return True


class Crashes(ReferenceImplementation):
    name = "misbehaving-crashes"

    async def start(self) -> Runtime:
        raise RuntimeError("misbehaving-crashes fails to start, on purpose")


class Garbles(ReferenceImplementation):
    name = "misbehaving-garbles"

    async def start(self) -> Runtime:
        return _GarblingRuntime((await super().start()).coordinator)  # type: ignore[attr-defined]


class _GarblingRuntime(ReferenceRuntime):
    async def subscribe(self, ref: TaskRef, *, last_event_id: int | None = None) -> Subscription:
        return _Garbled(await super().subscribe(ref, last_event_id=last_event_id))


class _Garbled(Subscription):
    """Event 2 comes twice, events 3 and 4 swap places, event 5's data is a list."""

    def __init__(self, inner: Subscription) -> None:
        self._inner = aiter(inner)
        self._close = inner.aclose
        self._pending: list[Event] = []
        self._read = 0

    def __aiter__(self) -> _Garbled:
        return self

    async def __anext__(self) -> Event:
        if self._pending:
            return self._pending.pop(0)
        event = await anext(self._inner)
        self._read += 1
        if self._read == 2:
            self._pending.append(event)
        elif self._read == 3:
            try:
                later = await anext(self._inner)
            except StopAsyncIteration:
                return event
            self._read += 1
            self._pending.append(event)
            return later
        elif self._read == 5:
            return replace(event, data=["not", "an", "object"])  # type: ignore[arg-type]
        return event

    async def aclose(self) -> None:
        await self._close()


class Leaks(ReferenceImplementation):
    name = "misbehaving-leaks"

    async def start(self) -> Runtime:
        return _LeakingRuntime((await super().start()).coordinator)  # type: ignore[attr-defined]


class _LeakingRuntime(ReferenceRuntime):
    def __init__(self, coordinator: Any) -> None:
        super().__init__(coordinator)
        self.leaked: list[asyncio.Task[None]] = []

    async def start_task(self, ref: TaskRef) -> bool:
        started = await super().start_task(ref)
        wait_forever = asyncio.Event().wait()
        self.leaked.append(asyncio.create_task(wait_forever, name=f"leaked-by-{ref}"))
        return started

    async def subscribe(self, ref: TaskRef, *, last_event_id: int | None = None) -> Subscription:
        return _Sticky(await super().subscribe(ref, last_event_id=last_event_id))


class _Sticky(Subscription):
    """A subscription whose ``aclose()`` forgets to unregister the client."""

    def __init__(self, inner: Subscription) -> None:
        self._inner = inner

    def __aiter__(self) -> Any:
        return aiter(self._inner)

    async def aclose(self) -> None:
        pass


class Hoards(ReferenceImplementation):
    """Declares the reference's budget for finished tasks' events; its server keeps a gigabyte."""

    name = "misbehaving-hoards"

    def server_command(self, host: str, port: int, *, grace: float = 5.0) -> ServerSpec:
        spec = super().server_command(host, port, grace=grace)
        env = {**spec.env, "STREAMING_CLOSED_HISTORY_BYTES": str(1024**3)}
        return replace(spec, env=env)


class Bloats(ReferenceImplementation):
    """Its server opens a scratch database in memory for every run, and never closes one."""

    name = "misbehaving-bloats"

    def server_command(self, host: str, port: int, *, grace: float = 5.0) -> ServerSpec:
        spec = super().server_command(host, port, grace=grace)
        django_argv = spec.argv[spec.argv.index("django") + 1 :]
        argv = [sys.executable, "-m", "misbehaving_impl.bloating_server", *django_argv]
        return replace(spec, argv=argv)


class _Planted(ReferenceImplementation):
    """The reference with the soak plant ``planted`` in its runtimes and its servers."""

    planted = ""

    async def start(self) -> Runtime:
        from .soak_plants import plant

        runtime = await super().start()  # Django is set up: the plant can import the reference
        plant(self.planted)
        return runtime

    def server_command(self, host: str, port: int, *, grace: float = 5.0) -> ServerSpec:
        spec = super().server_command(host, port, grace=grace)
        django_argv = spec.argv[spec.argv.index("django") + 1 :]
        argv = [sys.executable, "-m", "misbehaving_impl.soak_plants", self.planted, *django_argv]
        return replace(spec, argv=argv)


class Doubles(_Planted):
    name = "misbehaving-doubles"
    planted = "doubles"


class Forgets(_Planted):
    name = "misbehaving-forgets"
    planted = "forgets"


class OffByOne(_Planted):
    name = "misbehaving-off-by-one"
    planted = "off-by-one"


class Boasts(_Planted):
    name = "misbehaving-boasts"
    planted = "boasts"


class Premature(_Planted):
    name = "misbehaving-premature"
    planted = "premature"


class Clings(_Planted):
    name = "misbehaving-clings"
    planted = "clings"
