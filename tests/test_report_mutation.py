"""The mutation summary ``python3 dev.py mutate`` writes, as the report reads it.

``mutation/reports.py`` writes reports/mutation.json; ``dev.py report`` keeps
it as results/mutation.json and conformance/report.py renders it in
TEST_RESULTS.md. These tests build a summary from mutants whose results are
given, without running mutmut.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from conformance import report  # noqa: E402
from mutation import hits, judging, reports, running, sampling  # noqa: E402

CHANGE = "`if size > limit:` → `if size >= limit:`"


def mutants() -> list[running.Mutant]:
    """Five mutants of bus.py and one of sse.py, one of each status the score tells apart."""
    bus, sse = "src/streaming/bus.py", "src/streaming/sse.py"
    return [
        running.Mutant("streaming.bus.xǁHubǁpublish__mutmut_1", bus, status="killed"),
        running.Mutant("streaming.bus.xǁHubǁpublish__mutmut_2", bus, status="timeout"),
        running.Mutant(
            "streaming.bus.xǁHubǁpublish__mutmut_3",
            bus,
            status="survived",
            where="bus.py:40",
            change=CHANGE,
        ),
        running.Mutant(
            "streaming.bus.x_encode__mutmut_1",
            bus,
            status="suspicious",
            where="bus.py:12",
            change="`a` → `b`",
        ),
        running.Mutant(
            "streaming.bus.x_encode__mutmut_2",
            bus,
            status="no tests",
            where="bus.py:13",
            change="`c` → `d`",
        ),
        running.Mutant("streaming.sse.x_frame__mutmut_1", sse, status="killed"),
    ]


def summary(tmp_path: Path, judgements: str = "") -> dict[str, Any]:
    path = tmp_path / "judgements.toml"
    path.write_text(judgements, encoding="utf-8")
    tested = mutants()
    judging.judge_on_file(tested, path)
    return summarize(tested)


def summarize(tested: list[running.Mutant], **given: Any) -> dict[str, Any]:
    """reports.summarize() of ``tested``, as a whole run of mutants() unless ``given`` differs."""
    arguments: dict[str, Any] = {
        "tool": "mutmut 3.8.1",
        "command": "python3 dev.py mutate --sample 1 --max-children 2",
        "population": {"bus.py": 5, "sse.py": 1},
        "phases": [],
        "seconds": 60,
        "workers": 2,
        "sample": 1,
        "only_mutate": ["src/streaming/bus.py", "src/streaming/sse.py"],
    }
    return reports.summarize(tested=tested, **{**arguments, **given})


EQUIVALENT = f"""
[[survivor]]
id = "streaming.bus.xǁHubǁpublish__mutmut_3"
change = "{CHANGE}"
judged = "equivalent: size never equals limit here"
"""


def test_summary_when_statuses_mixed_then_each_counted_and_timeouts_killed(
    tmp_path: Path,
) -> None:
    made = summary(tmp_path)
    bus = made["modules"]["bus.py"]
    assert {k: bus[k] for k in ("mutants", "killed", "timeout", "survived")} == {
        "mutants": 5,
        "killed": 1,
        "timeout": 1,
        "survived": 1,
    }
    assert (bus["suspicious"], bus["no_tests"], bus["equivalent"]) == (1, 1, 0)
    assert bus["score"] == 0.4
    assert made["total"]["score"] == 0.5
    survivors = made["survivors"]
    assert [s["function"] for s in survivors] == ["encode", "encode", "Hub.publish"]
    assert all(s["judged"].startswith("not judged yet") for s in survivors)


def test_summary_when_survivor_judged_equivalent_then_scored_without_it(
    tmp_path: Path,
) -> None:
    total = summary(tmp_path, EQUIVALENT)["total"]
    assert total["equivalent"] == 1
    assert (total["score"], total["score_without_equivalents"]) == (0.5, 0.6)


def test_summary_when_judged_on_another_change_then_not_applied(tmp_path: Path) -> None:
    stale = EQUIVALENT.replace("size >= limit", "size != limit")
    made = summary(tmp_path, stale)
    assert made["total"]["equivalent"] == 0
    judged = made["survivors"][2]["judged"]
    assert judged.startswith("not judged yet (the judgement on file was made on another change")


def test_rejudge_when_judgement_added_then_scores_redone_without_a_run(tmp_path: Path) -> None:
    made = json.loads(json.dumps(summary(tmp_path)))  # as read back from mutation.json
    path = tmp_path / "judged-later.toml"
    path.write_text(EQUIVALENT, encoding="utf-8")
    again = judging.rejudge(made, path)
    assert again["total"]["score_without_equivalents"] == 0.6
    assert again["modules"]["bus.py"]["score_without_equivalents"] == 0.5
    assert again["modules"]["sse.py"]["equivalent"] == 0
    assert [s["equivalent"] for s in again["survivors"]] == [False, False, True]


def test_again_when_survivors_retested_then_killed_ones_keep_their_result(tmp_path: Path) -> None:
    before = json.loads(json.dumps(summary(tmp_path)))
    now = {m.id: running.Mutant(m.id, m.source) for m in mutants()}  # none tested yet
    # This run tested only the survivors: one of them is killed now.
    now["streaming.bus.x_encode__mutmut_1"].status = "killed"
    for name in ("streaming.bus.xǁHubǁpublish__mutmut_3", "streaming.bus.x_encode__mutmut_2"):
        now[name].status = "survived"
    sampling.keep_killed(now, before, chosen=[])
    statuses = [m.status for m in now.values()]
    assert statuses == ["killed", "killed", "survived", "killed", "survived", "killed"]
    earlier = now["streaming.sse.x_frame__mutmut_1"].killed_by
    assert earlier == f"an earlier run ({before['date']})"
    made = summarize(
        list(now.values()),
        command="python3 dev.py mutate --sample 1 --max-children 2 --again",
        seconds=6,
        previous=before,
    )
    assert made["total"]["killed"] == 4
    assert made["again"]["kept_killed"] == 3
    assert made["again"]["tested"] == len(before["survivors"]) == 3
    assert "tested again only the 3 survivors" in reports.render_markdown(made)
    # The score the sample had before tests were written against it stays in view.
    assert made["again"]["first_pass"] == before["total"]
    section = "\n".join(report._mutation_section(json.loads(json.dumps(made))))
    assert "Before those tests, as first run: 3 of 6 mutants of the reference killed" in section


def test_again_when_mutated_modules_changed_since_then_refused(tmp_path: Path) -> None:
    module = tmp_path / "reference" / "streaming" / "bus.py"
    module.parent.mkdir(parents=True)
    module.write_text("LIMIT = 1\n", encoding="utf-8")
    sources = ["src/streaming/bus.py"]
    (tmp_path / "reports").mkdir()
    made = {"digest": sampling.digest(tmp_path, sources), "survivors": [], "sample": 8}
    (tmp_path / "reports" / "mutation.json").write_text(json.dumps(made), encoding="utf-8")
    assert sampling.previous_run(tmp_path, sources)["path"] == "reports/mutation.json"
    module.write_text("LIMIT = 2\n", encoding="utf-8")
    with pytest.raises(SystemExit, match="mutated modules changed since the run"):
        sampling.previous_run(tmp_path, sources)


def test_fresh_sample_when_offset_given_then_named_in_both_reports(tmp_path: Path) -> None:
    tested = mutants()
    made = summarize(
        tested,
        command="python3 dev.py mutate --sample 8 --offset 4 --max-children 2",
        population={"bus.py": 40, "sse.py": 8},
        sample=8,
        offset=4,
    )
    assert made["offset"] == 4
    assert "(mutants 5, 13, 21, ... in mutmut's order)" in reports.render_markdown(made)
    section = "\n".join(report._mutation_section(json.loads(json.dumps(made))))
    assert "every 8th mutant of each module, starting from its 5th, 6 of the 48" in section


def test_written_summary_when_rendered_by_report_then_scores_and_modules_shown(
    tmp_path: Path,
) -> None:
    reports.write_reports(tmp_path / "reports", summary(tmp_path, EQUIVALENT))
    written = report._read_summary(tmp_path / "reports" / "mutation.json")
    lines = report._mutation_section(written, "results/mutation.json")
    text = "\n".join(lines)
    assert (
        "3 of 6 mutants of the reference killed (**50.0%**); without the 1 judged "
        "equivalent, 3 of 5 (**60.0%**)."
    ) in text
    assert "| bus.py | 5 | 2 | 3 | 1 | 40.0% | 50.0% |" in text
    markdown = (tmp_path / "reports" / "mutation.md").read_text(encoding="utf-8")
    assert "3 survivors: 1 judged equivalent, 0 judged not killed" in markdown
    unjudged = (tmp_path / "reports" / "mutation-unjudged.toml").read_text(encoding="utf-8")
    assert "x_encode__mutmut_1" in unjudged and "publish__mutmut_3" not in unjudged


def test_hits_when_processes_wrote_names_then_collected_once_and_files_removed(
    tmp_path: Path,
) -> None:
    (tmp_path / "101.hits").write_text("streaming.bus.x_a\nstreaming.bus.x_b\n", encoding="utf-8")
    (tmp_path / "102.hits").write_text("streaming.bus.x_b\n", encoding="utf-8")
    assert hits.collect(tmp_path) == {"streaming.bus.x_a", "streaming.bus.x_b"}
    assert hits.collect(tmp_path) == set()
    assert list(tmp_path.iterdir()) == []


def test_hits_when_not_stats_run_or_in_session_process_then_nothing_installed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trampoline = pytest.importorskip("mutmut.mutation.trampoline")
    recorder = trampoline.record_trampoline_hit
    monkeypatch.setenv(hits.DIRECTORY, str(tmp_path))
    monkeypatch.setenv("MUTANT_UNDER_TEST", "streaming.bus.x_a__mutmut_1")
    hits.install()
    assert trampoline.record_trampoline_hit is recorder
    monkeypatch.setenv("MUTANT_UNDER_TEST", "stats")
    monkeypatch.setenv(hits.SESSION, str(os.getpid()))
    hits.install()
    assert trampoline.record_trampoline_hit is recorder
