"""Who may stream, start, cancel and retry a task: pluggable policies.

A policy is a callable given an :class:`AccessRequest` (the action, the
task's model and id, the client's address, headers, cookies and query) that
returns a :class:`Decision`, or an awaitable of one. ``settings.STREAMING
["AUTHORIZATION"]`` names it (a dotted path, an object, or a list of them,
the first that allows winning). The server asks it for every stream, watch
page and command, after the request has passed the host and origin checks
and the limits, and answers a refusal with its status (401: no usable
credentials; 403: credentials that do not allow this) and its reason.

Ready policies:

- :class:`LoopbackOnly` (the default): clients on this machine only, so the
  demo and the command-line tools work with no configuration and nothing
  else does.
- :class:`SignedTokens`: a per-task token (:func:`task_token`), signed with
  ``SECRET_KEY`` through ``django.core.signing``, that a Django view hands to
  a browser; it names the task, the actions it allows and expires.
- :class:`DjangoSession`: Django's logged-in user, from the session cookie.
- :class:`AllowAll`: anyone (behind a proxy that decides instead).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from http.cookies import CookieError, SimpleCookie
from typing import TYPE_CHECKING, Any, TypeAlias
from urllib.parse import quote, urlencode

from django.core import signing
from django.utils.module_loading import import_string

if TYPE_CHECKING:
    from ..models import StreamTask

logger = logging.getLogger(__name__)

#: What a request may do to a task. ``stream`` also covers its watch page.
ACTIONS = ("stream", "start", "cancel", "retry")
#: Separates task tokens from anything else signed with the same SECRET_KEY.
TOKEN_SALT = "streaming.ops.task-token"
#: Where a browser's EventSource, which cannot set headers, puts its token.
TOKEN_QUERY = "token"
#: The longest token SignedTokens reads. The ones task_token makes are about
#: 150 characters; nothing longer is even decoded.
MAX_TOKEN_CHARS = 1024
#: How Django marks a SECRET_KEY that must not sign anything in production
#: (``startproject`` makes keys with it; ``check --deploy`` warns of it).
INSECURE_KEY_PREFIX = "django-insecure-"


@dataclass(frozen=True, slots=True)
class AccessRequest:
    """One request to act on one task, as a policy sees it."""

    #: One of :data:`ACTIONS`.
    action: str
    model: type[StreamTask]
    pk: int
    #: The client's address (after uvicorn's trusted proxy headers); None on a Unix socket.
    client: str | None
    #: Request headers, names in lower case (the first of repeated ones).
    headers: Mapping[str, str]
    #: The query string's parameters (the first of repeated ones).
    query: Mapping[str, str]

    @property
    def key(self) -> str:
        return f"{self.model.__name__}:{self.pk}"

    @property
    def token(self) -> str | None:
        """A bearer token: ``Authorization: Bearer <token>``, or ``?token=`` for an EventSource."""
        scheme, _, value = self.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
        return self.query.get(TOKEN_QUERY) or None

    @property
    def cookies(self) -> Mapping[str, str]:
        parsed: SimpleCookie = SimpleCookie()
        try:
            parsed.load(self.headers.get("cookie", ""))
        except CookieError:
            return {}
        return {name: morsel.value for name, morsel in parsed.items()}


@dataclass(frozen=True, slots=True)
class Decision:
    """A policy's answer: allowed, or refused with a status (401 or 403) and a reason."""

    allowed: bool
    status: int = 200
    reason: str = ""

    @classmethod
    def allow(cls) -> Decision:
        return cls(True)

    @classmethod
    def unauthenticated(cls, reason: str) -> Decision:
        """401: the request carries no credentials this policy can use."""
        return cls(False, 401, reason)

    @classmethod
    def forbidden(cls, reason: str) -> Decision:
        """403: the credentials are there, and do not allow this."""
        return cls(False, 403, reason)


Policy: TypeAlias = Callable[[AccessRequest], "Decision | Awaitable[Decision]"]


class AllowAll:
    """Anyone may do anything: for a server only a trusted proxy or network reaches."""

    def __call__(self, request: AccessRequest) -> Decision:
        return Decision.allow()

    def __repr__(self) -> str:
        return "AllowAll()"


