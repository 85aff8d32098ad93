"""Who may do what (ops/policy.py), what is refused first (ops/guard.py), limits (ops/limits.py).

Each test serves the reference's app with uvicorn on 127.0.0.1 and talks to
it over a real socket. uvicorn trusts ``X-Forwarded-For`` from 127.0.0.1 by
default, as it would from a reverse proxy on the same machine; tests use it
to be another client than 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from conformance.clients import http_client, serve_asgi

pytestmark = [pytest.mark.timeout(30), pytest.mark.django_db(transaction=True)]

REMOTE = {"x-forwarded-for": "203.0.113.7"}
JSON = {"content-type": "application/json"}


@contextlib.asynccontextmanager
async def served(coordinator: Any, **settings: Any) -> AsyncIterator[httpx.AsyncClient]:
    """The app with ``settings`` replacing the coordinator's, and a client of it."""
    from streaming.server import make_app

    config = dataclasses.replace(coordinator.config, **settings)
    async with serve_asgi(make_app(coordinator, config=config)) as url:
        async with http_client(url, streaming=True) as http:
            yield http


async def parked(coordinator: Any) -> Any:
    """A started ContinueTask: it waits for ``continue_field`` (the guide's task)."""
    from streaming.models import ContinueTask

    task = await ContinueTask.objects.acreate(message="parked")
    assert await coordinator.start_task(ContinueTask, task.pk)
    return task


async def status(task: Any) -> str:
    return (await type(task).objects.aget(pk=task.pk)).status


async def first_event(response: httpx.Response) -> str:
    """The type of the first event of an SSE response."""
    async for line in response.aiter_lines():
        if line.startswith("event: "):
            return line.removeprefix("event: ")
    raise AssertionError("the stream ended before its first event")


# -- the default policy -------------------------------------------------------------


@pytest.mark.asyncio
async def test_default_policy_when_client_is_not_on_this_machine_then_403_naming_the_setting(
    coordinator: Any,
) -> None:
    from streaming.models import ExampleTask

    task = await ExampleTask.objects.acreate()
    async with served(coordinator) as http:
        remote = await http.post(f"/tasks/ExampleTask/{task.pk}/start", headers=REMOTE)
        stream = await http.get(f"/stream/ExampleTask/{task.pk}", headers=REMOTE)
        assert await status(task) == "READY"
        local = await http.post(f"/tasks/ExampleTask/{task.pk}/start")
    for refused in (remote, stream):
        assert refused.status_code == 403, refused.text
        assert "203.0.113.7" in refused.text and "STREAMING['AUTHORIZATION']" in refused.text
    assert local.status_code == 202, local.text


# -- signed tokens --------------------------------------------------------------------


@pytest.mark.asyncio
async def test_tokens_when_missing_forged_expired_or_for_another_action_then_401_or_403_saying_why(
    coordinator: Any,
) -> None:
    from streaming.ops.policy import SignedTokens, task_token

    task = await parked(coordinator)
    path = f"/tasks/ContinueTask/{task.pk}/cancel"
    cancel = task_token(task, actions=["cancel"])
    other = task_token("ContinueTask", task.pk + 1, ["cancel"])
    stream_only = task_token(task)
    cases = {
        "none": ({}, 401, "A task token is needed to cancel ContinueTask"),
        "forged": (
            {"authorization": f"Bearer {cancel[:-2]}xx"},
            403,
            "its signature does not match",
        ),
        "other-task": (
            {"authorization": f"Bearer {other}"},
            403,
            f"is for ContinueTask {task.pk + 1}, not ContinueTask {task.pk}",
        ),
        "other-action": (
            {"authorization": f"Bearer {stream_only}"},
            403,
            f"allows stream on ContinueTask {task.pk}, not cancel",
        ),
    }
    async with served(coordinator, authorization=SignedTokens()) as http:
        for name, (headers, code, reason) in cases.items():
            response = await http.post(path, headers={**JSON, **headers}, content=b"{}")
            assert (response.status_code, name) == (code, name), response.text
            assert reason in response.text, (name, response.text)
        assert (
            (await http.post(path, headers=JSON)).headers["www-authenticate"].startswith("Bearer")
        )
        assert await status(task) == "RUNNING"
        stream = await http.get(f"/stream/ContinueTask/{task.pk}?token={cancel}")
        assert stream.status_code == 403, stream.text
        allowed = await http.post(path, headers={**JSON, "authorization": f"Bearer {cancel}"})
        assert allowed.json() == {"cancelled": True}, allowed.text
    async with served(coordinator, authorization=SignedTokens(max_age=-1)) as http:
        expired = await http.get(f"/stream/ContinueTask/{task.pk}?token={stream_only}")
    assert (expired.status_code, expired.text) == (
        403,
        "The task token has expired; ask for a new one.",
    )


