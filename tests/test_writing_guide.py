"""The guide to writing an implementation (conformance/GUIDE.md) cannot rot.

Its minimal implementation is extracted from the Markdown, as a reader would
copy it, and graded on FUNC and HTTP: every case it is graded on must pass.
Its table of capabilities must be what ``python -m conformance cases
--table`` prints today.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conformance import cases

pytestmark = pytest.mark.timeout(180)

ROOT = Path(__file__).resolve().parents[1]
GUIDE = ROOT / "conformance" / "GUIDE.md"


def code_block(name: str) -> str:
    """The fenced Python block of the guide whose info string names ``name``."""
    found = re.findall(rf"```python {re.escape(name)}\n(.*?)```", GUIDE.read_text(), re.S)
    assert len(found) == 1, f"expected one block named {name} in {GUIDE}"
    return str(found[0])


def test_guide_minimal_implementation_when_graded_then_every_func_and_http_case_passes(
    tmp_path: Path,
) -> None:
    source = code_block("minimal_impl.py")
    assert len(source.splitlines()) < 350, "the guide's implementation is to stay minimal"
    (tmp_path / "guide_minimal_impl.py").write_text(source, encoding="utf-8")
    results = tmp_path / "results.jsonl"
    run = subprocess.run(
        [
            sys.executable, "-m", "pytest", "--pyargs", "conformance.suites",
            "--impl", "guide_minimal_impl:MinimalImplementation",
            "--case", "FUNC", "--case", "HTTP", "-p", "no:randomly", "-p", "no:django",
            f"--conformance-results={results}",
        ],
        cwd=tmp_path,  # a third party's directory: no pytest.ini of ours
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
        capture_output=True, text=True, timeout=170, check=False,
    )  # fmt: skip
    output = run.stdout[-4000:] + run.stderr[-2000:]
    assert run.returncode == 0, output
    records = [json.loads(line) for line in results.read_text().splitlines()]
    graded = {record["case"] for record in records if record["grade"] == "pass"}
    assert {record["grade"] for record in records} <= {"pass", "unsupported"}, output
    assert {f"FUNC-{n}" for n in range(1, 21)} <= graded, sorted(graded)
    assert {r["implementation"] for r in records} == {"minimal"}
    # No pytest.ini: the plugin set pytest-asyncio's loop scope itself, with no warning.
    assert "asyncio_default_fixture_loop_scope=function" in output, output
    assert "is unset" not in output, output


def test_guide_capability_table_when_compared_then_what_cases_lists_today() -> None:
    table = cases.table(cases.collect())
    assert table in GUIDE.read_text(), (
        "GUIDE.md's table of capabilities is stale; replace it with the output of "
        "python -m conformance cases --table"
    )
