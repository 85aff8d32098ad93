"""``streaming.tasks`` in an existing Django project: the README's "In your own Django project".

``embedded/shop`` is a project of its own (its settings, URLs, view and
task), with the two apps and ``TASKS`` added. Its view enqueues; the
streaming endpoints are a second process, ``python -m django
runserver_stream`` with the project's settings, which runs the task and
streams it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from conformance.contract import ServerSpec
from conformance.processes import ServerProcess, with_default_signals

EMBEDDED = Path(__file__).resolve().parent / "embedded"
DEADLINE = 20.0

pytestmark = pytest.mark.timeout(90)


class ProjectServer:
    """``python -m django runserver_stream`` with the project's settings."""

    name = "shop's runserver_stream"

    def server_command(self, host: str, port: int, *, grace: float) -> ServerSpec:
        argv = [sys.executable, "-m", "django", "runserver_stream", "--port", str(port)]
        return ServerSpec(argv=[*argv, "--grace", f"{grace:g}"], cwd=str(EMBEDDED))


@pytest.fixture
def shop_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STREAMING_", "DJANGO_"))}
    path = os.pathsep.join(filter(None, [str(EMBEDDED), os.environ.get("PYTHONPATH", "")]))
    env.update(
        DJANGO_SETTINGS_MODULE="shop.settings",
        SHOP_DATABASE=str(tmp_path / "shop.sqlite3"),
        PYTHONPATH=path,
        PYTHONUNBUFFERED="1",
    )
    return env


def django(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        with_default_signals([sys.executable, "-m", "django", *args]),
        cwd=EMBEDDED,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=DEADLINE,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture
def shop_server(shop_env: dict[str, str]) -> Iterator[ServerProcess]:
    django(shop_env, "migrate", "--verbosity", "0")
    server = ServerProcess(ProjectServer(), grace=2.0, base_env=shop_env)
    server.start_blocking()
    yield server
    assert server.stop_blocking(signal.SIGTERM) == 0, server.describe()


def in_shell(env: dict[str, str], code: str) -> Any:
    lines = django(env, "shell", "--no-imports", "-c", code).strip().splitlines()
    return json.loads(lines[-1])


def test_project_view_when_it_enqueues_then_the_streaming_process_runs_and_streams_it(
    shop_env: dict[str, str], shop_server: ServerProcess
) -> None:
    post = (
        "from django.test import Client; "
        "print(Client().post('/reports/', {'pages': 3}).content.decode())"
    )
    answer = in_shell(shop_env, post)
    with httpx.stream(
        "GET",
        f"{shop_server.url}{answer['stream']}",
        headers={"Last-Event-ID": "0"},  # every event, however late this client is
        timeout=DEADLINE,
    ) as response:
        assert response.status_code == 200
        types = []
        for line in response.iter_lines():
            if line.startswith("event: "):
                types.append(line.removeprefix("event: "))
                if types[-1] == "complete":
                    break
    assert types == ["progress", "progress", "progress", "complete"]
    status = in_shell(
        shop_env,
        "from django.test import Client; "
        f"print(Client().get('/reports/{answer['result_id']}/').content.decode())",
    )
    assert status == {"status": "SUCCESSFUL", "return_value": {"pages": 3}}