@pytest.mark.asyncio
async def test_tokens_when_stream_token_in_query_then_eventsource_style_stream_served(
    coordinator: Any,
) -> None:
    from streaming.models import ContinueTask
    from streaming.ops.policy import SignedTokens, watch_url

    task = await parked(coordinator)
    url = watch_url(task, actions=["stream"])
    assert url.startswith(f"/tasks/ContinueTask/{task.pk}?token=")
    token = url.partition("?token=")[2]
    async with served(coordinator, authorization=SignedTokens()) as http:
        async with http.stream("GET", f"/stream/ContinueTask/{task.pk}?token={token}") as response:
            assert response.status_code == 200
            assert await first_event(response) == "started"
        page = await http.get(url)
        assert page.status_code == 200 and "EventSource" in page.text, page.text
    await ContinueTask.objects.filter(pk=task.pk).aupdate(continue_field=True)


def test_task_token_when_actions_unknown_then_value_error_says_which() -> None:
    from streaming.ops.policy import task_token

    with pytest.raises(ValueError, match="actions must be some of stream, start, cancel, retry"):
        task_token("ExampleTask", 1, ["delete"])
    with pytest.raises(ValueError, match="give the task, or its model and pk"):
        task_token("ExampleTask")


# -- Django sessions -----------------------------------------------------------------


