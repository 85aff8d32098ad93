"""The benchmark's figures: every run kept, each figure's median and range, three reports.

:mod:`conformance.bench` measures each figure ``--repeat`` times; one run
alone says little on a shared machine (the same 10-client figure has come
out at 0.54 and at 1.52 of the broadcaster's). So ``bench.json`` keeps every
run beside each figure's median, lowest and highest; ``bench.md`` shows them
as "median (lowest..highest)" and marks a ratio whose two ranges overlap; and
``bench.png`` draws the fan-out's medians with their ranges, every run as a
point, with the date and the commit measured.

They are written to the output directory (``reports/``, which git ignores);
``--save`` also copies them to ``results/``, the tracked copy the README
links.
"""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure

#: Where ``--save`` keeps a copy: tracked, and linked from the README.
SAVED = Path("results")
#: The servers' output and this process's stderr while it measures.
LOG = "bench.log"
#: The colours of the two servers in the plot.
_COLOURS = ("tab:blue", "tab:orange")


# -- summarising --------------------------------------------------------------------


def spread(values: Sequence[float]) -> dict[str, float]:
    """The median of some runs' values, with the lowest and the highest."""
    if not values:
        raise ValueError("Cannot summarise no runs; measure each figure at least once.")
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def summarise(
    runs: Sequence[Mapping[str, Any]],
    *,
    spread_over: Iterable[str],
    total_over: Iterable[str] = (),
) -> dict[str, Any]:
    """Every run as measured, each ``spread_over`` key's spread, each ``total_over`` key's sum."""
    return {
        "runs": [dict(run) for run in runs],
        **{key: spread([run[key] for run in runs]) for key in spread_over},
        **{key: sum(run[key] for run in runs) for key in total_over},
    }


