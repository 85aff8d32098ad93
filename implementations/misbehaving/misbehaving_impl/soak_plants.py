"""Bugs planted in the reference for the soak's checker to catch, one per implementation.

Each is a patch of the reference's classes, applied in every process of the
deployment: the server processes (``python -m misbehaving_impl.soak_plants
PLANT <django command ...>``) and the runtime the soak creates tasks with.
None is a flag in the reference's own code.

- ``doubles``: the Redis bus hands each event it reads from Redis to this
  worker's clients twice. (Needs two workers.)
- ``forgets``: the keeper never runs: no lease renewed, no lost run found.
- ``off-by-one``: a resume with ``Last-Event-ID: N`` starts at ``N``, not after it.
- ``boasts``: a cancel of a run it holds answers true and stops nothing.
- ``premature``: a run's terminal event goes out before its outcome is
  written (behind, a while later), and stays, whatever storage then records.
- ``clings``: a lease lasts a day: a run lost with its process is never found.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from datetime import timedelta
from typing import Any

__all__ = ["PLANTS", "plant"]


def _doubles() -> None:
    from streaming.hub import Message
    from streaming.redisbus import RedisBus

    accept = RedisBus._accept

    def doubled(self: RedisBus, key: str, message: Message, *, seeding: bool = False) -> None:
        accept(self, key, message, seeding=seeding)
        if not message.final and self.hub.has_subscribers(key):
            self.hub.publish(key, message.event, json_data=message.json)

    RedisBus._accept = doubled  # type: ignore[method-assign]


def _forgets() -> None:
    from streaming.leases import Keeper

    async def nothing(self: Keeper) -> None:
        return None

    Keeper.tick = nothing  # type: ignore[method-assign]
    Keeper.renew = nothing  # type: ignore[method-assign]


def _off_by_one() -> None:
    from streaming.coordinator import Coordinator

    subscribe = Coordinator.subscribe

    async def resumed_early(
        self: Coordinator, model: Any, pk: Any, *, last_event_id: int | None = None
    ) -> Any:
        if last_event_id is not None and last_event_id > 0:
            last_event_id -= 1
        return await subscribe(self, model, pk, last_event_id=last_event_id)

    Coordinator.subscribe = resumed_early  # type: ignore[method-assign]


def _boasts() -> None:
    from streaming.coordinator import Coordinator

    def cancel_run(self: Coordinator, run: Any, reason: str) -> bool:
        return True

    Coordinator._cancel_run = cancel_run  # type: ignore[method-assign]


def _premature() -> None:
    from streaming import db, endings
    from streaming.coordinator import Coordinator

    async def record(self: Coordinator, run: Any, outcome: Any) -> None:
        model, pk = type(run.task), run.task.pk
        event = run.event(outcome.event_type, outcome.data)
        await self.publish(run.key, event, final=True)  # told first...
        # ...written behind, a while later (a queue, a batch), and whatever
        # storage then says, nobody is told: meanwhile the run's lease, no
        # longer renewed for a finished run, lapses and a keeper records it.
        await asyncio.sleep(2 * self.config.lease)
        try:
            await db.run_until_available(
                lambda: endings.write(model, pk, outcome, event, fence=run.attempt),
                what=f"{run.key}: recording {outcome.status}",
                keep_trying=lambda: True,
            )
        except db.DatabaseUnavailable:
            pass

    Coordinator._record = record  # type: ignore[method-assign]


def _clings() -> None:
    from streaming import coordinator, leases

    def a_day(**_: float) -> timedelta:
        return timedelta(days=1)

    leases.timedelta = a_day  # type: ignore[attr-defined,assignment]
    coordinator.timedelta = a_day  # type: ignore[attr-defined,assignment]


#: Each plant by name.
PLANTS: dict[str, Callable[[], None]] = {
    "doubles": _doubles,
    "forgets": _forgets,
    "off-by-one": _off_by_one,
    "boasts": _boasts,
    "premature": _premature,
    "clings": _clings,
}


def plant(name: str) -> None:
    """Apply plant ``name`` to the reference's classes in this process."""
    PLANTS[name]()


def main() -> None:
    import django
    from django.core.management import execute_from_command_line

    name, *command = sys.argv[1:]
    django.setup()
    plant(name)
    execute_from_command_line(["django-admin", *command])


if __name__ == "__main__":
    main()
