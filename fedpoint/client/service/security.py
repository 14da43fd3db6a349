"""The service's defences: the bearer token, safe ids, upload limits and response headers.

- Every route that reads or changes site data depends on `TokenGuard.require` (the page's static
  code and `/health` hold no data and are open). Tokens are compared in constant time.
- Named users (`users.py`) each have their own token; the user is then the token's, not a typed name.
- `token_in_path` (off by default) also accepts `/t/<token>/...`, for MONAI Label clients such as
  3D Slicer's plugin that cannot add a header but keep a path given in their server address.
- Ids become file names: `valid_id` refuses anything that could leave a folder.
- Request bodies are limited (Content-Length checked up front, streamed bodies counted).
"""

from __future__ import annotations

import hmac
import json

from fastapi import HTTPException, Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fedpoint.client.site_store import check_id

PATH_TOKEN_PREFIX = "/t/"
SECURITY_HEADERS = {
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
    # The page loads nothing from elsewhere: no CDN, no fonts, no analytics.
    "content-security-policy": ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
                                "connect-src 'self'; object-src 'none'; frame-ancestors 'none'; base-uri 'none'"),
}


class InvalidId(ValueError):
    """An id that could escape a folder or is not well formed."""


def valid_id(value: str, what: str = "image id") -> str:
    try:
        return check_id(value, what)
    except ValueError as err:
        raise InvalidId(str(err)) from None


class TokenGuard:
    """The site token, and the named users' tokens (`users.UserRegistry`) when there are any.

    `identify` answers who a token is: None for the site token (the client names the user), a
    name for a user token; a wrong, lapsed or (with `allow_shared` off) shared token is a 401."""

    def __init__(self, token: str, users=None, allow_shared: bool = True):
        self._token = token.encode()
        self.users, self.allow_shared = users, allow_shared

    def matches(self, candidate: str | None) -> bool:
        return candidate is not None and hmac.compare_digest(candidate.encode(), self._token)

    def identify(self, candidate: str | None) -> str | None:
        from fedpoint.client.service.users import TokenRefused, UserError

        if candidate and self.matches(candidate):
            if not self.allow_shared:
                raise _unauthorized("this site accepts only named users' tokens (allow_shared_token = false)")
            return None
        try:
            name = self.users.resolve(candidate) if (candidate and self.users is not None) else None
        except (TokenRefused, UserError) as err:
            raise _unauthorized(str(err)) from None
        if name is None:
            raise _unauthorized("missing or wrong bearer token (send 'Authorization: Bearer <token>')")
        return name

    def require(self, request: Request) -> str | None:
        """FastAPI dependency: a valid `Authorization: Bearer <token>`, or a valid path token.
        Returns the named user the token belongs to (None for the site token)."""
        if request.scope.get("fedpoint.path_token"):
            return request.scope.get("fedpoint.user")
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer":
            raise _unauthorized("missing or wrong bearer token (send 'Authorization: Bearer <token>')")
        return self.identify(value.strip())


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(401, detail, headers={"WWW-Authenticate": "Bearer"})


async def _send_json(send: Send, status: int, detail: str, headers: list | None = None) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


class PathTokenMiddleware:
    """`/t/<token>/rest` -> `/rest`, marked as authenticated; a wrong path token is refused here."""

    def __init__(self, app: ASGIApp, guard: TokenGuard):
        self.app, self.guard = app, guard

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not path.startswith(PATH_TOKEN_PREFIX):
            return await self.app(scope, receive, send)
        token, _, rest = path[len(PATH_TOKEN_PREFIX):].partition("/")
        try:
            user = self.guard.identify(token)
        except HTTPException as err:
            return await _send_json(send, 401, f"token in the path: {err.detail}", [(b"www-authenticate", b"Bearer")])
        scope = {**scope, "path": "/" + rest, "raw_path": ("/" + rest).encode(), "fedpoint.path_token": True,
                 "fedpoint.user": user}
        await self.app(scope, receive, send)


class BodyLimitMiddleware:
    """413 for a request body over the limit, declared or streamed."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await _send_json(send, 413, self._message())
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise HTTPException(413, self._message())
            return message

        await self.app(scope, counted, send)

    def _message(self) -> str:
        return f"request body larger than the service's limit of {self.max_bytes / 2**20:.1f} MiB (max_upload_mb)"


class SecurityHeadersMiddleware:
    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {k.lower() for k, _ in message.get("headers", [])}
                extra = [(k.encode(), v.encode()) for k, v in SECURITY_HEADERS.items() if k.encode() not in present]
                if b"cache-control" not in present:
                    extra.append((b"cache-control", b"no-store"))
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, receive, with_headers)
