"""Training episodes in the service, per structure: the ones a structure's scheduler starts after
its accepts, and the ones a client asks for (`POST /train/`, `/train/{model}`). Each structure
(site.toml `labels`) trains its own task's adapter on its own task store's cases
(`SiteServiceConfig.task_of`); without `labels` the site's one structure trains the site's
adapter on the root store, as before. One requested episode at a time; the live model keeps
serving clicks meanwhile (an episode trains on a copy and swaps in through the regression guard)."""

from __future__ import annotations

import threading
import time

from fedpoint.client.engine import SiteEngine, TaskSlot
from fedpoint.client.episodes import EpisodeScheduler
from fedpoint.client.splits import MIN_CASES, episode_possible


class TrainingBusy(RuntimeError):
    """An episode is already running."""


class NotEnoughCases(ValueError):
    """The cache cannot yet give an episode both a training and a validation case."""


def _scheduler(slot: TaskSlot) -> EpisodeScheduler:
    """The slot's episode scheduler; modes without episodes still train on request: one of its own, never automatic."""
    return slot.scheduler or EpisodeScheduler(slot.model, slot.store, None, True, slot.regression_guard)


class Training:
    def __init__(self, engine: SiteEngine, tasks: dict[str, str | None] | None = None):
        """`tasks`: each structure and the task its episodes train (None: the engine's primary task);
        default one structure on the primary task."""
        self.engine = engine
        tasks = tasks or {"object": None}
        self.slots = {structure: engine.slot(task) for structure, task in tasks.items()}
        self.automatic = engine.scheduler is not None  # the mode runs episodes by itself (every task alike)
        self.schedulers = {structure: _scheduler(slot) for structure, slot in self.slots.items()}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._requested = 0
        self.task: dict | None = None  # the last requested episode (MONAI Label's task shape, plus its structure)

    @property
    def first(self) -> str:
        return next(iter(self.schedulers))

    def _requested_running(self, structure: str | None = None) -> bool:
        alive = self._thread is not None and self._thread.is_alive()
        return alive and (structure is None or (self.task or {}).get("structure") == structure)

    def is_running(self, structure: str | None = None) -> bool:
        """An episode of `structure` (None: of any structure) runs now, requested or automatic."""
        names = list(self.schedulers) if structure is None else [structure]
        return self._requested_running(structure) or any(self.schedulers[s].running for s in names)

    @property
    def running(self) -> bool:
        return self.is_running()

    def after_accept(self, structure: str | None = None) -> None:
        """The structure's scheduler may start an episode; never beside one a client asked for on it."""
        if not self.automatic:
            return
        structure = structure or self.first
        with self._lock:
            if not self._requested_running(structure):
                self.schedulers[structure].notify()

    def _missing_cases(self, structure: str) -> str | None:
        store, scheduler = self.slots[structure].store, self.schedulers[structure]
        if not episode_possible(store.splits(), scheduler.new_cases()):
            mine = f" of {structure}" if len(self.schedulers) > 1 else ""
            return (f"an episode needs an accepted case to train on, one to pick its best epoch and one to judge it; "
                    f"the cache{mine} holds {len(store.case_ids())} (accept at least {MIN_CASES} annotations first)")
        return None

    def start(self, structure: str | None = None) -> dict:
        """Start an episode of `structure` (None: the first) in the background; its task as MONAI Label shows it."""
        structure = structure or self.first
        with self._lock:
            if self._requested_running() or self.is_running(structure):
                raise TrainingBusy("an episode is already running; GET /train/ shows its state")
            problem = self._missing_cases(structure)
            if problem:
                raise NotEnoughCases(problem)
            self._requested += 1
            self.task = {"id": f"episode-request-{self._requested}", "status": "RUNNING", "start_ts": time.time(),
                         "end_ts": None, "result": None, "details": [], "structure": structure}
            self._thread = threading.Thread(target=self._run, args=(self.task,), name="fedpoint-train", daemon=True)
            self._thread.start()
            return dict(self.task)

    def _run(self, task: dict) -> None:
        try:
            result = self.schedulers[task["structure"]].run_episode().as_dict()
            task.update(status="DONE", result=result)
        except Exception as err:  # reported through GET /train/, not lost in a thread
            task.update(status="ERROR", details=[f"{type(err).__name__}: {err}"])
        finally:
            task["end_ts"] = time.time()

    def wait(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)
        for scheduler in self.schedulers.values():
            scheduler.wait(timeout)

    def last_result(self, structure: str | None = None) -> dict | None:
        """The newest episode result of `structure`; None: of the last requested episode's
        structure, else of the first structure with one. Carries the structure's name."""
        if structure is None:
            asked = (self.task or {}).get("structure")
            trained = [s for s in self.schedulers if self.schedulers[s].results]
            structure = asked if asked in trained else (trained[0] if trained else self.first)
        results = self.schedulers[structure].results
        return {**results[-1].as_dict(), "structure": structure} if results else None

    def _structure_status(self, structure: str) -> dict:
        results = self.schedulers[structure].results
        status = "RUNNING" if self.is_running(structure) else ("DONE" if results else "NONE")
        return {"status": status, "episodes": len(results), "result": self.last_result(structure)}

    def status(self) -> dict:
        """MONAI Label's task shape (id, status, start_ts, end_ts, result, details) plus episode
        counts: over the site at the top, and each structure's own under `structures`."""
        if self.running:
            status = "RUNNING"
        elif self.task is not None and self.task["status"] == "ERROR":
            status = "ERROR"
        else:
            status = "DONE" if any(s.results for s in self.schedulers.values()) else "NONE"
        task = self.task or {}
        return {
            "id": task.get("id", "episodes"),
            "status": status,
            "automatic": self.automatic,
            "start_ts": task.get("start_ts"),
            "end_ts": task.get("end_ts"),
            "result": self.last_result(),
            "details": task.get("details", []),
            "episodes": sum(len(s.results) for s in self.schedulers.values()),
            "structures": {structure: self._structure_status(structure) for structure in self.schedulers},
        }
