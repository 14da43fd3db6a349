"""Training episodes in the service: the ones the scheduler starts after accepts, and the ones a
client asks for (`POST /train/`). One at a time; the live model keeps serving clicks meanwhile
(an episode trains on a copy and swaps in through the regression guard)."""

from __future__ import annotations

import threading
import time

from fedpoint.client.engine import SiteEngine
from fedpoint.client.episodes import EpisodeScheduler
from fedpoint.client.splits import MIN_CASES, episode_possible


class TrainingBusy(RuntimeError):
    """An episode is already running."""


class NotEnoughCases(ValueError):
    """The cache cannot yet give an episode both a training and a validation case."""


class Training:
    def __init__(self, engine: SiteEngine):
        self.engine = engine
        # Modes without episodes still train on request: a scheduler of its own, never automatic.
        self.automatic = engine.scheduler is not None
        self.scheduler = engine.scheduler or EpisodeScheduler(engine.model, engine.store, None, True, engine.regression_guard)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._requested = 0
        self.task: dict | None = None

    @property
    def running(self) -> bool:
        return self.scheduler.running or (self._thread is not None and self._thread.is_alive())

    def after_accept(self) -> None:
        """The scheduler may start an episode; never beside one a client asked for."""
        if not self.automatic:
            return
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self.scheduler.notify()

    def _missing_cases(self) -> str | None:
        store = self.engine.store
        if not episode_possible(store.splits(), self.scheduler.new_cases()):
            return (f"an episode needs an accepted case to train on, one to pick its best epoch and one to judge it; "
                    f"the cache holds {len(store.case_ids())} (accept at least {MIN_CASES} annotations first)")
        return None

    def start(self) -> dict:
        with self._lock:
            if self.running:
                raise TrainingBusy("an episode is already running; GET /train/ shows its state")
            problem = self._missing_cases()
            if problem:
                raise NotEnoughCases(problem)
            self._requested += 1
            self.task = {"id": f"episode-request-{self._requested}", "status": "RUNNING", "start_ts": time.time(),
                         "end_ts": None, "result": None, "details": []}
            self._thread = threading.Thread(target=self._run, args=(self.task,), name="fedpoint-train", daemon=True)
            self._thread.start()
            return dict(self.task)

    def _run(self, task: dict) -> None:
        try:
            result = self.scheduler.run_episode().as_dict()
            task.update(status="DONE", result=result)
        except Exception as err:  # reported through GET /train/, not lost in a thread
            task.update(status="ERROR", details=[f"{type(err).__name__}: {err}"])
        finally:
            task["end_ts"] = time.time()

    def wait(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)
        self.scheduler.wait(timeout)

    def last_result(self) -> dict | None:
        results = self.scheduler.results
        return results[-1].as_dict() if results else None

    def status(self) -> dict:
        """MONAI Label's task shape (id, status, start_ts, end_ts, result, details) plus episode counts."""
        if self.running:
            status = "RUNNING"
        elif self.task is not None and self.task["status"] == "ERROR":
            status = "ERROR"
        else:
            status = "DONE" if self.scheduler.results else "NONE"
        task = self.task or {}
        return {
            "id": task.get("id", "episodes"),
            "status": status,
            "automatic": self.automatic,
            "start_ts": task.get("start_ts"),
            "end_ts": task.get("end_ts"),
            "result": self.last_result(),
            "details": task.get("details", []),
            "episodes": len(self.scheduler.results),
        }
