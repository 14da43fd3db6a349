"""The model's one compute thread, shared fairly between users.

Predictions run on one long-lived thread (torch's OpenMP pool belongs to the calling thread; a new
pool per request doubled the click latency). With a plain first-in-first-out queue one user who
clicks through many slices at once makes every other user wait behind all of it. Here each user has
a queue of their own and the thread serves the users with work in turn, one item each: a user's
click waits behind at most one item of every other user.
"""

from __future__ import annotations

import threading
from collections import deque
from concurrent.futures import Future
from typing import Any, Callable


class FairCompute:
    """`submit(user, fn, *args) -> Future`, served round-robin across users on one thread."""

    def __init__(self, name: str = "fedpoint-model"):
        self._queues: dict[str, deque] = {}
        self._turns: deque[str] = deque()  # users with work waiting, in the order they are served
        self._ready = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    def submit(self, user: str, fn: Callable[..., Any], *args: Any) -> Future:
        future: Future = Future()
        with self._ready:
            if self._closed:
                raise RuntimeError("the model's compute thread is shut down")
            queue = self._queues.setdefault(user, deque())
            if not queue:
                self._turns.append(user)
            queue.append((future, fn, args))
            self._ready.notify()
        return future

    def _next(self):
        with self._ready:
            while not self._turns and not self._closed:
                self._ready.wait()
            if not self._turns:
                return None
            user = self._turns.popleft()
            queue = self._queues[user]
            item = queue.popleft()
            if queue:
                self._turns.append(user)  # the back of the line: everyone else goes first
            else:
                del self._queues[user]
            return item

    def _serve(self) -> None:
        while (item := self._next()) is not None:
            future, fn, args = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(*args))
            except BaseException as err:  # noqa: BLE001 - the caller's .result() raises it
                future.set_exception(err)

    def shutdown(self, wait: bool = True) -> None:
        """No new work; what is queued still runs."""
        with self._ready:
            self._closed = True
            self._ready.notify_all()
        if wait and self._thread is not threading.current_thread():
            self._thread.join()
