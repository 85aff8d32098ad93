"""``python -m conformance soak``: a long run under overlapping faults, judged afterwards.

Every case of the suites is one fault, one task, a few clients, judged at
once. Real trouble comes from faults that overlap while work goes on. The
soak drives an implementation's real server processes (``--workers 2`` on
one storage, sharing events, where it declares ``multi_worker``) with a
seeded workload (:mod:`.workload`) and a seeded fault schedule drawn from
what it declares (:mod:`.faults`), records everything to a JSON-lines
history (:mod:`.history`), then lets the checker (:mod:`.checker`) judge the
whole history against SPEC's MUSTs. Exit status 1 on any violation.

``--check HISTORY`` judges a saved history alone. The same ``--seed``
replays the same schedule and the same tasks. A run also writes its verdict,
machine-readable (:func:`summarize`), for ``python -m conformance report``.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import random
import re
import sys
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..contract import Capability, Implementation
from ..waiting import MARGIN
from .checker import Report, check, render
from .faults import PrivateRedis, available_faults, schedule
from .history import History, Record, read_history

__all__ = ["DESCRIPTION", "add_arguments", "parse_duration", "run", "summarize"]

DESCRIPTION = "Run an implementation's workers under a workload and faults; judge the history."
#: Where the history goes unless told.
DEFAULT_HISTORY = Path("reports") / "soak-history.jsonl"
#: Memory a worker may grow by beyond its budget for finished tasks' events:
#: its open streams, its runs, the interpreter's own arenas under load.
MEMORY_ALLOWANCE = 96 * 1024 * 1024
#: Capabilities a soak cannot run without.
NEEDED = (Capability.HTTP, Capability.PROCESS, Capability.PERSISTENCE)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--impl", default="reference", help="implementation (default: %(default)s)")
    parser.add_argument(
        "--duration", default="60s", type=parse_duration, help="how long: 90s, 10m (default: 60s)"
    )
    parser.add_argument("--seed", type=int, default=None, help="seed (default: a random one)")
    parser.add_argument(
        "--workers", type=int, default=1, help="worker processes; 2 needs multi_worker (default: 1)"
    )
    parser.add_argument(
        "--history", type=Path, default=DEFAULT_HISTORY, help="where to write the history"
    )
    parser.add_argument(
        "--summary",
        type=Path,
        default=None,
        help="where a run writes its verdict as JSON (default: reports/soak-IMPL-DATABASE-Nw.json)",
    )
    parser.add_argument(
        "--check", type=Path, metavar="HISTORY", help="only judge a saved history, and run nothing"
    )
    parser.add_argument("--show", type=int, default=10, help="violations shown (default: 10)")


def parse_duration(text: str) -> float:
    """Seconds from ``90``, ``90s``, ``10m`` or ``1h``."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", text)
    if match is None:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (say 90s or 10m)")
    return float(match[1]) * {"": 1, "s": 1, "m": 60, "h": 3600}[match[2]]


def run(args: argparse.Namespace) -> int:
    """Run a soak (or only judge a saved history); 1 if the checker finds a violation."""
    if args.check is not None:
        records = read_history(args.check)
        report = check(records)
        print(render(report, limit=args.show))
        if args.summary is not None:
            _write_summary(args.summary, summarize(records, report, again=True))
        return 0 if report.ok else 1
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**31)
    redis = None
    if args.workers > 1:
        # Its own Redis, so that stopping it stops no one else's.
        redis = PrivateRedis()
        redis.start_blocking()
        os.environ["REDIS_URL"] = redis.url
    else:
        os.environ.pop("REDIS_URL", None)
    base_url = os.environ.get("DATABASE_URL", "")
    from ..plugin import load_implementation

    impl = load_implementation(args.impl)
    try:
        refusal = _refusal(impl, args.workers)
        if refusal:
            print(refusal, file=sys.stderr)
            return 2
        _soak(impl, args, seed, redis, base_url)
    finally:
        impl.close()
        if redis is not None:
            redis.stop_blocking()
    records = read_history(args.history)
    report = check(records)
    print(render(report, limit=args.show))
    print(f"history: {args.history} (judge it alone: python -m conformance soak --check PATH)")
    summary = summarize(records, report)
    _write_summary(
        args.summary
        or args.history.with_name(
            f"soak-{summary['impl']}-{summary['database']}-{summary['workers']}w"
            f"-{summary['duration']:g}s.json"
        ),
        summary,
    )
    return 0 if report.ok else 1


