"""Requests refused before any policy is asked, and what browsers are told (CORS).

- **Host.** A request whose ``Host`` is not in Django's ``ALLOWED_HOSTS``
  answers 400: a page on another site that resolves its own name to this
  server (DNS rebinding) cannot reach it. The probes (``/live``, ``/health``,
  ``/ready``) are exempt: load balancers ask them by address.
- **Commands from other origins.** A browser sends a cross-site form or
  ``text/plain`` POST without asking first (no CORS preflight), and with the
  user's cookies. So a command (``POST /tasks/...``) is refused with 403
  when its ``Origin`` is neither the server's own nor an allowed one, when
  ``Sec-Fetch-Site`` says ``cross-site``, and, from a client that sends no
  ``Origin`` at all, when its body is of a type a form can send and no
  token comes with it: send JSON (``Content-Type: application/json``), or
  nothing. ``curl -X POST`` and ``create_task`` send no body and no Origin.
- **CORS.** Origins in ``STREAMING_CORS_ALLOWED_ORIGINS`` get ``Access-Control-*``
  headers on their answers, and their preflight (``OPTIONS`` with
  ``Access-Control-Request-Method``) is answered 204. Any other origin's
  preflight answers 403 with the reason, so the browser never sends the
  request.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass

from django.http.request import split_domain_port, validate_host

#: Body types a browser may send to another origin without a preflight.
FORM_TYPES = frozenset({"application/x-www-form-urlencoded", "multipart/form-data", "text/plain"})
#: Methods and request headers an allowed origin may use.
ALLOWED_METHODS = "GET, POST, OPTIONS"
ALLOWED_HEADERS = "Authorization, Content-Type, Last-Event-ID"
#: Paths that answer whatever the Host: probes that load balancers ask by address.
PROBES = frozenset({"/live", "/health", "/ready"})
_DEFAULT_PORTS = {"http": "80", "https": "443"}


@dataclass(frozen=True, slots=True)
class Refusal:
    """A request the server will not serve: its status, its reason, and headers to add."""

    status: int
    reason: str
    headers: tuple[tuple[str, str], ...] = ()


class Guard:
    """The host and origin checks, and CORS, for one server."""

    def __init__(
        self,
        *,
        allowed_hosts: Collection[str],
        cors_origins: Collection[str] = (),
        cors_credentials: bool = False,
        cors_max_age: int = 600,
    ) -> None:
        if "*" in cors_origins:
            # Browsers never send credentials to "*"; a server that echoed every
            # origin instead would let any site act as its users.
            raise ValueError(
                "STREAMING_CORS_ALLOWED_ORIGINS lists '*': list each origin instead "
                "(https://app.example.com). Allowing every origin, with credentials, "
                "would let any site act as your users."
            )
        self.allowed_hosts = list(allowed_hosts)
        self.cors_origins = frozenset(origin.rstrip("/").lower() for origin in cors_origins)
        self.cors_credentials = cors_credentials
        self.cors_max_age = cors_max_age

    @classmethod
    def from_settings(
        cls,
        cors_origins: Collection[str] = (),
        cors_credentials: bool = False,
        cors_max_age: int = 600,
    ) -> Guard:
        """ALLOWED_HOSTS as Django reads it (with DEBUG and none listed: localhost only)."""
        from django.conf import settings

        hosts = list(settings.ALLOWED_HOSTS)
        if settings.DEBUG and not hosts:
            hosts = [".localhost", "127.0.0.1", "[::1]"]
        return cls(
            allowed_hosts=hosts,
            cors_origins=cors_origins,
            cors_credentials=cors_credentials,
            cors_max_age=cors_max_age,
        )

    # -- host -------------------------------------------------------------------

    def check_host(self, path: str, headers: Mapping[str, str]) -> Refusal | None:
        if path in PROBES:
            return None
        host = headers.get("host", "")
        domain, _ = split_domain_port(host)
        if domain and validate_host(domain, self.allowed_hosts):
            return None
        shown = host[:100] if host.isprintable() else repr(host[:100])
        return Refusal(
            400,
            f"Host {shown!r} is not served here: add it to ALLOWED_HOSTS "
            "(DJANGO_ALLOWED_HOSTS) if it should be.",
        )

    # -- origins ----------------------------------------------------------------

    def trusted(self, origin: str, headers: Mapping[str, str], scheme: str) -> bool:
        """Whether ``origin`` is this server's own, or one STREAMING_CORS_ALLOWED_ORIGINS lists."""
        normal = origin.rstrip("/").lower()
        return normal in self.cors_origins or normal == self.own_origin(headers, scheme)

    @staticmethod
    def own_origin(headers: Mapping[str, str], scheme: str) -> str:
        host = headers.get("host", "").lower()
        domain, port = split_domain_port(host)
        if port == _DEFAULT_PORTS.get(scheme):
            host = domain
        return f"{scheme}://{host}"

    def check_command(self, headers: Mapping[str, str], scheme: str) -> Refusal | None:
        """None if a command (POST) may come from where it comes from; else why not."""
        origin = headers.get("origin")
        if origin is not None:
            if self.trusted(origin, headers, scheme):
                return None
            return Refusal(
                403,
                f"Commands from origin {origin[:100]!r} are refused: this server accepts them "
                "from its own pages and from STREAMING_CORS_ALLOWED_ORIGINS only.",
            )
        if headers.get("sec-fetch-site") == "cross-site":
            return Refusal(403, "Commands from another site are refused (Sec-Fetch-Site).")
        content_type = headers.get("content-type", "").partition(";")[0].strip().lower()
        if content_type in FORM_TYPES and "authorization" not in headers:
            return Refusal(
                403,
                f"A command with a {content_type} body could come from a form on any site: "
                "send JSON (Content-Type: application/json), or no body.",
            )
        return None

    # -- CORS -------------------------------------------------------------------

    def preflight(self, headers: Mapping[str, str]) -> tuple[int, list[tuple[str, str]], str]:
        """The answer to ``OPTIONS`` with ``Origin`` and ``Access-Control-Request-Method``."""
        origin = headers.get("origin", "")
        if origin.rstrip("/").lower() not in self.cors_origins:
            return (
                403,
                [("vary", "Origin")],
                f"Origin {origin[:100]!r} may not use this server from a browser: "
                "it is not in STREAMING_CORS_ALLOWED_ORIGINS.",
            )
        answer = [
            *self.cors_headers(origin),
            ("access-control-allow-methods", ALLOWED_METHODS),
            ("access-control-allow-headers", ALLOWED_HEADERS),
            ("access-control-max-age", str(self.cors_max_age)),
        ]
        return 204, answer, ""

    def cors_headers(self, origin: str | None) -> list[tuple[str, str]]:
        """Headers that let ``origin``'s page read the answer: none unless it is allowed."""
        if not origin or origin.rstrip("/").lower() not in self.cors_origins:
            return []
        headers = [("access-control-allow-origin", origin), ("vary", "Origin")]
        if self.cors_credentials:
            headers.append(("access-control-allow-credentials", "true"))
        return headers


def is_preflight(method: str, headers: Mapping[str, str]) -> bool:
    return (
        method == "OPTIONS" and "origin" in headers and "access-control-request-method" in headers
    )
