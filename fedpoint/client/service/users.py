"""Named users: one token per clinician, stored hashed, with expiry and revocation; and the audit log.

`fedpoint site user add NAME` makes a random token, prints it once and keeps only its SHA-256
(a token is 256 random bits, so a fast hash is enough: there is nothing to guess). A request
carrying a user's token is that user: the name comes from the token, never from what the client
typed. The registry file is re-read when it changes, so `fedpoint site user revoke NAME` takes
effect on the running service at its next request.

The audit log (`audit.jsonl` beside the registry) is append-only: one JSON line per click, undo,
accept, saved label, inference and user change, with who, when and what (ids and counts, no pixels).
"""

from __future__ import annotations

import hashlib
import json
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from fedpoint.client.site_store import check_id
from fedpoint.shared.fileio import ProcessLock, append_line, write_json_atomic

TOKEN_PREFIX = "fpu_"  # tells a user token from the site token at a glance (and in a leaked log)


class UserError(ValueError):
    """A user that cannot be added, found or revoked; the message says why."""


class TokenRefused(PermissionError):
    """A user token that is known but no longer valid (expired or revoked): the message says which."""


@dataclass(frozen=True)
class User:
    name: str
    digest: str
    created: float
    expires: float | None = None
    revoked: float | None = None

    def status(self, now: float) -> str:
        if self.revoked is not None:
            return "revoked"
        if self.expires is not None and now >= self.expires:
            return "expired"
        return "active"

    def as_dict(self) -> dict:
        return {"name": self.name, "digest": self.digest, "created": self.created, "expires": self.expires,
                "revoked": self.revoked}

    def public(self, now: float) -> dict:
        return {"name": self.name, "created": _iso(self.created), "expires": _iso(self.expires),
                "revoked": _iso(self.revoked), "status": self.status(now)}


def _iso(t: float | None) -> str | None:
    return None if t is None else datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="seconds")


def digest_of(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class UserRegistry:
    """The users file (`users.json`): read-modify-write under a lock file, re-read when it changes."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._stamp: tuple[float, int] | None = None
        self._users: dict[str, User] = {}
        self._by_digest: dict[str, User] = {}

    # ------------------------------------------------------------------------------ reading
    def _load(self) -> None:
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            self._users, self._by_digest, self._stamp = {}, {}, None
            return
        stamp = (stat.st_mtime_ns, stat.st_size)
        if stamp == self._stamp:
            return
        try:
            raw = json.loads(self.path.read_text())
            users = {name: User(**entry) for name, entry in raw.get("users", {}).items()}
        except (json.JSONDecodeError, TypeError, AttributeError) as err:
            # A broken registry must not let anyone in: keep no user, and say so.
            raise UserError(f"{self.path.name}: cannot be read ({err}); no user token is accepted until it is fixed") from None
        self._users, self._stamp = users, stamp
        self._by_digest = {u.digest: u for u in users.values()}

    def users(self) -> list[User]:
        with self._lock:
            self._load()
            return sorted(self._users.values(), key=lambda u: u.name)

    def __bool__(self) -> bool:
        return bool(self.users())

    def resolve(self, token: str, now: float | None = None) -> str | None:
        """The user a token belongs to; None for a token no user has; TokenRefused if it lapsed."""
        if not token.startswith(TOKEN_PREFIX):
            return None
        with self._lock:
            self._load()
            user = self._by_digest.get(digest_of(token))
        if user is None:
            return None
        state = user.status(time.time() if now is None else now)
        if state == "revoked":
            raise TokenRefused(f"the token of user {user.name!r} was revoked on {_iso(user.revoked)}")
        if state == "expired":
            raise TokenRefused(f"the token of user {user.name!r} expired on {_iso(user.expires)}; ask for a new one")
        return user.name

    # ------------------------------------------------------------------------------ changing
    def _write(self, users: dict[str, User]) -> None:
        write_json_atomic(self.path, {"users": {n: u.as_dict() for n, u in sorted(users.items())}}, indent=1,
                          mode=0o600)  # hashes only, but nobody else's business

    def _change(self, edit) -> User:
        with self._lock, ProcessLock(self.path.with_name(f".{self.path.name}.lock")):
            self._stamp = None
            self._load()
            users = dict(self._users)
            user = edit(users)
            self._write(users)
            self._stamp = None
            return user

    def add(self, name: str, days: float | None = None, replace: bool = False) -> str:
        """A new token for `name` (returned once, never stored). `replace` re-issues a lapsed or
        lost one; without it an existing user is an error."""
        check_id(name, "user name")
        if days is not None and days <= 0:
            raise UserError("days must be positive")
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        now = time.time()

        def edit(users: dict[str, User]) -> User:
            if name in users and not replace:
                raise UserError(f"user {name!r} exists ({users[name].status(now)}); use --replace to issue a new token")
            users[name] = User(name, digest_of(token), now, None if days is None else now + days * 86400.0)
            return users[name]

        self._change(edit)
        return token

    def revoke(self, name: str) -> User:
        def edit(users: dict[str, User]) -> User:
            if name not in users:
                raise UserError(f"no user {name!r} (known: {', '.join(sorted(users)) or 'none'})")
            old = users[name]
            users[name] = User(old.name, old.digest, old.created, old.expires, old.revoked or time.time())
            return users[name]

        return self._change(edit)


class AuditLog:
    """Append-only JSON lines. Accepts and saved labels are fsynced (they change the site's data);
    clicks are only flushed, to keep a click's latency."""

    DURABLE = {"accept", "save_label", "user_add", "user_revoke"}

    def __init__(self, path: Path):
        self.path = Path(path)
        self._lock = threading.Lock()

    def record(self, user: str, action: str, image: str | None = None, **fields) -> None:
        line = json.dumps({"time": round(time.time(), 3), "user": user, "action": action,
                           **({"image": image} if image is not None else {}), **fields})
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            append_line(self.path, line, durable=action in self.DURABLE)

    def read(self) -> list[dict]:
        if not self.path.exists():
            return []
        out = []
        for line in self.path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:  # a line a crash cut: the rest stays readable
                continue
        return out
