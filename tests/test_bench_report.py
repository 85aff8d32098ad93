"""The benchmark's bookkeeping (conformance/bench_report.py): every run kept, median and range.

The figures here have the shape ``python -m conformance bench`` measures:
per-run values of two real runs of the reference on this machine, three runs
each (the 10-client run that gave a ratio of 1.52 beside two that gave about
0.54). Nothing is measured: the full benchmark takes minutes.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from conformance import bench_report
from conformance.bench_report import spread, summarise

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[1]

#: Per-run CPU per delivered event (us) and events per second, by clients.
OURS = {
    10: [(3.2, 368_346.5), (14.9, 59_051.0), (3.1, 371_002.1)],
    100: [(1.1, 1_052_891.0), (1.2, 1_010_404.2), (1.1, 1_061_002.9)],
    1000: [(2.2, 588_147.8), (2.4, 560_120.4), (2.1, 590_210.0)],
}
BASE = {
    10: [(5.9, 166_421.3), (9.8, 62_813.0), (5.6, 170_250.2)],
    100: [(6.1, 165_074.5), (6.0, 166_000.1), (6.3, 160_501.7)],
    1000: [(9.3, 109_279.4), (9.1, 111_000.0), (9.6, 106_020.3)],
}


def fan_out(runs: dict[int, list[tuple[float, float]]]) -> list[dict[str, Any]]:
    rows = []
    for clients, measured in runs.items():
        per_run = [
            {"cpu_us_per_event": cpu, "events_per_second": rate, "lost": 0, "out_of_order": 0}
            for cpu, rate in measured
        ]
        rows.append(
            {
                "clients": clients,
                "events": 100_000 // clients,
                **summarise(
                    per_run,
                    spread_over=("cpu_us_per_event", "events_per_second"),
                    total_over=("lost", "out_of_order"),
                ),
            }
        )
    return rows


def latencies(*p50s: float) -> dict[str, Any]:
    runs = [{"p50_ms": p50, "p99_ms": p50 * 1.7} for p50 in p50s]
    return summarise(runs, spread_over=("p50_ms", "p99_ms"))


def measured() -> dict[str, Any]:
    """Figures as ``_bench`` returns them for three runs of each figure."""
    sigterm = [
        {"streams": 1000, "told": 1000, "exit_status": 0, "exit_s": exit_s}
        for exit_s in (2.33, 2.41, 2.29)
    ]
    return {
        "implementation": "reference",
        "version": "0.3.0",
        "date": "2026-12-07",
        "commit": "2bafcc5d1b4b",
        "python": "3.11.7",
        "cpus": 2,
        "repeat": 3,
        "implementation_figures": {
            "idle_memory": summarise(
                [{"kb_per_stream": kb} for kb in (12.756, 12.8, 12.71)],
                spread_over=("kb_per_stream",),
            ),
            "fan_out": fan_out(OURS),
            "first_event": latencies(0.155, 0.16, 0.149),
            "cancel_to_everyone": latencies(18.0, 19.2, 17.5),
            "sigterm": summarise(sigterm, spread_over=("told", "exit_s")),
        },
        "baseline_figures": {
            "idle_memory": summarise(
                [{"kb_per_stream": kb} for kb in (13.44, 13.5, 13.38)],
                spread_over=("kb_per_stream",),
            ),
            "fan_out": fan_out(BASE),
            "cancel_to_everyone": latencies(29.5, 30.1, 28.7),
        },
    }


def test_spread_when_runs_differ_then_median_lowest_and_highest() -> None:
    assert spread([3.2, 14.9, 3.1]) == {"median": 3.2, "min": 3.1, "max": 14.9}
    assert spread([2.0, 1.0, 4.0, 3.0]) == {"median": 2.5, "min": 1.0, "max": 4.0}


def test_spread_when_no_runs_then_refused_saying_why() -> None:
    with pytest.raises(ValueError, match="Cannot summarise no runs"):
        spread([])


def test_summarise_when_fan_out_runs_then_every_run_kept_with_spreads_and_totals() -> None:
    runs = [
        {"cpu_us_per_event": 3.2, "events_per_second": 368_000.0, "lost": 0, "out_of_order": 0},
        {"cpu_us_per_event": 14.9, "events_per_second": 59_000.0, "lost": 3, "out_of_order": 1},
        {"cpu_us_per_event": 3.1, "events_per_second": 371_000.0, "lost": 2, "out_of_order": 0},
    ]
    summary = summarise(
        runs,
        spread_over=("cpu_us_per_event", "events_per_second"),
        total_over=("lost", "out_of_order"),
    )
    assert summary == {
        "runs": runs,
        "cpu_us_per_event": {"median": 3.2, "min": 3.1, "max": 14.9},
        "events_per_second": {"median": 368_000.0, "min": 59_000.0, "max": 371_000.0},
        "lost": 5,
        "out_of_order": 1,
    }


def test_json_when_written_then_every_figure_keeps_every_run(tmp_path: Path) -> None:
    bench_report.write_reports(measured(), tmp_path / "reports", save=None)
    kept = json.loads((tmp_path / "reports" / "bench.json").read_text(encoding="utf-8"))
    ours, base = kept["implementation_figures"], kept["baseline_figures"]
    for figures, runs in ((ours, OURS), (base, BASE)):
        for row in figures["fan_out"]:
            kept_runs = [(r["cpu_us_per_event"], r["events_per_second"]) for r in row["runs"]]
            assert kept_runs == runs[row["clients"]]
    assert [r["kb_per_stream"] for r in ours["idle_memory"]["runs"]] == [12.756, 12.8, 12.71]
    assert [r["exit_s"] for r in ours["sigterm"]["runs"]] == [2.33, 2.41, 2.29]
    assert len(ours["first_event"]["runs"]) == len(base["cancel_to_everyone"]["runs"]) == 3


def test_markdown_when_runs_spread_then_each_figure_shows_median_and_range() -> None:
    table = bench_report.render_markdown(measured())
    assert "| server CPU per event, 10 clients (us) | 3.2 (3.1..14.9) | 5.9 (5.6..9.8) |" in table
    assert "| events per second, 100 clients | 1052891 (1010404..1061003) |" in table
    assert "| server memory per idle stream (KB) | 12.8 (12.7..12.8) | 13.4 (13.4..13.5) |" in table
    assert "p50 0.15 (0.15..0.16)" in table
    assert "1000 told, exit 0 after 2.33 (2.29..2.41) s" in table


def test_markdown_when_ranges_overlap_then_ratio_marked_as_not_telling_them_apart() -> None:
    table = bench_report.render_markdown(measured())
    # 10 clients: 3.1..14.9 against 5.6..9.8 overlap; 100 clients: 1.1..1.2 against 6.0..6.3 do not.
    assert "| 3.2 (3.1..14.9) | 5.9 (5.6..9.8) | 0.54* |" in table
    assert "| 1.1 (1.1..1.2) | 6.1 (6.0..6.3) | 0.18 |" in table
    assert "* the two ranges overlap" in table


def test_markdown_when_rendered_then_says_date_commit_and_runs_per_figure() -> None:
    heading = bench_report.render_markdown(measured()).split("|", 1)[0]
    assert "2026-12-07" in heading and "commit 2bafcc5d1b4b" in heading
    assert "median of 3 runs" in heading and "lowest and highest" in heading


def test_markdown_when_one_run_then_no_range_shown() -> None:
    figures = measured()
    for row in figures["implementation_figures"]["fan_out"]:
        row.update(
            summarise(
                row["runs"][:1],
                spread_over=("cpu_us_per_event", "events_per_second"),
                total_over=("lost", "out_of_order"),
            )
        )
    table = bench_report.render_markdown(figures)
    assert "| server CPU per event, 10 clients (us) | 3.2 | 5.9 (5.6..9.8) |" in table


def test_plot_when_drawn_then_ranges_every_run_date_and_commit_shown() -> None:
    from matplotlib.container import ErrorbarContainer

    figure = bench_report.draw(measured())
    (axes,) = figure.axes
    bars = [c for c in axes.containers if isinstance(c, ErrorbarContainer)]
    assert len(bars) == 2, "one median-and-range line per server"
    for container in bars:
        (line, _caps, (ranges,)) = container.lines
        assert len(line.get_xdata()) == 3
        lows_highs = {(round(seg[0, 1], 6), round(seg[1, 1], 6)) for seg in ranges.get_segments()}
        assert (3.1, 14.9) in lows_highs or (5.6, 9.8) in lows_highs, lows_highs
    run_points = sum(
        len(line.get_xdata()) for line in axes.lines if line.get_label().endswith("each run")
    )
    assert run_points == 2 * 3 * 3, "every run of every fan-out, both servers"
    texts = " ".join([axes.get_title(), *(t.get_text() for t in figure.texts)])
    assert "2026-12-07" in texts and "2bafcc5d1b4b" in texts


def test_write_when_not_saved_then_only_the_output_directory_is_written(tmp_path: Path) -> None:
    written = bench_report.write_reports(measured(), tmp_path / "out", save=None)
    assert sorted(p.name for p in written) == ["bench.json", "bench.md", "bench.png"]
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == [
        "out",
        "out/bench.json",
        "out/bench.md",
        "out/bench.png",
    ]


def test_write_when_saved_then_a_copy_of_each_file_in_the_saved_directory(tmp_path: Path) -> None:
    written = bench_report.write_reports(measured(), tmp_path / "out", save=tmp_path / "keep")
    for name in ("bench.json", "bench.md", "bench.png"):
        kept = tmp_path / "keep" / name
        assert kept in written
        assert kept.read_bytes() == (tmp_path / "out" / name).read_bytes()


def git(*args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=ROOT, capture_output=True, text=True, check=True, timeout=30
    ).stdout


@pytest.fixture
def checkout() -> None:
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: the repository's tracked files cannot be read")


@pytest.mark.usefixtures("checkout")
def test_repository_when_bench_runs_then_reports_untracked_and_saved_copy_where_linked() -> None:
    assert git("ls-files", "reports/bench.*") == ""
    ignored = git("check-ignore", "reports/bench.json", "reports/bench.md", "reports/bench.png")
    assert ignored.split() == ["reports/bench.json", "reports/bench.md", "reports/bench.png"]
    assert git("ls-files", "results/bench.*").split() == [
        "results/bench.json",
        "results/bench.md",
        "results/bench.png",
    ]
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "(results/bench.md)" in readme and "(reports/bench.md)" not in readme
    assert "--save" in readme
    listing = (ROOT / "reports" / "README.md").read_text(encoding="utf-8")
    assert "results/bench" in listing and "(kept in git)" not in listing
