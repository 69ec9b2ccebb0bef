"""Who may look at the dashboard, and act on it.

- Bound to a loopback address, it needs no login; bound to any other address it refuses to
  start without ``HARNESS_DASHBOARD_TOKEN``. With a token, every request but the login page and
  the static files must carry it: ``Authorization: Bearer <token>``, or the login cookie (an
  HMAC of the token, never the token itself; it changes when the token does).
- Without a token only loopback ``Host`` headers are accepted, so a web page cannot reach
  the dashboard by pointing its own domain at 127.0.0.1 (DNS rebinding).
- Actions are POST and need the page's CSRF token (a form field or ``X-CSRF-Token``) and, when
  the browser sends one, an ``Origin`` of this host; a bearer-authenticated client (a script:
  browsers never add that header on their own) needs neither.
- Every response forbids framing and inline scripts (Content-Security-Policy).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from urllib.parse import quote, urlsplit

from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.types import ASGIApp

from ..errors import ConfigError, Problem

__all__ = ["COOKIE", "TOKEN_ENV", "Guard", "GuardMiddleware", "is_loopback"]

TOKEN_ENV = "HARNESS_DASHBOARD_TOKEN"
COOKIE = "harness_dashboard"
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})
OPEN_PATHS = ("/login", "/static/")
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address) is this machine only."""
    if host.strip("[]") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Guard:
    """The rules for one dashboard. ``allowed_hosts`` None accepts any Host header."""

    token: str | None = None
    allowed_hosts: frozenset[str] | None = LOOPBACK_HOSTS
    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(32))

    @classmethod
    def for_bind(cls, host: str, token: str | None) -> Guard:
        """The guard for serving on ``host``: a token is required off loopback, and then
        any Host header is accepted (the token protects)."""
        token = token or None
        if not is_loopback(host) and token is None:
            why = f"serving on {host} (not loopback) needs a token: set {TOKEN_ENV}"
            raise ConfigError(Problem("--host", why))
        return cls(token=token, allowed_hosts=LOOPBACK_HOSTS if token is None else None)

    def session(self) -> str:
        """The login cookie's value: an HMAC of the token (so the cookie is not the token)."""
        key = (self.token or "").encode()
        return hmac.new(key, b"harness dashboard session", hashlib.sha256).hexdigest()

    def token_ok(self, given: str) -> bool:
        """Whether ``given`` is the token (never true without one)."""
        return self.token is not None and hmac.compare_digest(given.encode(), self.token.encode())

    def bearer(self, request: Request) -> bool:
        """Whether the request carries the token as a bearer header."""
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and self.token_ok(given.strip())

    def signed_in(self, request: Request) -> bool:
        if self.token is None:
            return True
        cookie = request.cookies.get(COOKIE, "")
        return self.bearer(request) or hmac.compare_digest(cookie.encode(), self.session().encode())

    def host_allowed(self, request: Request) -> bool:
        if self.allowed_hosts is None:
            return True
        host = request.headers.get("host", "")
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        return name in self.allowed_hosts

    def may_act(self, request: Request, form_token: str | None) -> bool:
        """CSRF: a bearer client, or the page's token and no foreign Origin."""
        if self.bearer(request):
            return True
        given = request.headers.get("x-csrf-token") or form_token or ""
        if not hmac.compare_digest(given.encode(), self.csrf.encode()):
            return False
        origin = request.headers.get("origin")
        return origin is None or urlsplit(origin).netloc == request.headers.get("host")


def safe_next(target: str | None) -> str:
    """Where to go after logging in: a path on this site only (no open redirect)."""
    if not target or not target.startswith("/") or target.startswith("//"):
        return "/"
    return target


class GuardMiddleware(BaseHTTPMiddleware):
    """Host check, sign-in and the security headers, for every request."""

    def __init__(self, app: ASGIApp, guard: Guard) -> None:
        super().__init__(app)
        self.guard = guard

    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        response = await self._checked(request, call_next)
        for key, value in HEADERS.items():
            response.headers.setdefault(key, value)
        return response

    async def _checked(
        self, request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        if not self.guard.host_allowed(request):
            return PlainTextResponse("Invalid host header", status_code=400)
        path = request.url.path
        if self.guard.signed_in(request) or path.startswith(OPEN_PATHS):
            return await call_next(request)
        if path.startswith(("/api/", "/metrics")) or "html" not in request.headers.get(
            "accept", ""
        ):
            return JSONResponse({"error": "sign in: a bearer token is required"}, 401)
        target = path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/login?next={quote(target)}", status_code=303)