def _write_summary(path: Path, summary: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    print(f"summary: {path}")


def summarize(records: Sequence[Record], report: Report, *, again: bool = False) -> dict[str, Any]:
    """A run's verdict, machine-readable: what ran, what it met, what the checker found.

    What ``python -m conformance report`` shows beside the suites' grades;
    the history stays the evidence. ``again``: judged later, from the saved
    history, by the checker of the day.
    """
    meta = next((r for r in records if r["kind"] == "meta"), {})
    faults = Counter(
        r["fault"] for r in records if r["kind"] == "fault" and r.get("phase") == "start"
    )
    ran = max((r["t"] for r in records), default=0.0)
    return {
        "impl": meta.get("impl", "?"),
        "seed": meta.get("seed"),
        "duration": meta.get("duration"),
        "workers": meta.get("workers", 1),
        "database": meta.get("database", "own"),
        "redis": bool(meta.get("redis")),
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "ran": round(ran, 1),
        "recovery_bound": meta.get("recovery_bound"),
        "memory_bound": meta.get("memory_bound"),
        "counts": report.counts,
        "faults": dict(sorted(faults.items())),
        "judged_again": again,
        "ok": report.ok,
        "violations": report.by_check(),
        "first": [v.message for v in report.violations[:3]],
    }


def _refusal(impl: Implementation, workers: int) -> str:
    missing = [str(c) for c in NEEDED if c not in impl.capabilities]
    if missing:
        return f"Cannot soak {impl.name}: it does not declare {', '.join(missing)}."
    if workers > 1 and Capability.MULTI_WORKER not in impl.capabilities:
        return (
            f"Cannot soak {impl.name} with {workers} workers: it does not declare "
            "multi_worker (the reference does with REDIS_URL; the soak sets it to its own Redis)."
        )
    return ""


def _soak(
    impl: Implementation,
    args: argparse.Namespace,
    seed: int,
    redis: PrivateRedis | None,
    base_url: str,
) -> None:
    from .runner import Soak, SoakOptions, database_address

    database = database_address(base_url)
    kinds = available_faults(
        impl.capabilities, workers=args.workers, redis=redis is not None, postgres=bool(database)
    )
    faults = schedule(seed, args.duration, kinds, args.workers)
    timings = impl.timings
    bounds = {
        # A lost run is found within the declared orphan timeout; twice that,
        # and a margin, on a machine shared with other work.
        "recovery_bound": 2 * timings.orphan_timeout + MARGIN,
        # A cancelled run is stopped within the declared grace: plus a margin.
        "cancel_bound": timings.cancel_grace + MARGIN,
        "memory_bound": impl.budgets.finished_events + MEMORY_ALLOWANCE,
    }
    print(
        f"soak: {impl.name}, {args.workers} worker(s), {args.duration:g}s, seed {seed}, "
        f"{'postgresql' if database else 'its own database'}"
        f"{' + private Redis' if redis else ''}; {len(faults)} faults of {', '.join(kinds)}",
        flush=True,
    )
    with History(args.history) as history:
        history.write(
            "meta",
            impl=impl.name,
            seed=seed,
            duration=args.duration,
            workers=args.workers,
            capabilities=sorted(str(c) for c in impl.capabilities),
            timings=dataclasses.asdict(timings),
            database="postgresql" if database else "own",
            redis=redis is not None,
            schedule=[f.as_record() for f in faults],
            **bounds,
        )
        options = SoakOptions(duration=args.duration, seed=seed, workers=args.workers)
        soak = Soak(impl, options, history, redis=redis, database=database, faults=faults)
        asyncio.run(soak.run())
