"""CLoPA-style training episodes on the growing annotation cache.

An episode starts when the accepted cases not yet used reach a fraction of the campaign size (or a
count). New cases are split into cumulative train, validation (picks the best epoch) and
judgement (the guard's verdict) sets, under the store's lock, by `fedpoint.client.splits`. An episode is
E epochs x I iterations of simulated-click training (a first click, then up to N corrections, each
step's Dice+CE averaged); after each epoch the validation Dice-AUC over clicks (EMA-smoothed) picks
the best epoch. The live model keeps serving clicks meanwhile: training runs on a copy, and what
the best epoch changed is re-based onto the live adapter (so online updates made meanwhile stay)
and swapped in atomically only if the regression guard (`fedpoint.client.guards`) passes it on the
judgement cases.

Episodes see the images the way the annotation session does: every prediction in the focus
window the session would pick (first click: context window; later: zoom window of the previous
mask and the clicks), losses on that window's grid, masks pasted back with the click rule.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass

import numpy as np
import torch

from fedpoint.client.guards import RegressionGuard, simulated_dice_auc
from fedpoint.client.site_model import SiteModel
from fedpoint.client.splits import split_rule
from fedpoint.client.site_store import SiteStore
from fedpoint.shared.adapters import State
from fedpoint.shared.focus import enforce_clicks
from fedpoint.shared.losses import dice_ce
from fedpoint.shared.simulated_user import simulate


def train_iteration(model: SiteModel, image: np.ndarray, mask: np.ndarray, max_edits: int, rng: np.random.Generator) -> float:
    """One simulated interaction on one case: a step per click, losses averaged, one optimizer step."""
    image_t = model.image_tensor(image)
    target = torch.as_tensor(mask, dtype=torch.bool, device=model.device)[None, None]
    spatial = tuple(mask.shape)
    prev, losses = None, []

    def step(clicks):  # a prediction with gradient; its loss is accumulated for the one optimizer step
        nonlocal prev
        view = model.look(image_t, clicks, prev)
        logits = model.logits_in(view, grad=True)
        loss = dice_ce(logits, view.window.crop(target, mask=True).float()) / (1 + max_edits)
        loss.backward()
        losses.append(loss.item())
        prev = enforce_clicks(view.paste(logits.detach() > 0).float(), clicks)
        return prev[0, 0].bool().cpu().numpy()

    steps = simulate(step, mask, 1 + max_edits, mode="random", rng=rng, score=False)
    model.optimizer.zero_grad(set_to_none=True)
    for _ in steps:
        pass
    model.optimizer.step()
    return float(np.sum(losses))


@dataclass
class EpisodeResult:
    episode: int
    train_cases: int
    val_cases: int
    best_epoch: int
    val_scores: list[float]
    baseline: float
    accepted: bool
    seconds: float
    version: int | None = None
    judge_cases: int = 0

    def as_dict(self) -> dict:
        return dict(self.__dict__)


class EpisodeScheduler:
    """Decides when an episode runs, runs it (in the background by default) and swaps the result in."""

    def __init__(self, model: SiteModel, store: SiteStore, campaign_size: int | None = None,
                 background: bool = True, regression_guard: RegressionGuard | None = None, make_current: bool = True):
        self.model, self.store = model, store
        self.make_current = make_current  # False in the ClientApp: the service's regression guard decides
        self.cfg = model.adapt_cfg
        self.campaign_size = campaign_size
        self.background = background
        self.regression_guard = regression_guard or RegressionGuard(clicks=self.cfg.episode_val_clicks)
        self.results: list[EpisodeResult] = []
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._rng = np.random.default_rng(self.cfg.seed)

    @property
    def threshold(self) -> int:
        by_fraction = math.floor(self.cfg.episode_fraction * self.campaign_size) if self.campaign_size else 0
        return max(self.cfg.episode_min_cases, by_fraction)

    def new_cases(self) -> list[str]:
        splits = self.store.splits()
        assigned = {c for ids in splits.values() for c in ids}
        return [c for c in self.store.case_ids() if c not in assigned]

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def notify(self) -> bool:
        """Call after each accept; starts an episode when enough new cases have arrived."""
        with self._lock:
            if self.running or len(self.new_cases()) < self.threshold:
                return False
            if self.cfg.episode_max is not None and len(self.results) >= self.cfg.episode_max:
                return False  # the campaign's episodes are spent (ablation: 1 against 3)
            if not self.background:
                self.run_episode()
                return True
            self._thread = threading.Thread(target=self.run_episode, name="fedpoint-episode", daemon=True)
            self._thread.start()
            return True

    def wait(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def _assign_split(self) -> dict[str, list[str]]:
        return self.store.assign_new_cases(lambda new: split_rule(new, self._rng))

    def _load(self, ids: list[str]) -> list[tuple[np.ndarray, np.ndarray]]:
        return load_cases(self.store, ids)

    def run_episode(self) -> EpisodeResult:
        """Train a copy on the cache, pick its best epoch on `val`, re-base that epoch's change onto
        the live adapter (online updates made meanwhile are kept) and let the regression guard judge the
        result on `judge`, cases the selection never saw."""
        t0 = time.perf_counter()
        splits = self._assign_split()
        train, val, judge = self._load(splits["train"]), self._load(splits["val"]), self._load(splits["judge"])
        trainer = self.model.copy(lr=self.cfg.episode_lr)
        start_state = trainer.adapter.state()
        baseline = simulated_dice_auc(trainer, val, self.cfg.episode_val_clicks)
        best_state, best_score, best_epoch, ema, scores = start_state, baseline, 0, None, []
        for epoch in range(1, self.cfg.episode_epochs + 1):
            for _ in range(self.cfg.episode_iters):
                image, mask = train[int(self._rng.integers(len(train)))]
                train_iteration(trainer, image, mask, self.cfg.episode_max_edits, self._rng)
            score = simulated_dice_auc(trainer, val, self.cfg.episode_val_clicks)
            ema = score if ema is None else 0.9 * score + 0.1 * ema
            scores.append(round(ema, 4))
            if ema > best_score:
                best_state, best_score, best_epoch = trainer.adapter.state(), ema, epoch
        accepted, version, rebased = False, None, None
        if best_epoch:
            rebased = rebase(best_state, start_state, self.model.adapter.state())
            accepted = self.regression_guard.review(self.model, rebased, judge, "episode", self.store,
                                         require_cases=self.regression_guard.min_cases).accepted
        if accepted:
            self.model.swap_state(rebased, reset_optimizer=False)
            version = self.store.save_adapter(self.model.adapter, {"source": "episode", "val_dice_auc": best_score},
                                              make_current=self.make_current,
                                              optimizer=self.model.optimizer.state_dict())
        result = EpisodeResult(len(self.results) + 1, len(train), len(val), best_epoch, scores, baseline,
                               bool(accepted), time.perf_counter() - t0, version, len(judge))
        self.results.append(result)
        self.store.log("episode", **{k: v for k, v in result.as_dict().items() if k != "val_scores"})
        return result


def load_cases(store: SiteStore, ids: list[str]) -> list[tuple[np.ndarray, np.ndarray]]:
    """(image, mask) of each cached case; one the store quarantined (unreadable) is left out."""
    out = []
    for case_id in ids:
        try:
            out.append(store.load_case(case_id)[:2])
        except (KeyError, ValueError, OSError):
            continue
    return out


def rebase(best: State, start: State, live: State) -> State:
    """The live adapter plus what the episode changed (best - start): updates the live model made
    while the episode trained on its copy survive the swap."""
    return {k: live[k] + (best[k] - start[k]) for k in live}
