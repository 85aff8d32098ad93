"""Seeded interleavings: races explored, not hoped for (DESIGN.md, practice 10).

Two operations started "at the same time" on one event loop run in the one
order the loop happens to pick, and in that same order on every run: the bug
one ``await`` further along stays hidden, and shows up later as a flaky test.
So every race case runs under several seeds. A seed drives a
:class:`random.Random` that fixes the order in which the case's concurrent
operations start and how many ``await asyncio.sleep(0)`` yields precede each,
so each seed is another interleaving of the operations' await points, and a
failing seed names the interleaving to replay (``pytest -k seed3``).

Every choice is drawn before the operations run (:func:`interleave` draws its
plan first), so what a seed fixes never depends on how the operations happen
to be scheduled. Where a case sweeps one operation across another's await
points, it first measures how many loop turns the other lasts here
(:func:`yields_during`: a PostgreSQL commit lasts many more than a SQLite
one), and the seed fixes where in that span each round lands.

A ``sleep(0)`` hands the loop exactly one turn: here it moves an operation
past the others' await points, never waits for something to happen. Cases
still wait for conditions (an event on a stream, a stored state) with
:mod:`conformance.waiting`.

The race cases' own tools close the module: how many loop turns a start or
a cancel lasts here (:func:`start_span`), clients that join one after
another across a task's ending (:class:`Storm`), and the highest event id
any client has seen (:class:`HighWater`).

``CONFORMANCE_RACE_SEED_BASE=N`` shifts every case's seeds to explore other
interleavings; the node IDs still name the seed that ran.
"""

from __future__ import annotations

import asyncio
import functools
import os
import random
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import httpx
import pytest

from . import behaviours
from .clients import Client, ClientStream
from .contract import Event, Runtime, TaskRef
from .waiting import finished

if TYPE_CHECKING:
    from .processes import ServerProcess

__all__ = [
    "DEFAULT_MAX_YIELDS",
    "HighWater",
    "Race",
    "Storm",
    "at_loop_time",
    "cancel_span",
    "interleave",
    "jitter",
    "post_at",
    "raise_first",
    "replayable",
    "seeds",
    "start_span",
    "storm_size",
    "yields",
    "yields_during",
]

T = TypeVar("T")
P = ParamSpec("P")

#: The most ``sleep(0)`` yields put before an operation unless a case says otherwise.
DEFAULT_MAX_YIELDS = 3

#: Added to every seed; set it to explore interleavings the default seeds do not.
SEED_BASE = int(os.environ.get("CONFORMANCE_RACE_SEED_BASE", "0"))

#: How much of a race's plan a failure message shows.
_PLAN_LIMIT = 600


def seeds(count: int) -> pytest.MarkDecorator:
    """Parametrize a case's ``race_seed`` over ``count`` seeds, named ``seed<N>`` in node IDs."""
    values = list(range(SEED_BASE, SEED_BASE + count))
    return pytest.mark.parametrize("race_seed", values, ids=[f"seed{v}" for v in values])


def replayable(case: Callable[P, Awaitable[None]]) -> Callable[P, Awaitable[None]]:
    """Make every failure of a race case name its seed and plan (from its ``race`` argument).

    A case's own assertions say it in their messages; this adds it, as a note,
    to the rest: a stream that timed out, a state never reached.
    """

    @functools.wraps(case)
    async def run(*args: P.args, **kwargs: P.kwargs) -> None:
        try:
            await case(*args, **kwargs)
        except AssertionError as exc:
            race = kwargs.get("race")
            if isinstance(race, Race) and "race seed" not in str(exc):
                exc.add_note(f"while exploring {race}")
            raise

    return run


async def yields(count: int) -> None:
    """Give the event loop ``count`` turns."""
    for _ in range(count):
        await asyncio.sleep(0)


async def jitter(rng: random.Random, max_yields: int = DEFAULT_MAX_YIELDS) -> int:
    """Yield a seeded number of times, from 0 to ``max_yields``; return how many."""
    count = rng.randint(0, max_yields)
    await yields(count)
    return count


