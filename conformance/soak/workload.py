"""The soak's workload: what each task does, who watches it, who cancels or retries it.

Every plan is drawn from the seed and the task's number alone, so the same
seed makes the same tasks with the same clients; when things happen still
depends on the run (the machine, the faults).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from ..contract import Behaviour
from . import work

__all__ = ["ClientPlan", "TaskPlan", "plan_task"]

#: The kinds of task, how often each comes, and what it is made of.
KINDS: dict[str, int] = {
    "steady": 30,  # progress, then complete
    "long": 10,  # the same, for tens of seconds: across faults
    "failing": 14,  # a few events, then an error
    "timing-out": 10,  # runs past its timeout
    "stubborn": 8,  # ignores its first cancel; always cancelled
    "large": 8,  # events of hundreds of KiB
}
#: The kinds of client, and how often each comes.
ROLES: dict[str, int] = {
    "reader": 40,  # subscribes before the start, reads to the end
    "late": 15,  # subscribes a while after the start
    "slow": 12,  # reads slowly
    "resumer": 15,  # leaves after a few events, comes back with Last-Event-ID
    "leaver": 12,  # leaves after a few events for good
    "never-read": 6,  # opens the stream and never reads it
}
#: Roles whose client means to read its task's stream to the end.
STAYING = frozenset({"reader", "late", "slow", "resumer"})


@dataclass(frozen=True)
class ClientPlan:
    """One client of a task."""

    role: str
    #: Seconds after the start that a late client subscribes.
    delay: float = 0.0
    #: Events a resumer or a leaver reads before it leaves.
    leave_after: int = 0
    #: Seconds a slow reader waits after each event, or a resumer before it returns.
    pause: float = 0.0

    @property
    def stays(self) -> bool:
        return self.role in STAYING


@dataclass(frozen=True)
class TaskPlan:
    """One task: its behaviour and fields, its clients, its cancels and retry."""

    number: int
    kind: str
    behaviour: Behaviour
    fields: dict[str, Any]
    timeout: float | None
    max_attempts: int | None
    clients: tuple[ClientPlan, ...]
    #: Seconds after the start to cancel (None: no cancel); 0 races the start itself.
    cancel_after: float | None = None
    #: Cancel from every worker at once, not from one.
    cancel_everywhere: bool = False
    #: Retry once it ends FAILED, CANCELLED, TIMED_OUT or INTERRUPTED.
    retry: bool = False


def plan_task(seed: int, number: int) -> TaskPlan:
    """Task ``number`` of the run seeded ``seed``."""
    rng = random.Random(f"{seed}:task:{number}")
    kind = rng.choices(list(KINDS), weights=list(KINDS.values()))[0]
    timeout: float | None = None
    behaviour: Behaviour
    if kind == "steady":
        behaviour = work.steady
        fields: dict[str, Any] = {"count": rng.randint(3, 30), "interval": rng.uniform(0.05, 0.3)}
    elif kind == "long":
        behaviour = work.steady
        fields = {"count": rng.randint(60, 150), "interval": 0.2}
    elif kind == "failing":
        behaviour = work.failing
        fields = {"count": rng.randint(1, 8), "interval": rng.uniform(0.05, 0.3)}
    elif kind == "timing-out":
        behaviour = work.steady
        fields = {"count": 200, "interval": 0.1}
        timeout = round(rng.uniform(1.5, 4.0), 2)
    elif kind == "stubborn":
        behaviour = work.stubborn
        fields = {"interval": rng.uniform(0.1, 0.4)}
        timeout = 40.0  # should the cancel never arrive
    else:
        behaviour = work.large
        fields = {"count": rng.randint(2, 4), "size": rng.choice([64, 256, 512]) * 1024}
    clients = tuple(_client(rng) for _ in range(rng.randint(1, 4)))
    cancel_after = None
    if kind == "stubborn" or rng.random() < 0.25:
        cancel_after = 0.0 if rng.random() < 0.12 else round(rng.uniform(0.2, 4.0), 2)
    return TaskPlan(
        number=number,
        kind=kind,
        behaviour=behaviour,
        fields=fields,
        timeout=timeout,
        max_attempts=2 if rng.random() < 0.3 else None,
        clients=clients,
        cancel_after=cancel_after,
        cancel_everywhere=rng.random() < 0.3,
        retry=rng.random() < 0.3,
    )


def _client(rng: random.Random) -> ClientPlan:
    role = rng.choices(list(ROLES), weights=list(ROLES.values()))[0]
    return ClientPlan(
        role=role,
        delay=round(rng.uniform(0.3, 4.0), 2) if role == "late" else 0.0,
        leave_after=rng.randint(1, 6),
        pause=round(rng.uniform(0.05, 0.3) if role == "slow" else rng.uniform(0.2, 2.0), 2),
    )
