"""Secrets: a server that signs task tokens refuses a public key; tokens are read within bounds.

The findings: with ``SignedTokens`` on and no ``DJANGO_SECRET_KEY``, the
server signed with the repository's public default key, so a token made
outside started a task and streamed it; and a compressed token that inflated
to 200 MB was decoded. Real processes and real sockets, as the attack was.
"""

from __future__ import annotations

import secrets
import subprocess
import tracemalloc
from collections.abc import Callable
from typing import Any

import httpx
import pytest

pytestmark = pytest.mark.timeout(60)

TOKENS = "streaming.ops.policy.SignedTokens"
#: The repository's default key, which anyone can read in settings.py.
PUBLIC_KEY = "django-insecure-reference-implementation-not-for-production"


def _sign(claims: dict[str, Any], key: str, *, compress: bool = False) -> str:
    from django.core import signing

    from streaming.ops.policy import TOKEN_SALT

    return signing.dumps(claims, key=key, salt=TOKEN_SALT, compress=compress)


@pytest.mark.parametrize("key", ["", PUBLIC_KEY], ids=["empty", "public-default"])
def test_server_with_token_policy_when_secret_key_empty_or_public_then_refuses_in_one_line(
    run: Callable[..., subprocess.CompletedProcess[str]], env: dict[str, str], key: str
) -> None:
    unset = {k: v for k, v in env.items() if k != "DJANGO_SECRET_KEY"}
    secret = {"DJANGO_SECRET_KEY": key} if key else {}
    result = run(
        "manage.py", "runserver_stream", env={**unset, **secret, "STREAMING_AUTHORIZATION": TOKENS}
    )
    assert result.returncode == 1, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith("CommandError: Set DJANGO_SECRET_KEY to a secret of your own")


def test_token_when_signed_with_the_public_key_then_403_and_the_task_stays_ready(
    start_server: Callable[..., Any],
    env: dict[str, str],
    run: Callable[..., subprocess.CompletedProcess[str]],
    status: Callable[[str, int], str | None],
) -> None:
    own = {"DJANGO_SECRET_KEY": secrets.token_urlsafe(50), "STREAMING_AUTHORIZATION": TOKENS}
    server = start_server(env={**env, **own})
    assert run("manage.py", "create_task", "--no-start").returncode == 0
    forged = _sign({"m": "ExampleTask", "t": "1", "a": ["start", "stream"]}, PUBLIC_KEY)
    bearer = {"authorization": f"Bearer {forged}", "content-type": "application/json"}
    start = httpx.post(f"{server.url}/tasks/ExampleTask/1/start", headers=bearer, timeout=10)
    stream = httpx.get(f"{server.url}/stream/ExampleTask/1?token={forged}", timeout=10)
    for refused in (start, stream):
        assert refused.status_code == 403, refused.text
        assert "signature does not match" in refused.text
    assert status("ExampleTask", 1) == "READY"


@pytest.mark.django_db
def test_token_when_compressed_or_oversized_then_refused_before_it_is_inflated() -> None:
    from django.conf import settings

    from streaming.models import ExampleTask
    from streaming.ops.policy import MAX_TOKEN_CHARS, AccessRequest, SignedTokens

    key = settings.SECRET_KEY
    claims = {"m": "ExampleTask", "t": "1", "a": ["stream"]}
    # 50 MB of padding compresses to some 50 KB; the finding's inflated to 200 MB.
    bomb = _sign({**claims, "pad": "a" * 50_000_000}, key, compress=True)
    # Half a megabyte compresses to a token short enough to pass the size limit.
    small = _sign({**claims, "pad": "a" * 500_000}, key, compress=True)
    assert len(bomb) > MAX_TOKEN_CHARS and small.startswith(".")
    policy = SignedTokens()
    tracemalloc.start()
    try:
        decisions = [
            policy(AccessRequest("stream", ExampleTask, 1, "203.0.113.7", {}, {"token": token}))
            for token in (bomb, small)
        ]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [d.status for d in decisions] == [403, 403], decisions
    assert all("no task token looks like it" in d.reason for d in decisions), decisions
    assert peak < 200_000, f"refusing the tokens took {peak} bytes: one was inflated"
    plain = policy(
        AccessRequest("stream", ExampleTask, 1, "203.0.113.7", {}, {"token": _sign(claims, key)})
    )
    assert plain.allowed, plain


def test_production_settings_when_checked_for_deployment_then_no_issue(
    run: Callable[..., subprocess.CompletedProcess[str]], env: dict[str, str]
) -> None:
    production = {
        **env,
        "DJANGO_SETTINGS_MODULE": "streaming_project.production",
        "DJANGO_SECRET_KEY": secrets.token_urlsafe(50),
        "DJANGO_ALLOWED_HOSTS": "stream.example.com",
    }
    result = run("manage.py", "check", "--deploy", "--fail-level", "WARNING", env=production)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout
    refused = run("manage.py", "runserver_stream", env={**production, "DJANGO_SECRET_KEY": ""})
    assert refused.returncode == 1 and "Set DJANGO_SECRET_KEY" in refused.stderr, refused