#: Headers a proxy adds that uvicorn does not read the client's address from.
PROXY_HEADERS = ("forwarded", "via", "x-real-ip")


class LoopbackOnly:
    """Clients on this machine may do anything; every other client is refused.

    The default: the demo, ``create_task`` and ``stream_client.py`` work with
    no configuration, and a server listening on a public address by mistake
    lets nobody else in. Behind a reverse proxy on the same machine, the
    client is the address uvicorn reads from the proxy's ``X-Forwarded-For``
    (it trusts 127.0.0.1 by default), so remote clients are still refused. A
    proxy that sends no ``X-Forwarded-For`` would make everyone look local:
    a request that carries ``Forwarded``, ``Via`` or ``X-Real-IP`` (what such
    proxies send instead) is refused, and a proxy that sends none of these
    must not be put in front of a server with this policy.
    """

    def __call__(self, request: AccessRequest) -> Decision:
        relayed = [name for name in PROXY_HEADERS if name in request.headers]
        if relayed:
            # A proxy that sends no X-Forwarded-For makes every client look local.
            return Decision.forbidden(
                f"The request came through a proxy ({', '.join(relayed)}) that does not say "
                "who sent it, so it is not known to come from the server's own machine: have "
                "the proxy send X-Forwarded-For, or set STREAMING_AUTHORIZATION to a policy "
                "that checks credentials."
            )
        if request.client is None or is_loopback(request.client):
            return Decision.allow()
        return Decision.forbidden(
            f"Only clients on the server's own machine may {request.action} tasks, and "
            f"{request.client} is not one: set STREAMING['AUTHORIZATION'] to a policy "
            "that admits it (see the README, Operations)."
        )

    def __repr__(self) -> str:
        return "LoopbackOnly()"


def is_loopback(address: str) -> bool:
    """Whether ``address`` is an IP address of this machine's loopback interface."""
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def task_token(
    task: StreamTask | type[StreamTask] | str,
    pk: Any = None,
    actions: Iterable[str] = ("stream",),
) -> str:
    """A signed token that allows ``actions`` on one task: hand it to a browser.

    ``task`` is a task, or its model (class or name) with ``pk``. The token is
    signed with ``SECRET_KEY`` and expires ``TOKEN_MAX_AGE`` seconds after it
    was made (:class:`SignedTokens` checks both)::

        token = task_token(task, actions=("stream", "cancel"))
    """
    if isinstance(task, str):
        name = task
    elif isinstance(task, type):
        name = task.__name__
    else:
        name, pk = type(task).__name__, task.pk
    if pk is None:
        raise ValueError(f"Cannot make a token for {name}: give the task, or its model and pk.")
    wanted = sorted(set(actions))
    unknown = [action for action in wanted if action not in ACTIONS]
    if unknown or not wanted:
        raise ValueError(
            f"Cannot make a token for {name} {pk}: actions must be some of {', '.join(ACTIONS)}, "
            f"got {', '.join(map(repr, wanted)) or 'none'}."
        )
    return signing.dumps({"m": name, "t": str(pk), "a": wanted}, salt=TOKEN_SALT)


def watch_url(
    task: StreamTask,
    actions: Iterable[str] = ("stream", "cancel"),
    *,
    base: str = "",
) -> str:
    """The URL of a task's watch page, with a token for ``actions`` in its query.

    ``base`` is the streaming server's origin (``https://stream.example.com``)
    when the page that links to it is served by another one.
    """
    name, pk = type(task).__name__, task.pk
    token = task_token(task, actions=actions)
    return f"{base}/tasks/{quote(name)}/{pk}?{urlencode({TOKEN_QUERY: token})}"


