"""Open annotation sessions, one per (image, user, slice, structure).

Two clinicians on one image never share clicks: each has a session of their own. A 3D volume on a
2D model is annotated slice by slice, so its key carries the slice; a 2D image or a 3D model has
slice None. Several structures per image (site.toml `labels`) each get their own session, so a
liver and a lesion on one slice are two annotations. Each session has its own lock (one person's clicks apply in order); the model's lock
already serialises the weights. Idle sessions expire; past a limit, the oldest of the user holding the most go first.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, NamedTuple

from fedpoint.client.session import AnnotationSession


class SessionKey(NamedTuple):
    """Which session: built by `AnnotationDesk.key` alone (it resolves the slice and the structure)."""
    image_id: str
    user: str
    slice: int | None  # None: the whole image (a 2D image, or a volume on a 3D model)
    structure: str


@dataclass
class OpenSession:
    key: SessionKey
    session: AnnotationSession
    lock: threading.Lock = field(default_factory=threading.Lock)
    touched: float = field(default_factory=time.monotonic)

    @property
    def image_id(self) -> str:
        return self.key.image_id

    @property
    def user(self) -> str:
        return self.key.user

    @property
    def slice(self) -> int | None:
        return self.key.slice

    @property
    def structure(self) -> str:
        return self.key.structure


class SessionRegistry:
    def __init__(self, max_sessions: int = 64, ttl_s: float = 3600.0):
        self.max_sessions, self.ttl_s = max_sessions, ttl_s
        self._open: dict[SessionKey, OpenSession] = {}
        self._lock = threading.Lock()

    def _expire(self) -> None:
        """Idle sessions go after the TTL. Past `max_sessions`, the user holding the most sessions
        loses their oldest: one person opening many slices never closes another's unsaved work."""
        now = time.monotonic()
        for key in [k for k, s in self._open.items() if now - s.touched > self.ttl_s]:
            del self._open[key]
        while len(self._open) > self.max_sessions:
            held = Counter(k.user for k in self._open)
            most = max(held.values())
            heavy = {user for user, n in held.items() if n == most}
            del self._open[min((k for k in self._open if k.user in heavy), key=lambda k: self._open[k].touched)]

    def get(self, key: SessionKey) -> OpenSession | None:
        with self._lock:
            self._expire()
            entry = self._open.get(key)
            if entry is not None:
                entry.touched = time.monotonic()
            return entry

    def get_or_open(self, key: SessionKey, open_session: Callable[[], AnnotationSession]) -> OpenSession:
        with self._lock:
            self._expire()
            entry = self._open.get(key)
            if entry is None:
                entry = self._open[key] = OpenSession(key, open_session())
                self._expire()
            entry.touched = time.monotonic()
            return entry

    def close(self, entry: OpenSession) -> None:
        """Forget a session (accepted or discarded); a newer session under the same key stays."""
        with self._lock:
            if self._open.get(entry.key) is entry:
                del self._open[entry.key]

    def of_user(self, image_id: str, user: str, structure: str | None = None) -> list[OpenSession]:
        with self._lock:
            self._expire()
            return [s for k, s in self._open.items()
                    if k.image_id == image_id and k.user == user and (structure is None or k.structure == structure)]

    def __len__(self) -> int:
        with self._lock:
            return len(self._open)
