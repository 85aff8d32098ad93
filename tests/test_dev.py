"""``dev.py test``: what it says as it runs, and that it writes only to reports/ (issue 25).

Each test runs dev.py's own session command, for real, on a small project in
a temporary directory: pytest with pytest-xdist, coverage and hypothesis, as
the full run has them, only on one test file and one xdist process.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

import dev

pytestmark = pytest.mark.timeout(120)

INI = """
[pytest]
addopts = -p no:cacheprovider -p no:randomly
"""

#: A test that hypothesis runs, and that coverage measures.
SAMPLE = """
from hypothesis import given, strategies as st


@given(st.integers())
def test_sample(number):
    assert number + 0 == number
"""


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A small project: an ini file and one test that uses hypothesis.

    Without git to say ``__pycache__`` is ignored, Python's own bytecode cache
    would read as a write outside reports/: the session writes none, wherever
    the test runs (tox does not pass PYTHONDONTWRITEBYTECODE on).
    """
    monkeypatch.setenv("PYTHONDONTWRITEBYTECODE", "1")
    (tmp_path / "pytest.ini").write_text(INI)
    (tmp_path / "test_sample.py").write_text(SAMPLE)
    return tmp_path


def run_dev_test(project: Path, *pytest_args: str) -> int:
    """``dev.py test`` with these pytest arguments, on ``project``, with this interpreter."""
    return dev.test(list(pytest_args), root=project, python=Path(sys.executable), workers=1)


def test_session_when_it_measures_coverage_and_runs_hypothesis_then_writes_only_to_reports(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = sorted(p.name for p in project.iterdir())

    code = run_dev_test(project, "test_sample.py")

    output = capsys.readouterr().out
    assert code == 0, output
    assert "Written outside reports/" not in output
    assert sorted(p.name for p in project.iterdir()) == sorted([*before, "reports"])
    reports = project / "reports"
    assert list(reports.glob(".coverage-*")), sorted(p.name for p in reports.iterdir())
    assert (reports / "hypothesis").is_dir()


def test_session_when_a_test_writes_outside_reports_then_the_run_fails_naming_it(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (project / "test_stray.py").write_text(
        "from pathlib import Path\n\n\n"
        "def test_stray():\n"
        "    (Path(__file__).parent / 'stray' / 'deep').mkdir(parents=True)\n"
        "    (Path(__file__).parent / 'stray' / 'deep' / 'file.txt').write_text('')\n"
    )

    code = run_dev_test(project, "test_stray.py")

    output = capsys.readouterr().out
    assert code == 1, output
    assert output.splitlines()[-2] == (
        "Written outside reports/, which the sessions must not do: stray"
    )


def test_session_when_run_then_a_banner_marks_its_start_and_its_end(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = run_dev_test(project, "test_sample.py")

    lines = capsys.readouterr().out.splitlines()
    assert code == 0, "\n".join(lines)
    assert lines[0] == (
        "dev.py test runs 1 pytest session: the suites and the harness's tests, "
        "with your arguments."
    )
    start = next(i for i, line in enumerate(lines) if line.startswith("## [1/1] "))
    end = next(i for i, line in enumerate(lines) if i > start + 1 and line.startswith("## [1/1] "))
    label = "## [1/1] suites and harness, reference, "
    assert lines[start].startswith(label) and ": START at " in lines[start]
    assert lines[start + 1].startswith(f"##       {sys.executable} -m pytest --numprocesses 1 ")
    assert lines[end].startswith(label) and ": END, passed (0) in " in lines[end]
    assert lines[start - 1] == lines[start + 2] == lines[end - 1] == lines[end + 1] == "#" * 78
    assert "1 passed" in "\n".join(lines[start:end])


def test_intro_when_a_full_run_starts_then_it_says_how_long_it_usually_takes() -> None:
    first = dev.intro(4, [], last=None)
    again = dev.intro(4, [], last=467.2)

    assert first == f"dev.py test runs 4 pytest sessions, one after another: {dev.USUAL}."
    assert again == first.removesuffix(".") + " (the last full run here: 7 min 47 s)."