class SignedTokens:
    """A signed per-task token (:func:`task_token`) in ``Authorization: Bearer`` or ``?token=``.

    No database, no session: the token itself says which task and actions
    it allows, and the signature that nobody without ``SECRET_KEY`` could
    make it. A token is valid for ``max_age`` seconds (None: the
    ``TOKEN_MAX_AGE`` setting).
    """

    #: Tokens are only as secret as SECRET_KEY: see :func:`check_secret`.
    signs_with_secret_key = True

    def __init__(self, max_age: float | None = None) -> None:
        self.max_age = max_age

    def __call__(self, request: AccessRequest) -> Decision:
        token = request.token
        if token is None:
            return Decision.unauthenticated(
                f"A task token is needed to {request.action} {request.model.__name__} "
                f"{request.pk}: send 'Authorization: Bearer <token>', or '?token=<token>' "
                "from an EventSource."
            )
        if len(token) > MAX_TOKEN_CHARS or token.startswith("."):
            # A "." prefix marks a compressed payload, which task_token never
            # makes: refused before anything is decoded or inflated.
            return Decision.forbidden("The task token is not valid: no task token looks like it.")
        try:
            claims = signing.loads(
                token, salt=TOKEN_SALT, max_age=timedelta(seconds=self._max_age())
            )
        except signing.SignatureExpired:
            return Decision.forbidden("The task token has expired; ask for a new one.")
        except signing.BadSignature:
            return Decision.forbidden("The task token is not valid: its signature does not match.")
        if not _well_formed(claims):
            return Decision.forbidden("The task token is not valid: it names no task.")
        model, pk, actions = claims["m"], claims["t"], claims["a"]
        if (model, pk) != (request.model.__name__, str(request.pk)):
            return Decision.forbidden(
                f"The task token is for {model} {pk}, not {request.model.__name__} {request.pk}."
            )
        if request.action not in actions:
            return Decision.forbidden(
                f"The task token allows {', '.join(actions)} on {model} {pk}, not {request.action}."
            )
        return Decision.allow()

    def _max_age(self) -> float:
        if self.max_age is not None:
            return self.max_age
        from ..config import Config

        return Config.from_settings().token_max_age

    def __repr__(self) -> str:
        return f"SignedTokens(max_age={self.max_age!r})"


def _well_formed(claims: Any) -> bool:
    return (
        isinstance(claims, dict)
        and isinstance(claims.get("m"), str)
        and isinstance(claims.get("t"), str)
        and isinstance(claims.get("a"), list)
    )


class DjangoSession:
    """Django's logged-in user, read from the session cookie.

    Needs ``django.contrib.auth`` and ``django.contrib.sessions`` installed,
    and the streaming server on the same site as the Django pages (the
    browser sends their session cookie). A logged-in, active user may
    stream; starting, cancelling and retrying need the model's change
    permission (``streaming.change_exampletask``) unless ``commands`` says
    otherwise. A task kind may decide for itself with an async classmethod
    ``may_access(user, action, pk) -> bool``.
    """

    def __init__(self, *, commands: str | None = "change") -> None:
        #: The model permission (``add``, ``change``, ``delete``, ``view``) that
        #: start, cancel and retry need; None: any logged-in user may.
        self.commands = commands

    async def __call__(self, request: AccessRequest) -> Decision:
        from django.conf import settings
        from django.contrib.auth import aget_user
        from django.http import HttpRequest

        from .. import db

        key = request.cookies.get(settings.SESSION_COOKIE_NAME)
        if not key:
            return Decision.unauthenticated(
                f"Log in to {request.action} {request.model.__name__} {request.pk}: "
                "the request has no session cookie."
            )
        store = _session_store(key)
        session = HttpRequest()  # what aget_user reads of a request: its session
        session.session = store
        user = await db.run(lambda: aget_user(session))
        if not user.is_authenticated:
            return Decision.unauthenticated(
                "The session has no logged-in user (expired, or logged out); log in again."
            )
        if not user.is_active:
            return Decision.forbidden(f"User {user.get_username()!r} is inactive.")
        decide = getattr(request.model, "may_access", None)
        if decide is not None:
            allowed = await decide(user, request.action, request.pk)
        elif request.action == "stream" or self.commands is None:
            allowed = True
        else:
            meta = request.model._meta
            permission = f"{meta.app_label}.{self.commands}_{meta.model_name}"
            allowed = await db.run(lambda: user.ahas_perm(permission))
        if allowed:
            return Decision.allow()
        return Decision.forbidden(
            f"User {user.get_username()!r} may not {request.action} "
            f"{request.model.__name__} {request.pk}."
        )

    def __repr__(self) -> str:
        return f"DjangoSession(commands={self.commands!r})"


