"""A site's engine: per task (structure), its model, store, episode scheduler and regression guard.

The annotation service, the Flower ClientApp and `fedpoint evaluate` all annotate through this.
"""

from __future__ import annotations

import functools
import threading
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from fedpoint.client import splits as episode_splits
from fedpoint.client.episodes import EpisodeScheduler, load_cases
from fedpoint.client.guards import GuardReview, RegressionGuard, Snapshot, snapshot
from fedpoint.client.replay_judge import ReplayJudge
from fedpoint.client.site_model import SiteModel, SiteModelFactory
from fedpoint.client.session import AnnotationSession, check_mask
from fedpoint.client.site_store import SiteStore
from fedpoint.shared.adapters import Adapter, State
from fedpoint.shared.clicker import deepest_point
from fedpoint.shared.config import AdaptationConfig, AdapterConfig
from fedpoint.shared.device import DEFAULT_DEVICE
from fedpoint.shared.focus import FocusConfig
from fedpoint.shared.model import load_base
from fedpoint.shared.tasks import normalise_task


@dataclass
class TaskSlot:
    """One task's (structure's) adaptation: its own model (adapter and Adam state, online guard),
    its store (`SiteStore.for_task`), its episode scheduler and its regression guard."""

    task: str
    model: SiteModel
    store: SiteStore | None
    regression_guard: RegressionGuard
    scheduler: EpisodeScheduler | None
    judge: ReplayJudge | None = None  # the replay judge, when the adaptation config turns it on
    activity: int = 0  # sessions opened and accepted: a held-back case is undone only if nothing ran between


ModelFactory = Callable[[str, "SiteStore | None"], SiteModel]  # SiteModelFactory, or a test's own


