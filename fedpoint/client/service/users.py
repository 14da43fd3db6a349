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
import logging
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from fedpoint.client.site_store import check_id
from fedpoint.shared.fileio import ProcessLock, append_line, write_json_atomic

log = logging.getLogger("fedpoint.service")

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


def _number(value, what: str, optional: bool = True) -> float | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise UserError(f"{what} is {str(value)[:40]!r}, not a time in seconds")
    return float(value)


def parse_users(raw: bytes) -> dict[str, User]:
    """The users file's content, every field of its declared type; UserError says what is wrong.
    (Read by the service on each change and by `fedpoint site check`.)"""
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as err:
        raise UserError(f"cannot be read (not UTF-8 at byte {err.start})") from None
    except (ValueError, RecursionError) as err:
        raise UserError(f"cannot be read ({type(err).__name__}: {str(err)[:120]})") from None
    entries = data.get("users", {}) if isinstance(data, dict) else None
    if not isinstance(entries, dict):
        raise UserError("must hold {\"users\": {name: {...}}}")
    users = {}
    for name, entry in entries.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("digest"), str) or entry.get("name", name) != name:
            raise UserError(f"user {name[:40]!r}: needs a name and a digest (text)")
        users[name] = User(name, entry["digest"], _number(entry.get("created"), f"user {name!r} created", False),
                           _number(entry.get("expires"), f"user {name!r} expires"),
                           _number(entry.get("revoked"), f"user {name!r} revoked"))
    return users


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
            users = parse_users(self.path.read_bytes())
        except OSError as err:
            raise UserError(f"{self.path.name}: cannot be read ({type(err).__name__}); no user token is accepted "
                            "until it is fixed") from None
        except UserError as err:
            # A broken registry must not let anyone in: keep no user, and say so.
            raise UserError(f"{self.path.name}: {err}; no user token is accepted until it is fixed") from None
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
        self.failures = 0

    def record(self, user: str, action: str, image: str | None = None, **fields) -> list[str]:
        """Append one line; returns what went wrong (an unwritable log), never raises: a line is
        written after its action took effect, and the reply must still say that it did."""
        shared = {"token": "site"} if type(user).__name__ == "SiteTokenUser" else {}  # a typed name, not proven
        line = json.dumps({"time": round(time.time(), 3), "user": user, "action": action, **shared,
                           **({"image": image} if image is not None else {}), **fields})
        try:
            with self._lock:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                append_line(self.path, line, durable=action in self.DURABLE)
        except OSError as err:
            self.failures += 1
            log.error("audit log %s cannot be written (%s): %s by %s not recorded", self.path.name, err, action, user)
            return [f"the audit log cannot be written ({type(err).__name__}); this {action} is not in it"]
        return []

    def read(self) -> list[dict]:
        if not self.path.exists():
            return []
        out = []
        for line in self.path.read_text(errors="replace").splitlines():
            try:
                entry = json.loads(line)
            except (json.JSONDecodeError, RecursionError):  # a line a crash cut: the rest stays readable
                continue
            if isinstance(entry, dict):
                out.append(entry)
        return out