def _session_store(key: str) -> Any:
    from importlib import import_module

    from django.conf import settings

    return import_module(settings.SESSION_ENGINE).SessionStore(session_key=key)


class AnyOf:
    """Allowed when any of ``policies`` allows; else the first refusal that saw credentials.

    A 403 (credentials that do not allow this) says more than a 401 (none
    this policy can use), so it wins; among equals, the first.
    """

    def __init__(self, *policies: Policy) -> None:
        if not policies:
            raise ValueError("AnyOf needs at least one policy.")
        self.policies = policies

    async def __call__(self, request: AccessRequest) -> Decision:
        refusals: list[Decision] = []
        for policy in self.policies:
            decision = await decide(policy, request)
            if decision.allowed:
                return decision
            refusals.append(decision)
        return next((d for d in refusals if d.status == 403), refusals[0])

    def __repr__(self) -> str:
        return f"AnyOf({', '.join(map(repr, self.policies))})"


async def decide(policy: Policy, request: AccessRequest) -> Decision:
    """Ask ``policy``; a policy that breaks refuses (500 is never the answer), and is logged."""
    try:
        answer = policy(request)
        decision = await answer if isinstance(answer, Awaitable) else answer
    except Exception as exc:
        from .. import db

        if isinstance(exc, db.DatabaseUnavailable):
            raise  # the server answers 503: a refusal would blame the client
        logger.exception("authorization policy %r failed for %s", policy, request.key)
        return Decision.forbidden(f"The authorization policy failed ({type(exc).__name__}).")
    if not isinstance(decision, Decision):
        logger.error("authorization policy %r returned %r, not a Decision", policy, decision)
        return Decision.forbidden("The authorization policy gave no decision.")
    if not decision.allowed and decision.status not in (401, 403):
        decision = dataclasses.replace(decision, status=403)
    return decision


class InsecureSecret(Exception):
    """A policy that signs with SECRET_KEY is configured, and the key is empty or public."""


def configured_secret_key() -> str:
    """``settings.SECRET_KEY``, or "" where it is empty (Django refuses to read an empty one)."""
    from django.conf import settings
    from django.core.exceptions import ImproperlyConfigured

    try:
        return str(settings.SECRET_KEY)
    except ImproperlyConfigured:
        return ""


def check_secret(policy: Policy, secret_key: str) -> None:
    """Raise :class:`InsecureSecret` if ``policy`` signs with a ``secret_key`` anyone may know.

    The repository's default key is public: a token signed with it from
    outside would start and stream tasks. So a server refuses to start with
    it, or with none, while a token policy is in force.
    """
    policies = policy.policies if isinstance(policy, AnyOf) else (policy,)
    if not any(getattr(p, "signs_with_secret_key", False) for p in policies):
        return
    if not secret_key or secret_key.startswith(INSECURE_KEY_PREFIX):
        which = "empty" if not secret_key else "the public default"
        raise InsecureSecret(
            f"Set DJANGO_SECRET_KEY to a secret of your own: task tokens are signed with "
            f"SECRET_KEY, and it is {which}, so anyone could sign one."
        )


def load_policy(setting: Any) -> Policy:
    """The policy a setting names: an object, a dotted path, a class, or a list of these."""
    if isinstance(setting, str):
        try:
            setting = import_string(setting)
        except ImportError as exc:
            raise ValueError(f"Cannot load STREAMING['AUTHORIZATION'] {setting!r}: {exc}") from exc
    if isinstance(setting, type):
        setting = setting()
    if isinstance(setting, Collection) and not callable(setting):
        policies = [load_policy(item) for item in setting]
        if not policies:
            raise ValueError("STREAMING['AUTHORIZATION'] lists no policy.")
        return policies[0] if len(policies) == 1 else AnyOf(*policies)
    if not callable(setting):
        raise ValueError(
            f"STREAMING['AUTHORIZATION'] must be a policy (a callable), got {setting!r}."
        )
    return setting  # type: ignore[no-any-return]