async def interleave(
    rng: random.Random,
    *factories: Callable[[], Awaitable[Any]],
    names: Sequence[str] | None = None,
    max_yields: int = DEFAULT_MAX_YIELDS,
    delays: Sequence[int] | None = None,
    return_exceptions: bool = True,
    plan: list[str] | None = None,
) -> list[Any]:
    """Run the operations concurrently in a seeded interleaving; results in argument order.

    The operations' tasks are created in a seeded permutation (the loop runs
    them first in that order) and each first yields a seeded number of times,
    0 to ``max_yields``, or the given ``delays`` (one per operation, drawn by
    the caller, for example with :meth:`Race.spread`). With
    ``return_exceptions`` an operation's exception is its result; without it,
    the first one is raised, but only once every operation has ended, so a
    failure leaves nothing running. ``plan``, if given, receives the
    interleaving in words, for failure messages.
    """
    labels = list(names) if names is not None else [f"op{i}" for i in range(len(factories))]
    if len(labels) != len(factories):
        raise ValueError(f"Cannot name {len(factories)} operations with {len(labels)} names.")
    order = list(range(len(factories)))
    rng.shuffle(order)
    if delays is None:
        delays = [rng.randint(0, max_yields) for _ in factories]
    elif len(delays) != len(factories):
        raise ValueError(f"Cannot delay {len(factories)} operations by {len(delays)} counts.")
    if plan is not None:
        plan.append(" ".join(f"{labels[i]}+{delays[i]}" for i in order))

    async def run(index: int) -> Any:
        await yields(delays[index])
        return await factories[index]()

    tasks: list[asyncio.Task[Any] | None] = [None] * len(factories)
    for index in order:
        tasks[index] = asyncio.create_task(run(index), name=f"race:{labels[index]}")
    results = await asyncio.gather(*(t for t in tasks if t is not None), return_exceptions=True)
    if not return_exceptions:
        for result in results:
            if isinstance(result, BaseException):
                raise result
    return results


async def yields_during(operation: Awaitable[T]) -> tuple[T, int]:
    """Await ``operation``; return its result and how many loop turns passed meanwhile.

    A yardstick for :meth:`Race.spread`: how far apart two operations must
    start to land anywhere in each other's await points depends on the
    implementation and its database, so a case measures it instead of
    guessing.
    """
    turns = 0
    running = True

    async def count() -> None:
        nonlocal turns
        while running:
            await asyncio.sleep(0)
            turns += 1

    counter = asyncio.create_task(count(), name="race:yardstick")
    try:
        result = await operation
    finally:
        running = False
        await counter
    return result, turns


async def at_loop_time(when: float) -> None:
    """Resume in the loop iteration that runs the timers due at ``when`` (loop clock).

    For racing a deadline (a task's timeout), the competing operation is placed
    at a seeded offset from it the way the deadline itself is scheduled, with
    ``loop.call_at``: which of the two runs first is the loop's own decision.
    """
    loop = asyncio.get_running_loop()
    reached: asyncio.Future[None] = loop.create_future()

    def arrive() -> None:
        if not reached.done():
            reached.set_result(None)

    handle = loop.call_at(when, arrive)
    try:
        await reached
    finally:
        handle.cancel()


class Race:
    """One seeded exploration: its generator, and the interleavings it chose.

    ``str(race)`` names the seed and the plan, so every failure message that
    includes it says how to replay the interleaving that broke.
    """

    def __init__(self, seed: int, *, max_yields: int = DEFAULT_MAX_YIELDS) -> None:
        self.seed = seed
        self.max_yields = max_yields
        self.rng = random.Random(seed)
        self.plan: list[str] = []

    def note(self, choice: str) -> None:
        """Record a seeded choice the case made itself (a count, an offset)."""
        self.plan.append(choice)

    def randint(self, low: int, high: int, *, what: str | None = None) -> int:
        value = self.rng.randint(low, high)
        if what is not None:
            self.note(f"{what}={value}")
        return value

    def draws(self, count: int, max_yields: int | None = None) -> list[int]:
        """``count`` yield counts drawn now, for operations that run later in any order."""
        high = self.max_yields if max_yields is None else max_yields
        return [self.rng.randint(0, high) for _ in range(count)]

    def spread(self, count: int, high: int) -> list[int]:
        """``count`` yield counts that cover 0..``high`` evenly, in a seeded order.

        Each falls at a seeded point of its own stretch of the range, so one
        seed's rounds sweep an operation across every await point of the
        other's, instead of leaving it to chance which of them a few draws hit.
        """
        width = (high + 1) / count
        values = [int(i * width + self.rng.random() * width) for i in range(count)]
        self.rng.shuffle(values)
        return values

    def offsets(self, count: int, low: float, high: float) -> list[float]:
        """``count`` offsets (seconds) that cover ``low``..``high`` evenly, in a seeded order.

        For racing a deadline: one seed's rounds land on both sides of it and
        close to it, as :meth:`spread` does for loop turns.
        """
        width = (high - low) / count
        values = [low + (i + self.rng.random()) * width for i in range(count)]
        self.rng.shuffle(values)
        return values

    def sweep(self, spans: Mapping[str, int], rounds: int) -> list[tuple[str, int]]:
        """Rounds of a two-sided race: ``(first, lag)`` pairs, in a seeded order.

        For each named operation, ``rounds`` rounds start it first and the
        other ``lag`` turns later, the lags spread over the first one's span
        (its length in loop turns, see :func:`yields_during`): the late one
        lands at every await point of the early one.
        """
        pairs = [(name, lag) for name, span in spans.items() for lag in self.spread(rounds, span)]
        self.rng.shuffle(pairs)
        return pairs

    async def jitter(self, max_yields: int | None = None) -> int:
        return await jitter(self.rng, self.max_yields if max_yields is None else max_yields)

    async def interleave(
        self,
        *factories: Callable[[], Awaitable[Any]],
        names: Sequence[str] | None = None,
        max_yields: int | None = None,
        delays: Sequence[int] | None = None,
        return_exceptions: bool = True,
    ) -> list[Any]:
        return await interleave(
            self.rng,
            *factories,
            names=names,
            max_yields=self.max_yields if max_yields is None else max_yields,
            delays=delays,
            return_exceptions=return_exceptions,
            plan=self.plan,
        )

    def __str__(self) -> str:
        plan = "; ".join(self.plan)
        if len(plan) > _PLAN_LIMIT:  # the latest choices led to the failure: keep those
            plan = "... " + plan[-_PLAN_LIMIT:]
        return f"race seed {self.seed} (replay with -k seed{self.seed}; plan: {plan or 'none'})"

    def __repr__(self) -> str:
        return f"<Race seed={self.seed} steps={len(self.plan)}>"