def describe_commit(where: Path) -> str:
    """The commit checked out at ``where``, "-dirty" if a tracked file differs; or "unknown"."""
    try:
        head = _git(where, "rev-parse", "--short=12", "HEAD")
        changed = _git(where, "status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{head}-dirty" if changed else head


def _git(where: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", *args], cwd=where, capture_output=True, text=True, check=True, timeout=30
    )
    return done.stdout.strip()


# -- bench.md -----------------------------------------------------------------------


def render_markdown(figures: Mapping[str, Any]) -> str:
    """The table: each figure's median and range for both servers, and the ratio of the medians."""
    ours, base = figures["implementation_figures"], figures["baseline_figures"]
    name = figures["implementation"]
    lines = [
        f"# Benchmark: {name} against a raw ASGI broadcaster",
        "",
        f"{figures['date']}, commit {figures['commit']}, Python {figures['python']}, "
        f"{figures['cpus']} CPUs. Each figure is the median of {figures['repeat']} runs, with "
        "the lowest and highest in brackets; bench.json keeps every run. Ratios are "
        f"{name} / broadcaster, of the medians: below 1 is better.",
        "",
        f"| figure | {name} | broadcaster | ratio |",
        "|---|---|---|---|",
    ]
    for mine, theirs in zip(ours["fan_out"], base["fan_out"], strict=True):
        n = mine["clients"]
        lines += [
            _row(f"server CPU per event, {n} clients (us)", mine, theirs, "cpu_us_per_event"),
            _row(f"events per second, {n} clients", mine, theirs, "events_per_second", digits=0),
        ]
    lines.append(
        _row(
            "server memory per idle stream (KB)",
            ours["idle_memory"],
            base["idle_memory"],
            "kb_per_stream",
        )
    )
    first, cancel, term = ours["first_event"], ours["cancel_to_everyone"], ours["sigterm"]
    floor = base["cancel_to_everyone"]
    streams = max(run["streams"] for run in term["runs"])
    exits = ", ".join(sorted({str(run["exit_status"]) for run in term["runs"]}))
    lines += [
        f"| connect to first event, running task (ms) | p50 {_cell(first['p50_ms'], 2)}, "
        f"p99 {_cell(first['p99_ms'], 2)} | n/a | |",
        _row(
            f"cancel to every one of {streams} clients, p50 (ms; broadcaster: one event to each)",
            cancel,
            floor,
            "p50_ms",
            digits=2,
        ),
        _row(f"cancel to every one of {streams} clients, p99 (ms)", cancel, floor, "p99_ms", 2),
        f"| SIGTERM with {streams} streams | {_cell(term['told'], 0)} told, exit {exits} after "
        f"{_cell(term['exit_s'], 2)} s | n/a | |",
        "| events lost, clients out of order (every run) | "
        f"{sum(r['lost'] for r in ours['fan_out'])}, "
        f"{sum(r['out_of_order'] for r in ours['fan_out'])} | "
        f"{sum(r['lost'] for r in base['fan_out'])}, "
        f"{sum(r['out_of_order'] for r in base['fan_out'])} | |",
    ]
    elsewhere = ours.get("other_worker")
    if elsewhere is not None:
        n = elsewhere["clients"]
        same = next(r for r in ours["fan_out"] if r["clients"] == n)
        lines.append(
            f"| both workers' CPU per event, {n} clients on the other worker (us) | "
            f"{_cell(elsewhere['cpu_us_per_event'], 1)} "
            f"({_cell(same['cpu_us_per_event'], 1)} on one worker; {elsewhere['lost']} lost) "
            "| n/a | |"
        )
    for variant in ours.get("variants", []):
        lines.append(
            _row(
                f"server CPU per event, {variant['clients']} clients: these tasks against "
                f"{variant['label']} on the same server (us)",
                variant["ours"],
                variant["theirs"],
                "cpu_us_per_event",
            )
        )
    if any(line.endswith("* |") for line in lines):
        lines += [
            "",
            "\\* the two ranges overlap: these runs do not tell the two servers apart.",
        ]
    return "\n".join(lines) + "\n"


def _cell(figure: Mapping[str, float], digits: int) -> str:
    """ "3.2 (3.1..14.9)": the median and the range; the median alone when every run agreed."""
    median = f"{figure['median']:.{digits}f}"
    low, high = f"{figure['min']:.{digits}f}", f"{figure['max']:.{digits}f}"
    return median if low == high else f"{median} ({low}..{high})"


def _row(
    label: str, mine: Mapping[str, Any], theirs: Mapping[str, Any], key: str, digits: int = 1
) -> str:
    ours, base = mine[key], theirs[key]
    ratio = ours["median"] / base["median"] if base["median"] else float("nan")
    overlap = ours["min"] <= base["max"] and base["min"] <= ours["max"]
    mark = "*" if overlap else ""
    return f"| {label} | {_cell(ours, digits)} | {_cell(base, digits)} | {ratio:.2f}{mark} |"


# -- bench.png ----------------------------------------------------------------------


def draw(figures: Mapping[str, Any]) -> Figure:
    """CPU per event against clients: each server's medians with their ranges, and every run."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.4, 4.6))
    axes = figure.subplots()
    servers = (
        (figures["implementation"], "implementation_figures", 0.94),
        ("raw ASGI broadcaster", "baseline_figures", 1.06),
    )
    # Each server a little to one side of the other, so their ranges do not hide each other.
    for (label, key, nudge), colour in zip(servers, _COLOURS, strict=True):
        rows = figures[key]["fan_out"]
        clients = [row["clients"] * nudge for row in rows]
        cpu = [row["cpu_us_per_event"] for row in rows]
        medians = [c["median"] for c in cpu]
        below = [c["median"] - c["min"] for c in cpu]
        above = [c["max"] - c["median"] for c in cpu]
        axes.errorbar(
            clients,
            medians,
            yerr=[below, above],
            fmt="o-",
            capsize=4,
            color=colour,
            label=f"{label}: median, lowest to highest",
        )
        every = [
            (row["clients"] * nudge, run["cpu_us_per_event"]) for row in rows for run in row["runs"]
        ]
        axes.plot(
            [x for x, _ in every],
            [y for _, y in every],
            "x",
            alpha=0.5,
            color=colour,
            label=f"{label}: each run",
        )
    axes.set_xscale("log")
    axes.set_xlabel("clients of one task")
    axes.set_ylabel("server CPU per delivered event (us)")
    axes.set_ylim(bottom=0)
    axes.legend(fontsize="small")
    axes.set_title("Fan-out cost, lower is better")
    figure.text(
        0.01,
        0.01,
        f"{figures['date']}, commit {figures['commit']}, {figures['repeat']} runs of each figure,"
        f" Python {figures['python']}, {figures['cpus']} CPUs",
        fontsize="x-small",
        color="0.35",
    )
    figure.tight_layout(rect=(0, 0.03, 1, 1))
    return figure


# -- writing ------------------------------------------------------------------------


def write_reports(figures: Mapping[str, Any], output: Path, save: Path | None) -> list[Path]:
    """bench.json, bench.md and (with matplotlib) bench.png in ``output``; copies in ``save``.

    Return the paths written.
    """
    output.mkdir(parents=True, exist_ok=True)
    (output / "bench.json").write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    (output / "bench.md").write_text(render_markdown(figures), encoding="utf-8")
    written = [output / "bench.json", output / "bench.md"]
    try:
        plotted = draw(figures)
    except ImportError:
        print("matplotlib is not installed: no plot", file=sys.stderr)
    else:
        plotted.savefig(output / "bench.png", dpi=120)
        written.append(output / "bench.png")
    if save is None:
        return written
    save.mkdir(parents=True, exist_ok=True)
    kept = [Path(shutil.copyfile(path, save / path.name)) for path in written]
    return [*written, *kept]