async def session_for(user: Any) -> str:
    """A session cookie value of ``user`` logged in, as django.contrib.auth.login leaves it."""
    from asgiref.sync import sync_to_async
    from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
    from django.contrib.sessions.backends.db import SessionStore

    def make() -> str:
        store = SessionStore()
        store[SESSION_KEY] = str(user.pk)
        store[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
        store[HASH_SESSION_KEY] = user.get_session_auth_hash()
        store.save()
        return str(store.session_key)

    return await sync_to_async(make)()


@pytest.mark.asyncio
async def test_session_when_user_logged_in_then_streams_and_needs_change_permission_to_cancel(
    coordinator: Any,
) -> None:
    from django.contrib.auth.models import Permission, User

    from streaming.ops.policy import DjangoSession

    task = await parked(coordinator)
    viewer = await User.objects.acreate_user("viewer", password="x")
    operator = await User.objects.acreate_user("operator", password="x")
    permission = await Permission.objects.aget(codename="change_continuetask")
    await operator.user_permissions.aadd(permission)
    viewer_cookie = {"cookie": f"sessionid={await session_for(viewer)}"}
    operator_cookie = {"cookie": f"sessionid={await session_for(operator)}"}
    cancel = f"/tasks/ContinueTask/{task.pk}/cancel"
    async with served(coordinator, authorization=DjangoSession()) as http:
        anonymous = await http.post(cancel, headers=JSON)
        unknown = await http.post(cancel, headers={**JSON, "cookie": "sessionid=nosuchsession"})
        async with http.stream(
            "GET", f"/stream/ContinueTask/{task.pk}", headers=viewer_cookie
        ) as stream:
            assert stream.status_code == 200
        denied = await http.post(cancel, headers={**JSON, **viewer_cookie})
        assert await status(task) == "RUNNING"
        allowed = await http.post(cancel, headers={**JSON, **operator_cookie})
    assert (anonymous.status_code, anonymous.text) == (
        401,
        f"Log in to cancel ContinueTask {task.pk}: the request has no session cookie.",
    )
    assert unknown.status_code == 401 and "no logged-in user" in unknown.text, unknown.text
    assert (denied.status_code, denied.text) == (
        403,
        f"User 'viewer' may not cancel ContinueTask {task.pk}.",
    )
    assert allowed.json() == {"cancelled": True}, allowed.text


@pytest.mark.asyncio
async def test_any_of_when_either_policy_allows_then_served_else_the_403_reason_wins(
    coordinator: Any,
) -> None:
    from django.contrib.auth.models import User

    from streaming.ops.policy import AnyOf, DjangoSession, SignedTokens, task_token

    task = await parked(coordinator)
    user = await User.objects.acreate_user("reader", password="x")
    cookie = {"cookie": f"sessionid={await session_for(user)}"}
    path = f"/stream/ContinueTask/{task.pk}"
    policy = AnyOf(SignedTokens(), DjangoSession())
    async with served(coordinator, authorization=policy) as http:
        nothing = await http.get(path)
        forged = await http.get(f"{path}?token=forged")
        async with http.stream("GET", path, headers=cookie) as by_session:
            assert by_session.status_code == 200
        async with http.stream("GET", f"{path}?token={task_token(task)}") as by_token:
            assert by_token.status_code == 200
    assert nothing.status_code == 401 and "task token is needed" in nothing.text, nothing.text
    assert forged.status_code == 403 and "signature" in forged.text, forged.text
    from streaming.models import ContinueTask

    await ContinueTask.objects.filter(pk=task.pk).aupdate(continue_field=True)


@pytest.mark.asyncio
async def test_policy_when_it_raises_then_403_never_500_and_the_error_logged(
    coordinator: Any, caplog: pytest.LogCaptureFixture
) -> None:
    from streaming.models import ExampleTask

    def broken(request: Any) -> Any:
        raise KeyError("no such user table")

    task = await ExampleTask.objects.acreate()
    async with served(coordinator, authorization=broken) as http:
        response = await http.post(f"/tasks/ExampleTask/{task.pk}/start")
    assert (response.status_code, response.text) == (
        403,
        "The authorization policy failed (KeyError).",
    )
    assert "authorization policy" in caplog.text and "KeyError" in caplog.text
    assert await status(task) == "READY"


def test_load_policy_when_setting_is_wrong_then_value_error_says_what() -> None:
    from streaming.ops.policy import AnyOf, LoopbackOnly, SignedTokens, load_policy

    with pytest.raises(ValueError, match=r"Cannot load STREAMING\['AUTHORIZATION'\] 'no.such'"):
        load_policy("no.such")
    with pytest.raises(ValueError, match="must be a policy"):
        load_policy(42)
    assert isinstance(load_policy("streaming.ops.policy.LoopbackOnly"), LoopbackOnly)
    both = load_policy(["streaming.ops.policy.SignedTokens", LoopbackOnly()])
    assert isinstance(both, AnyOf) and isinstance(both.policies[0], SignedTokens)


# -- host, origin, CORS -----------------------------------------------------------------


@pytest.mark.asyncio
async def test_host_when_not_allowed_then_400_except_probes(coordinator: Any) -> None:
    from streaming.models import ExampleTask

    task = await ExampleTask.objects.acreate()
    evil = {"host": "rebound.example"}
    async with served(coordinator) as http:
        start = await http.post(f"/tasks/ExampleTask/{task.pk}/start", headers=evil)
        metrics = await http.get("/metrics", headers=evil)
        probes = [await http.get(path, headers=evil) for path in ("/live", "/health", "/ready")]
    for refused in (start, metrics):
        assert refused.status_code == 400, refused.text
        assert refused.text.startswith("Host 'rebound.example' is not served here"), refused.text
    assert [p.status_code for p in probes] == [200, 200, 200]
    assert await status(task) == "READY"


@pytest.mark.asyncio
async def test_cors_when_origin_allowed_then_preflight_204_and_answers_and_streams_readable(
    coordinator: Any,
) -> None:
    task = await parked(coordinator)
    app = "https://app.example"
    preflight = {"origin": app, "access-control-request-method": "POST"}
    async with served(coordinator, cors_allowed_origins=(app,)) as http:
        allowed = await http.options(f"/tasks/ContinueTask/{task.pk}/cancel", headers=preflight)
        other = await http.options(
            f"/tasks/ContinueTask/{task.pk}/cancel",
            headers={**preflight, "origin": "https://other.example"},
        )
        async with http.stream(
            "GET", f"/stream/ContinueTask/{task.pk}", headers={"origin": app}
        ) as stream:
            stream_headers = stream.headers
            assert await first_event(stream) == "started"
        cancel = await http.post(
            f"/tasks/ContinueTask/{task.pk}/cancel",
            headers={"origin": app, "content-type": "text/plain"},
            content=b'{"reason": "from the app"}',
        )
    assert allowed.status_code == 204
    assert allowed.headers["access-control-allow-origin"] == app
    assert "POST" in allowed.headers["access-control-allow-methods"]
    assert "Authorization" in allowed.headers["access-control-allow-headers"]
    assert other.status_code == 403 and "not in STREAMING_CORS_ALLOWED_ORIGINS" in other.text
    assert "access-control-allow-origin" not in other.headers
    assert stream_headers["access-control-allow-origin"] == app
    assert stream_headers["content-type"].startswith("text/event-stream")
    assert cancel.json() == {"cancelled": True}, cancel.text
    assert cancel.headers["access-control-allow-origin"] == app


@pytest.mark.asyncio
async def test_command_when_origin_foreign_or_body_a_form_then_403_saying_how_to_send_it(
    coordinator: Any,
) -> None:
    from streaming.models import ExampleTask

    task = await ExampleTask.objects.acreate()
    path = f"/tasks/ExampleTask/{task.pk}/start"
    async with served(coordinator) as http:
        foreign = await http.post(path, headers={"origin": "https://evil.example"})
        null = await http.post(path, headers={"origin": "null"})
        site = await http.post(path, headers={"sec-fetch-site": "cross-site"})
        form = await http.post(path, data={"a": "b"})
        assert await status(task) == "READY"
        same = await http.post(path, headers={"origin": str(http.base_url).rstrip("/")})
    assert (foreign.status_code, foreign.text) == (
        403,
        "Commands from origin 'https://evil.example' are refused: this server accepts them "
        "from its own pages and from STREAMING_CORS_ALLOWED_ORIGINS only.",
    )
    assert null.status_code == 403 and site.status_code == 403
    assert (form.status_code, form.text) == (
        403,
        "A command with a application/x-www-form-urlencoded body could come from a form on any "
        "site: send JSON (Content-Type: application/json), or no body.",
    )
    assert same.status_code == 202, same.text


# -- limits -----------------------------------------------------------------------------


def test_token_buckets_when_spent_then_wait_until_refilled_and_clients_apart() -> None:
    from streaming.ops.limits import TokenBuckets

    buckets = TokenBuckets(rate=2.0, burst=2, max_clients=2)
    assert [buckets.take("a", 0.0) for _ in range(3)] == [0.0, 0.0, 0.5]
    assert buckets.take("b", 0.0) == 0.0  # another client has its own bucket
    assert buckets.take("a", 0.25) == 0.25  # refused takes nothing: half a token by now
    assert buckets.take("a", 0.5) == 0.0
    assert buckets.take("c", 0.5) == 0.0  # a third client: the least recent ("b") is forgotten
    assert len(buckets) == 2
    with pytest.raises(ValueError, match="both must be > 0"):
        TokenBuckets(rate=0, burst=1)


@pytest.mark.asyncio
async def test_server_cap_when_reached_then_503_with_retry_after_and_probes_still_answer(
    coordinator: Any,
) -> None:
    task = await parked(coordinator)
    async with served(coordinator, max_connections=1) as http:
        async with http.stream("GET", f"/stream/ContinueTask/{task.pk}") as held:
            assert held.status_code == 200
            full = await http.post(f"/tasks/ContinueTask/{task.pk}/cancel", headers=JSON)
            live = await http.get("/live")
            # Scrapes still answer a full server: that is when they matter most.
            metrics = await http.get("/metrics")
    assert (full.status_code, full.headers["retry-after"]) == (503, "2")
    assert full.text == "The server is at its limit of 1 connections; try again shortly."
    assert live.status_code == 200 and metrics.status_code == 200
    assert 'streaming_requests_refused_total{reason="connections"} 1.0' in metrics.text
    assert await status(task) == "RUNNING"


@pytest.mark.asyncio
async def test_client_connections_when_one_client_is_at_its_limit_then_another_is_served(
    coordinator: Any,
) -> None:
    from streaming.ops.policy import AllowAll

    task = await parked(coordinator)
    path = f"/stream/ContinueTask/{task.pk}"
    async with served(coordinator, authorization=AllowAll(), max_connections_per_client=1) as http:
        async with http.stream("GET", path) as held:
            assert held.status_code == 200
            again = await http.get(path)
            async with http.stream("GET", path, headers=REMOTE) as remote:
                assert remote.status_code == 200
    assert (again.status_code, again.headers["retry-after"], again.text) == (
        429,
        "2",
        "Too many connections from 127.0.0.1: at most 1 at once.",
    )


@pytest.mark.asyncio
async def test_command_rate_when_a_client_spends_its_burst_then_429_and_others_served(
    coordinator: Any,
) -> None:
    from streaming.models import ExampleTask
    from streaming.ops.policy import AllowAll

    task = await ExampleTask.objects.acreate()
    path = f"/tasks/ExampleTask/{task.pk}/retry"
    async with served(
        coordinator, authorization=AllowAll(), posts_per_second=0.1, post_burst=1
    ) as http:
        first = await http.post(path, headers=REMOTE)
        second = await http.post(path, headers=REMOTE)
        local = await http.post(path)
    assert first.status_code == 409, first.text  # served: a READY task cannot be retried
    assert (second.status_code, second.headers["retry-after"]) == (429, "10")
    assert second.text == (
        "Too many commands from 203.0.113.7: at most 0.1 a second after a burst of 1."
    )
    assert local.status_code == 409, local.text


@pytest.mark.asyncio
async def test_default_policy_when_request_came_through_a_proxy_that_names_no_client_then_403(
    coordinator: Any,
) -> None:
    # The proxy is on this machine, so the connection comes from 127.0.0.1;
    # without X-Forwarded-For nothing says who is behind it.
    from streaming.models import ExampleTask

    task = await ExampleTask.objects.acreate()
    relayed = [{"via": "1.1 proxy"}, {"forwarded": "for=203.0.113.7"}, {"x-real-ip": "203.0.113.7"}]
    async with served(coordinator) as http:
        answers = [
            await http.post(f"/tasks/ExampleTask/{task.pk}/start", headers=headers)
            for headers in relayed
        ]
        assert await status(task) == "READY"
        direct = await http.post(f"/tasks/ExampleTask/{task.pk}/start")
    for headers, answer in zip(relayed, answers, strict=True):
        assert answer.status_code == 403, (headers, answer.text)
        assert f"came through a proxy ({next(iter(headers))})" in answer.text
        assert "X-Forwarded-For" in answer.text
    assert direct.status_code == 202, direct.text


def test_cors_origins_when_they_list_a_star_then_the_server_refuses_to_start_in_one_line(
    run: Callable[..., Any], env: dict[str, str]
) -> None:
    result = run(
        "manage.py",
        "runserver_stream",
        env={**env, "STREAMING_CORS_ALLOWED_ORIGINS": "https://app.example.com,*"},
    )
    assert result.returncode == 1, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "CommandError: STREAMING_CORS_ALLOWED_ORIGINS lists '*': list each origin instead"
    ), result.stderr