# -- the race cases' tools ----------------------------------------------------------------


def raise_first(race: Race, results: Iterable[T | BaseException], what: str) -> list[T]:
    """Fail with the first exception an operation of the race ended with; else the results."""
    values: list[T] = []
    for result in results:
        if isinstance(result, BaseException):
            raise AssertionError(f"{race}: {what} raised {result!r}") from result
        values.append(result)
    return values


async def start_span(runtime: Runtime) -> int:
    """Loop turns a start of a READY task lasts here (median of three): a yardstick."""
    turns = []
    for _ in range(3):
        probe = await runtime.create_task(behaviours.steps, {"steps": 0})
        started, took = await yields_during(runtime.start_task(probe))
        assert started is True, f"the probe {probe} did not start"
        await finished(runtime, probe)
        turns.append(took)
    return max(sorted(turns)[1], 1)


async def cancel_span(runtime: Runtime) -> int:
    """Loop turns a cancel of a READY task lasts here (median of three)."""
    turns = []
    for _ in range(3):
        probe = await runtime.create_task(behaviours.steps, {"steps": 0})
        _, took = await yields_during(runtime.cancel_task(probe, "probe"))
        turns.append(took)
    return max(sorted(turns)[1], 1)


async def post_at(when: float, server: ServerProcess, path: str, **kwargs: Any) -> httpx.Response:
    """POST ``path`` to ``server`` once the loop's clock reaches ``when``."""
    await at_loop_time(when)
    return await server.request("POST", path, **kwargs)


class HighWater:
    """The highest event id any client has seen: a floor under the latest event sent."""

    def __init__(self) -> None:
        self.value = 0
        self._changed = asyncio.Condition()

    async def saw(self, event: Event) -> None:
        """Raise the mark to ``event``'s id if it is higher."""
        if event.id > self.value:
            self.value = event.id
            async with self._changed:
                self._changed.notify_all()

    async def reached(self, event_id: int, timeout: float = 10.0) -> None:
        """Wait until some client has seen ``event_id``."""
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(lambda: self.value >= event_id)


def storm_size(client: Client) -> int:
    """The most clients a storm starts: HTTP ones each hold a connection of a bounded pool."""
    return 300 if client.mode == "inprocess" else 60


class Storm:
    """Clients that join one after another, seeded turns apart, each read to its end.

    A join does not wait for the one before it to be registered: subscribes
    overlap, so some are under way at every await point of the task's ending.
    The storm lasts until :attr:`ended` is set (the watcher saw the terminal
    event) and ``extra`` more clients have joined, so its clients span the
    ending: before, during and after. The number of gaps caps it.
    """

    def __init__(self, client: Client, ref: TaskRef, gaps: Sequence[int], extra: int = 3) -> None:
        self.client = client
        self.ref = ref
        self.gaps = gaps
        self.extra = extra
        self.ended = asyncio.Event()
        self.streams: list[ClientStream] = []
        self._joins: list[asyncio.Task[ClientStream]] = []

    async def watch(self, watcher: ClientStream) -> None:
        """Read ``watcher`` to its end; then the storm lets ``extra`` more clients join."""
        try:
            await watcher.read_to_end()
        finally:
            self.ended.set()

    async def run(self) -> None:
        """Start the joins, one per gap, until the ending has passed or the gaps run out."""
        after = 0
        for index, gap in enumerate(self.gaps):
            await yields(gap)
            self._joins.append(asyncio.create_task(self._join(), name=f"storm-{index}"))
            if self.ended.is_set():
                after += 1
                if after >= self.extra:
                    return

    async def _join(self) -> ClientStream:
        stream = await self.client.subscribe(self.ref)
        self.streams.append(stream)
        return await stream.read_to_end()

    async def results(self) -> list[Any]:
        """Each join's stream, read to its end, or the exception it ended with."""
        return await asyncio.gather(*self._joins, return_exceptions=True)
