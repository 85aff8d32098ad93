"""Contract versions: the previous major is graded through shims; others get one clear message.

``tests/contract1_impl.py`` is frozen: the guide's minimal implementation as
a third party wrote it against contract 1.0 (``refresh``, ``update_fields``,
no ``contract_version``). It must still be graded, case by case, with the
deprecations said once; an implementation that declares a version the suite
cannot grade gets one message and nothing runs. ``doctor`` names each problem.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conformance import CONTRACT_VERSION, compat

pytestmark = pytest.mark.timeout(180)

ROOT = Path(__file__).resolve().parents[1]
CONTRACT1 = "tests.contract1_impl:Contract1Implementation"


def _session(*args: str, results: Path | None = None) -> subprocess.CompletedProcess[str]:
    extra = [f"--conformance-results={results}"] if results else []
    pytest_ = [sys.executable, "-m", "pytest", "-p", "no:randomly", "-p", "no:cacheprovider"]
    return subprocess.run(
        [*pytest_, *args, *extra],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=170,
        check=False,
    )


def test_contract1_implementation_when_graded_then_through_the_shims_with_one_note(
    tmp_path: Path,
) -> None:
    results = tmp_path / "results.jsonl"
    run = _session(
        "conformance/suites", "--impl", CONTRACT1, "--case", "FUNC", "--case", "HTTP",
        results=results,
    )  # fmt: skip
    output = run.stdout[-4000:] + run.stderr[-2000:]
    assert run.returncode == 0, output
    records = [json.loads(line) for line in results.read_text().splitlines()]
    grades = {record["grade"] for record in records}
    assert grades <= {"pass", "unsupported"} and "pass" in grades, output
    assert {record["contract"] for record in records} == {"1 (shims)"}
    assert "TypeError" not in output and "abstract" not in output
    # Said once, at the end, not per case: the terms and the old names it used.
    assert output.count("names fields as contract 1.x did (update_fields)") == 1, output
    assert output.count(str(compat.MIGRATION_NOTES)) == 1, output
    used = (
        "deprecated names used: Runtime.update_fields (now Runtime.write_fields), "
        "TaskContext.refresh (now TaskContext.read_fields), "
        "TaskContext.update_fields (now TaskContext.write_fields)"
    )
    assert used in output, output


@pytest.mark.parametrize(
    ("declared", "says"),
    [
        ("3.0", "install a streaming-conformance that speaks 3.x"),
        ("0.9", "grading 1.x at the oldest. What changed, with code before and after: "),
        ("two", "expected a version such as"),
    ],
    ids=["newer-major", "older-major", "not-a-version"],
)
def test_implementation_when_its_contract_cannot_be_graded_then_one_message_and_nothing_runs(
    tmp_path: Path, declared: str, says: str
) -> None:
    module = tmp_path / "versioned_impl.py"
    module.write_text(
        "from tests.contract1_impl import Contract1Implementation\n\n"
        "class Versioned(Contract1Implementation):\n"
        "    name = 'versioned'\n"
        f"    contract_version = {declared!r}\n",
        encoding="utf-8",
    )
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "conformance/suites", "--impl",
         "versioned_impl:Versioned", "--case", "FUNC", "-p", "no:randomly"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(tmp_path)])},
        capture_output=True, text=True, timeout=170, check=False,
    )  # fmt: skip
    assert run.returncode == pytest.ExitCode.USAGE_ERROR, run.stdout + run.stderr
    errors = [line for line in run.stderr.splitlines() if line.startswith("ERROR: ")]
    assert len(errors) == 1 and says in errors[0], run.stderr
    assert f"contract {CONTRACT_VERSION}" in errors[0] or "two" in errors[0]
    assert "passed" not in run.stdout and "failed" not in run.stdout


def test_declared_previous_major_when_it_uses_the_new_names_then_graded_all_the_same() -> None:
    # A 1.x declaration that already moved to the 2.x names is forwarded to them.
    from conformance.compat import LegacyContext

    class NewNames:
        task_id, fields = "1", {}

        async def read_fields(self) -> dict[str, int]:
            return {"new": 1}

    class OldNames:
        task_id, fields = "1", {}

        async def refresh(self) -> dict[str, int]:
            return {"old": 1}

    import asyncio

    assert asyncio.run(LegacyContext(NewNames()).read_fields()) == {"new": 1}
    assert asyncio.run(LegacyContext(OldNames()).read_fields()) == {"old": 1}


def test_doctor_when_run_on_the_reference_then_clean_and_on_contract1_then_each_problem_named() -> (
    None
):
    def doctor(name: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "conformance", "doctor", "--impl", name],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            capture_output=True,
            text=True,
            timeout=170,
            check=False,
        )

    clean = doctor("reference")
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert clean.stdout.startswith("✓ reference: nothing found wrong"), clean.stdout
    old = doctor(CONTRACT1)
    assert old.returncode == 1, old.stdout + old.stderr
    problems = [line for line in old.stdout.splitlines() if line.startswith("✗ ")]
    named = "\n".join(problems)
    for expected in (
        "declares no contract_version and names fields as contract 1.x did",
        "Runtime.update_fields is the 1.x name of Runtime.write_fields",
        "lacks read_fields (contract: TaskContext.read_fields); it has refresh",
        "lacks write_fields (contract: TaskContext.write_fields); it has update_fields",
        "Timings.keepalive is left at the default",
    ):
        assert expected in named, named
    assert all("(" in line and line.endswith(")") for line in problems), named


def test_doctor_settings_when_several_files_configure_pytest_then_the_one_pytest_reads(
    tmp_path: Path,
) -> None:
    from conformance import doctor

    project = tmp_path / "project"
    project.mkdir()
    (project / "tox.ini").write_text("[pytest]\nasyncio_default_fixture_loop_scope = session\n")
    (project / "setup.cfg").write_text("[tool:pytest]\naddopts = -p no:conformance\n")
    # tox.ini's [pytest] comes before setup.cfg's: its loop scope is the one read.
    assert doctor._pytest_ini(project) == {"asyncio_default_fixture_loop_scope": "session"}
    (project / "pyproject.toml").write_text('[tool.pytest.ini_options]\naddopts = "-x"\n')
    # pyproject.toml's table comes before tox.ini.
    assert doctor._pytest_ini(project) == {"addopts": "-x"}
    # An empty pytest.ini still wins: pytest reads it and stops looking.
    (project / "pytest.ini").write_text("")
    assert doctor._pytest_ini(project) == {}
    nested = project / "tests"
    nested.mkdir()
    (nested / "setup.cfg").write_text("[metadata]\nname = x\n")
    # A setup.cfg without [tool:pytest] is passed over for the folder above.
    assert doctor._pytest_ini(nested) == {}
    (project / "pytest.ini").unlink()
    assert doctor._pytest_ini(nested) == {"addopts": "-x"}
