"""A site's engine: its model, its store, its episode scheduler and its regression guard, together.

The annotation service, the Flower ClientApp and `fedpoint evaluate` all annotate through this.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from fedpoint.client import splits as episode_splits
from fedpoint.client.episodes import EpisodeScheduler, GuardReview, RegressionGuard, load_cases
from fedpoint.client.site_model import SiteModel
from fedpoint.client.session import AnnotationSession, check_mask
from fedpoint.client.site_store import SiteStore
from fedpoint.shared.adapters import Adapter, State, load_adapter, make_adapter
from fedpoint.shared.clicker import deepest_point
from fedpoint.shared.config import AdaptationConfig, AdapterConfig
from fedpoint.shared.focus import FocusConfig
from fedpoint.shared.model import load_base


class SiteEngine:
    def __init__(self, model: SiteModel, store: SiteStore | None = None, campaign_size: int | None = None,
                 background_episodes: bool = True):
        self.model = model
        self.store = store
        if store is not None:  # every rolled-back online update lands in the site's log, with its reason
            model.online_guard.listener = lambda event: store.log("online-guard-rejected", **event)
        self.guard = RegressionGuard(clicks=model.adapt_cfg.episode_val_clicks)
        self.scheduler = None
        if model.adapt_cfg.uses_episodes:
            if store is None:
                raise ValueError(f"mode {model.adapt_cfg.mode!r} trains on the annotation cache: give the engine a site store")
            self.scheduler = EpisodeScheduler(model, store, campaign_size, background_episodes, self.guard)
        self._opened = 0

    @classmethod
    def create(cls, base: str | Path | None = None, adapter: AdapterConfig | str = "norm",
               adaptation: AdaptationConfig | None = None, store: SiteStore | str | Path | None = None,
               device: str = "cpu", campaign_size: int | None = None, background_episodes: bool = True,
               adapter_dir: str | Path | None = None, focus: FocusConfig | None = None) -> "SiteEngine":
        """Load the base, open the adapter kind and (optionally) resume the store's current adapter."""
        net, model_cfg, _card = load_base(base, device)
        if isinstance(store, (str, Path)):
            store = SiteStore(store)
        resume = adapter_dir or (store.usable_adapter() if store is not None else None)
        # a saved adapter brings its own kind and settings (an exported bank may use LoRA rank 2, say)
        adapt = load_adapter(net, resume) if resume is not None else make_adapter(net, adapter)
        model = SiteModel(adapt, model_cfg, adaptation or AdaptationConfig(), device, focus)
        if store is not None and adapter_dir is None:  # the site's Adam state continues with its adapter
            model.load_optimizer_state(store.latest_optimizer_state(adapt.kind))
        return cls(model, store, campaign_size, background_episodes)

    def save_version(self, meta: dict, make_current: bool = True) -> int:
        """Write the live adapter, with its optimizer state, as a new store version."""
        with self.model.lock:
            return self.store.save_adapter(self.adapter, meta, make_current, self.model.optimizer.state_dict())

    @property
    def adapter(self) -> Adapter:
        return self.model.adapter

    def open(self, image: np.ndarray, case_id: str | None = None, seed: int | None = None,
             spacing: tuple[float, ...] | None = None, into_cache: bool = True) -> AnnotationSession:
        """A session on `image` ((C, *spatial) or spatial only); `spacing` in mm per spatial axis
        makes the focus crop anisotropy-aware (3D volumes with thick slices). The one place a
        session is opened (evaluation, simulations, benchmarks, the site service). With
        `into_cache=False` accepting it runs the post update only and the caller stores the case
        (the service writes a multi-slice save as one all-or-none group)."""
        self._opened += 1
        return AnnotationSession(self.model, image, case_id or f"case-{self._opened:05d}",
                                 self._accepted if into_cache else None,
                                 seed=self._opened if seed is None else seed, spacing=spacing)

    def accept(self, session: AnnotationSession, mask: np.ndarray | None = None) -> np.ndarray:
        """The one way an annotation is accepted: the session's accept (post-interaction update,
        then into the cache when opened so). A mask given for a session without any click first
        gets one at the mask's deepest point: the post update learns from a first click."""
        if mask is not None and not session.steps:
            session.click(deepest_point(check_mask(mask, session.spatial_shape)), True)
        return session.accept(mask)

    def _accepted(self, session: AnnotationSession, mask: np.ndarray) -> None:
        if self.store is None:
            return
        self.store.add_case(session.case_id, session.image, mask, {"clicks": len(session.steps)})
        if self.scheduler is not None:
            self.scheduler.notify()

    def held_out(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """Cached cases no episode trains on (selection and judgement sets)."""
        if self.store is None:
            return []
        return load_cases(self.store, episode_splits.held_out(self.store.splits()))

    def offer(self, state: State, source: str) -> GuardReview:
        """An adapter offered from outside (a federation bank): swap it in if the guard passes it;
        returns the guard's review. A site with no held-out case yet takes it unvalidated (said so
        in the log): it has nothing better to start from."""
        review = self.guard.review(self.model, state, self.held_out(), source, self.store, unvalidated_pass=True)
        if review.accepted:
            self.model.swap_state(state, reset_optimizer=False)
        return review

    def wait(self) -> None:
        if self.scheduler is not None:
            self.scheduler.wait()


def set_threads(n: int | None) -> None:
    if n:
        torch.set_num_threads(n)