class SiteEngine:
    """A site's adaptation, one slot per task. `model`, `store`, `regression_guard` and `scheduler` are the
    primary task's (the default task unless `task` says otherwise): code that knows nothing of
    tasks sees the site's one adapter, as before. Another task's slot is made on first use by
    `factory` (`create` gives one: a fresh adapter on the frozen base, or the task's saved one)."""

    def __init__(self, model: SiteModel, store: SiteStore | None = None, campaign_size: int | None = None,
                 background_episodes: bool = True, task: str | None = None, factory: ModelFactory | None = None):
        self.root_store = store
        self.campaign_size, self.background_episodes = campaign_size, background_episodes
        self.factory = factory
        self.task = normalise_task(task)
        self.slots: dict[str, TaskSlot] = {}
        self._slots_lock = threading.Lock()
        self._held: dict[int, tuple[weakref.ref, Snapshot, int]] = {}  # held-back sessions: the state before them
        self._add_slot(self.task, model)
        self._opened = 0

    def _add_slot(self, task: str, model: SiteModel) -> TaskSlot:
        store = self.root_store.for_task(task) if self.root_store is not None else None
        if store is not None:  # every rolled-back online update lands in the task's log, with its reason
            model.online_guard.listener = lambda event: store.log("online-guard-rejected", **event)
        regression_guard = RegressionGuard(clicks=model.adapt_cfg.episode_val_clicks)
        scheduler = None
        if model.adapt_cfg.uses_episodes:
            if store is None:
                raise ValueError(f"mode {model.adapt_cfg.mode!r} trains on the annotation cache: give the engine a site store")
            scheduler = EpisodeScheduler(model, store, self.campaign_size, self.background_episodes, regression_guard)
        judge = None
        if model.adapt_cfg.judge and model.adapt_cfg.mode != "frozen":
            judge = ReplayJudge.from_config(model.adapt_cfg)
            judge.start(model)
            if store is not None:
                judge.listener = lambda event: store.log("replay-judge-rolled-back", **event)
        slot = self.slots[task] = TaskSlot(task, model, store, regression_guard, scheduler, judge)
        return slot

    def slot(self, task: str | None = None) -> TaskSlot:
        """The slot of `task` (None: the primary task), made on first use."""
        name = self.task if task is None else normalise_task(task)
        with self._slots_lock:
            if name not in self.slots:
                if self.factory is None:
                    raise ValueError(f"this engine adapts task {self.task!r} only; it cannot open task {name!r}")
                store = self.root_store.for_task(name) if self.root_store is not None else None
                self._add_slot(name, self.factory(name, store))
            return self.slots[name]

    @property
    def model(self) -> SiteModel:
        return self.slots[self.task].model

    @property
    def store(self) -> SiteStore | None:
        return self.slots[self.task].store

    @property
    def regression_guard(self) -> RegressionGuard:
        return self.slots[self.task].regression_guard

    @property
    def scheduler(self) -> EpisodeScheduler | None:
        return self.slots[self.task].scheduler

    @scheduler.setter
    def scheduler(self, scheduler: EpisodeScheduler | None) -> None:
        """Replace the primary task's episode scheduler (tests and callers that build their own)."""
        self.slots[self.task].scheduler = scheduler

    @classmethod
    def create(cls, base: str | Path | None = None, adapter: AdapterConfig | str = "norm",
               adaptation: AdaptationConfig | None = None, store: SiteStore | str | Path | None = None,
               device: str = DEFAULT_DEVICE, campaign_size: int | None = None, background_episodes: bool = True,
               adapter_dir: str | Path | None = None, focus: FocusConfig | None = None,
               task: str | None = None) -> "SiteEngine":
        """Load the base and open `task`'s model (None: the default task) through the one
        `SiteModelFactory`: `adapter_dir`, else the store's newest adapter version that loads, else
        a fresh adapter of the kind `adapter` names; other tasks open the same way on first use."""
        net, model_cfg, _card = load_base(base, device)
        if isinstance(store, (str, Path)):
            store = SiteStore(store)
        factory = SiteModelFactory(net, model_cfg, adaptation or AdaptationConfig(), device, focus, adapter)
        primary = normalise_task(task)
        model = factory(primary, store.for_task(primary) if store is not None else None, adapter_dir)
        return cls(model, store, campaign_size, background_episodes, primary, factory)

    def save_version(self, meta: dict, make_current: bool = True, task: str | None = None) -> int:
        """Write the task's live adapter, with its optimizer state, as a new version in its store."""
        slot = self.slot(task)
        with slot.model.lock:
            return slot.store.save_adapter(slot.model.adapter, meta, make_current, slot.model.optimizer.state_dict())

    @property
    def adapter(self) -> Adapter:
        return self.model.adapter

    def open(self, image: np.ndarray, case_id: str | None = None, seed: int | None = None,
             spacing: tuple[float, ...] | None = None, into_cache: bool = True,
             task: str | None = None) -> AnnotationSession:
        """A session on `image` ((C, *spatial) or spatial only) that adapts `task`'s adapter (None:
        the primary task's); `spacing` in mm per spatial axis makes the focus crop anisotropy-aware
        (3D volumes with thick slices). The one place a session is opened (evaluation,
        simulations, benchmarks, the site service). With `into_cache=False` accepting it runs the
        post update only and the caller stores the case (the service writes a multi-slice save as
        one all-or-none group)."""
        slot = self.slot(task)
        self._opened += 1
        on_accept = functools.partial(self._accepted, slot) if into_cache else None
        session = AnnotationSession(slot.model, image, case_id or f"case-{self._opened:05d}", on_accept,
                                    seed=self._opened if seed is None else seed, spacing=spacing)
        slot.activity += 1
        if slot.judge is not None and slot.judge.holds_back():
            self._held[id(session)] = (weakref.ref(session), snapshot(slot.model), slot.activity)
        return session

    def accept(self, session: AnnotationSession, mask: np.ndarray | None = None) -> np.ndarray:
        """The one way an annotation is accepted: the session's accept (post-interaction update,
        then into the cache when opened so). A mask given for a session without any click first
        gets one at the mask's deepest point: the post update learns from a first click."""
        if mask is not None and not session.steps:
            session.click(deepest_point(check_mask(mask, session.spatial_shape)), True)
        held = self._held.pop(id(session), None)
        if held is not None and held[0]() is not session:  # an id reused after an earlier session was dropped
            held = None
        slot = self._slot_of(session)
        final = session.accept(mask)
        if slot is not None and slot.judge is not None:
            if held is not None:  # a held-back case: what its session taught is undone, it joins the judge's set
                _, before, activity = held
                slot.judge.hold_back(slot.model, session.image, final, before if slot.activity == activity else None)
            else:
                slot.judge.judge(slot.model, session.case_id)
        if slot is not None:
            slot.activity += 1
        return final

    def _slot_of(self, session: AnnotationSession) -> TaskSlot | None:
        return next((s for s in self.slots.values() if s.model is session.model), None)

    def _accepted(self, slot: TaskSlot, session: AnnotationSession, mask: np.ndarray) -> None:
        if slot.store is None:
            return
        slot.store.add_case(session.case_id, session.image, mask, {"clicks": len(session.steps)})
        if slot.scheduler is not None:
            slot.scheduler.notify()

    def held_out(self, task: str | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
        """The task's cached cases no episode trains on (selection and judgement sets)."""
        slot = self.slot(task)
        if slot.store is None:
            return []
        return load_cases(slot.store, episode_splits.held_out(slot.store.splits()))

    def offer(self, state: State, source: str, task: str | None = None) -> GuardReview:
        """An adapter offered from outside (a federation bank) for `task`: swap it in if the regression guard
        passes it; returns its review. A task with no held-out case yet takes it
        unvalidated (said so in the log): it has nothing better to start from."""
        slot = self.slot(task)
        review = slot.regression_guard.review(slot.model, state, self.held_out(slot.task), source, slot.store, unvalidated_pass=True)
        if review.accepted:
            slot.model.swap_state(state, reset_optimizer=False)
            if slot.judge is not None:  # the bank is the task's new start
                slot.judge.rebase(slot.model)
        return review

    def wait(self) -> None:
        for slot in list(self.slots.values()):
            if slot.scheduler is not None:
                slot.scheduler.wait()


def set_threads(n: int | None) -> None:
    if n:
        torch.set_num_threads(n)
