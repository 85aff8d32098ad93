"""The suite installs alone: its wheel, in a fresh virtualenv, brings what grading needs only.

A third party grading their own server must not get the reference's stack
(Django, asgineer, redis, prometheus-client, dj-database-url). This builds
the suite's wheel from the repository root, installs it into a new
virtualenv (dependencies from the package index, as a user's pip would),
and checks what came with it, that the plugin loads through its entry point,
and that SPEC.md and the guides ship inside the package.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import venv
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(600)

ROOT = Path(__file__).resolve().parents[1]
#: The reference's stack: none of it may come with the suite.
NOT_WANTED = {"django", "asgineer", "redis", "prometheus-client", "dj-database-url", "psycopg"}
#: What grading does need.
WANTED = {"pytest", "pytest-asyncio", "pytest-timeout", "httpx", "httpx-sse", "hypothesis"}
WANTED |= {"psutil", "uvicorn"}
#: What the wheel is not built from: version control, environments, what builds and runs leave.
NOT_COPIED = (".git", ".venv", ".tox", "reports", "build", "*.egg-info", "__pycache__", ".*cache")
NOT_COPIED += (".hypothesis", ".demo", "*.sqlite3*", ".coverage*")


def _run(*argv: str | Path, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(arg) for arg in argv], cwd=cwd, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, f"{argv}\n{result.stdout}\n{result.stderr}"
    return result


def test_suite_wheel_when_installed_alone_then_no_reference_stack_and_the_plugin_loads(
    tmp_path: Path,
) -> None:
    # The new virtualenv's own pip builds the wheel: the one running the
    # tests may have none (tox-uv's environments do not).
    environment = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(environment)
    python = environment / "bin" / "python"
    pip = [python, "-m", "pip", "--disable-pip-version-check", "--quiet"]
    wheels = tmp_path / "wheels"
    # From a copy: setuptools builds in the source tree (build/, *.egg-info),
    # and a test run writes nothing outside reports/ (issue 25).
    source = tmp_path / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(*NOT_COPIED))
    _run(*pip, "wheel", "--no-deps", "-w", wheels, source)
    (wheel,) = wheels.glob("streaming_conformance-*.whl")
    _run(*pip, "install", wheel)

    listed = _run(python, "-m", "pip", "list", "--format", "json").stdout
    installed = {package["name"].lower() for package in json.loads(listed)}
    assert not installed & NOT_WANTED, f"the suite brought {sorted(installed & NOT_WANTED)}"
    assert WANTED <= installed, f"missing {sorted(WANTED - installed)}"

    # Run where the repository is not on the path: only the wheel's code counts.
    shipped = _run(
        python,
        "-c",
        "import conformance, pathlib; p = pathlib.Path(conformance.__file__).parent; "
        "print(conformance.CONTRACT_VERSION, *sorted(f.name for f in p.glob('*.md')))",
        cwd=tmp_path,
    ).stdout.split()
    assert shipped[1:] == ["GUIDE.md", "MIGRATING.md", "SPEC.md"], shipped
    options = _run(python, "-m", "pytest", "--help", cwd=tmp_path).stdout
    assert "--impl=NAME" in options and "streaming task coordinator conformance" in options
    # No implementation is installed with the suite, and it says so instead of guessing.
    listing = _run(python, "-m", "conformance", "cases", "--capability", "cancel", cwd=tmp_path)
    assert "CANCEL-1 " in listing.stdout
