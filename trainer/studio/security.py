"""Who may use the studio, and protection of state-changing requests against cross-site use.

* Off loopback a token is required (settings refuse to start without one): `Authorization:
  Bearer <token>`, or `?token=<token>` once, which sets an HttpOnly cookie.
* CSRF: a double-submit token. Every page sets a random `studio_csrf` cookie (SameSite=Strict);
  every POST must carry the same value in the form field `csrf` or the `X-CSRF-Token` header,
  and an `Origin` header, when sent, must be this studio's own.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Awaitable, Callable
from urllib.parse import parse_qs, urlsplit

from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response

CSRF_COOKIE = "studio_csrf"
TOKEN_COOKIE = "studio_token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def csrf_token(request: Request) -> str:
    """This browser's CSRF token (made on the first page it loads)."""
    token = request.cookies.get(CSRF_COOKIE) or getattr(request.state, "new_csrf", None)
    if token is None:
        token = secrets.token_urlsafe(24)
        request.state.new_csrf = token
    return token


class StudioGuard(BaseHTTPMiddleware):
    """Token check (when configured) and CSRF check on every state-changing request."""

    def __init__(self, app: object, *, token: str | None) -> None:
        super().__init__(app)  # type: ignore[arg-type]
        self.token = token

    def _authorised(self, request: Request) -> bool:
        if self.token is None:
            return True
        header = request.headers.get("authorization", "")
        offered = header.removeprefix("Bearer ").strip() if header.startswith("Bearer ") else ""
        offered = offered or request.cookies.get(TOKEN_COOKIE, "") or request.query_params.get("token", "")
        return hmac.compare_digest(offered.encode(), self.token.encode())

    async def _csrf_ok(self, request: Request) -> str | None:
        origin = request.headers.get("origin")
        if origin and urlsplit(origin).netloc != request.headers.get("host", ""):
            return f"cross-site request from {origin} refused"
        cookie = request.cookies.get(CSRF_COOKIE, "")
        sent = request.headers.get("x-csrf-token", "")
        if not sent and request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
            sent = (parse_qs((await request.body()).decode("utf-8", "replace")).get("csrf") or [""])[0]
        if not cookie or not hmac.compare_digest(cookie.encode(), sent.encode()):
            return "missing or wrong CSRF token: reload the page and try again"
        return None

    async def dispatch(self, request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        if not self._authorised(request):
            return PlainTextResponse(
                "this studio needs its token: open it as /?token=<COVERGEN_STUDIO_TOKEN> or send "
                "Authorization: Bearer <token>", status_code=401,
            )
        if request.method not in SAFE_METHODS:
            problem = await self._csrf_ok(request)
            if problem:
                return PlainTextResponse(problem, status_code=403)
        if self.token is not None and request.query_params.get("token") and request.method == "GET":
            response: Response = RedirectResponse(request.url.remove_query_params("token"), status_code=303)
            response.set_cookie(TOKEN_COOKIE, self.token, httponly=True, samesite="strict")
            return response
        response = await call_next(request)
        new = getattr(request.state, "new_csrf", None)
        if new is not None:
            response.set_cookie(CSRF_COOKIE, new, samesite="strict", httponly=False)
        return response
