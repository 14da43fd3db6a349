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
import logging

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


class SiteTokenUser(str):
    """A user name typed by a client holding the site token (not proven by a token of its own):
    the audit log marks each of its lines `"token": "site"`."""


def shared_name(guard, typed: str | None, default: str) -> str:
    """A name typed by a site-token client, checked by `guard` (none: only as a valid id)."""
    return guard.shared_user(typed, default) if guard is not None else SiteTokenUser(valid_id(typed or default, "user name"))


class TokenGuard:
    """The site token, and the named users' tokens (`users.UserRegistry`) when there are any.

    `identify` answers who a token is: None for the site token (the client names the user), a
    name for a user token; a wrong, lapsed or (shared tokens off) shared token is a 401.
    `allow_shared` None (the default) means: on while the site has no users file, off once it has.
    The site token never acts as a named user: `shared_user` refuses their names."""

    def __init__(self, token: str, users=None, allow_shared: bool | None = None):
        self._token = token.encode()
        self.users, self.allow_shared = users, allow_shared

    def matches(self, candidate: str | None) -> bool:
        return candidate is not None and hmac.compare_digest(candidate.encode(), self._token)

    def has_users(self) -> bool:
        return self.users is not None and self.users.path.exists()

    def shared_allowed(self) -> bool:
        return self.allow_shared if self.allow_shared is not None else not self.has_users()

    def shared_user(self, typed: str | None, default: str) -> SiteTokenUser:
        """The name a site-token client types, checked: never the name of a named user (their
        own token proves who they are; a shared token cannot borrow it)."""
        from fedpoint.client.service.users import UserError

        name = valid_id(typed or default, "user name")
        try:
            named = {u.name for u in self.users.users()} if self.has_users() else set()
        except UserError:
            named = None  # a broken users file: no name can be checked, so none is lent
        if named is None or name in named:
            raise HTTPException(403, f"the site token cannot act as {name!r}: that is a named user; use their own "
                                     "token" if named is not None else "the users file cannot be read; fix it first")
        return SiteTokenUser(name)

    def identify(self, candidate: str | None) -> str | None:
        from fedpoint.client.service.users import TokenRefused, UserError

        if candidate and self.matches(candidate):
            if not self.shared_allowed():
                raise _unauthorized("this site accepts only named users' tokens (it has named users; "
                                    "allow_shared_token = true turns the site token back on for other names)")
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


MAX_PLAIN_BODY = 1 << 20  # a JSON (or any non-upload) body: clicks and params are a few hundred bytes


class BodyLimitMiddleware:
    """413 for a request body over the limit, declared or streamed, before anything parses it: an
    upload (multipart) up to `max_bytes`, any other body (JSON) up to MAX_PLAIN_BODY, since the
    framework parses JSON on the event loop, where a huge body would stall every request."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers", []))
        upload = headers.get(b"content-type", b"").lower().startswith(b"multipart/")
        limit = self.max_bytes if upload else min(self.max_bytes, MAX_PLAIN_BODY)
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            return await _send_json(send, 413, self._message(limit, upload))
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise HTTPException(413, self._message(limit, upload))
            return message

        await self.app(scope, counted, send)

    @staticmethod
    def _message(limit: int, upload: bool) -> str:
        what = "max_upload_mb" if upload else "a JSON body; uploads go as multipart/form-data"
        return f"request body larger than the service's limit of {limit / 2**20:.1f} MiB ({what})"


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


class HeadMiddleware:
    """HEAD answered wherever GET is: the GET's status and headers, no body."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") != "HEAD":
            return await self.app(scope, receive, send)

        async def without_body(message: Message) -> None:
            if message["type"] == "http.response.body":
                message = {**message, "body": b"", "more_body": False} if not message.get("more_body") else None
            if message is not None:
                await send(message)

        await self.app({**scope, "method": "GET"}, receive, without_body)


SECRET_WORDS = ("token", "key", "pass", "auth", "secret", "credential")


def redact_query(path: str) -> str:
    """A request target with the values of secret-looking query parameters replaced (for the access log)."""
    base, sep, query = path.partition("?")
    if not sep:
        return path
    parts = []
    for item in query.split("&"):
        name, eq, _ = item.partition("=")
        parts.append(f"{name}=[redacted]" if eq and any(w in name.lower() for w in SECRET_WORDS) else item)
    return f"{base}?{'&'.join(parts)}"


class RedactQueryTokens(logging.Filter):
    """On uvicorn's access log: a token a client put in the address never reaches the log."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and len(record.args) >= 3 and isinstance(record.args[2], str):
            record.args = (*record.args[:2], redact_query(record.args[2]), *record.args[3:])
        return True
