"""``python -m conformance cases`` reads the suites' source; pytest imports them.

The listing reads markers from the syntax tree, so a marker written in a way
it does not understand (a helper, a loop, a decorator factory) would drop a
case or a capability from the listing without a word. This test collects the
suites as pytest does and holds the listing to what pytest found.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conformance import cases

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parents[1]

#: A plugin that writes, for each collected case, its ID and the capabilities its markers need.
DUMP = """
import json, os

def pytest_collection_finish(session):
    found = []
    for item in session.items:
        case = item.get_closest_marker("case")
        if case is None:
            continue
        needs = set()
        for mark in item.iter_markers("requires"):
            needs.update(str(a) for a in mark.args)
        found.append([item.path.name, item.originalname, case.args[0], sorted(needs)])
    with open(os.environ["DUMP_TO"], "w") as f:
        json.dump(found, f)
"""


def test_listing_when_compared_with_pytest_collection_then_the_same_cases_and_needs(
    tmp_path: Path,
) -> None:
    (tmp_path / "dump_cases.py").write_text(DUMP, encoding="utf-8")
    dumped = tmp_path / "collected.json"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)]),
        "DUMP_TO": str(dumped),
    }
    argv = "--collect-only -q -p dump_cases -p no:randomly -p no:cacheprovider -p no:django"
    argv += " --impl tests.fake_impls:FullImpl --pyargs conformance.suites"
    collected = subprocess.run(
        [sys.executable, "-m", "pytest", *argv.split()],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=100,
    )
    assert collected.returncode == 0, collected.stdout[-2000:] + collected.stderr[-2000:]
    # Fixtures that need a capability (server_url: http) are not markers; the
    # listing adds them, so compare what both can see: the markers' own.
    # A parametrized case may need more for some of its parameters (OPS-1's
    # cancel and retry variants): the listing gives what every variant needs.
    by_pytest: dict[tuple[str, str, str], set[str]] = {}
    for suite, test, case_id, needs in json.loads(dumped.read_text(encoding="utf-8")):
        by_pytest.setdefault((suite, test, case_id), set(needs)).intersection_update(needs)
    listed = {(c.suite, c.test, c.id): set(c.needs) for c in cases.collect()}
    assert set(listed) == set(by_pytest)
    fixture_needs = set(cases.FIXTURE_NEEDS.values())
    for key, needs in by_pytest.items():
        assert needs <= listed[key] <= needs | fixture_needs, key
