"""The site's two guards: what keeps an adapter change only when it does not hurt.

- `OnlineGuard` (one per `SiteModel`): every mid- or post-interaction update is a trial. The
  adapter weights and the optimizer state are snapshotted, the step is taken, and a cheap check
  decides whether it stays or is rolled back (weights and Adam moments both, so a rejected step
  leaves no trace).
  - Mid-interaction (one forward, per click): the updated model, given the same clicks, the same
    previous mask and the same window, must still give the mask the person was just shown (Dice at
    least `guard_consistency`) and keep every click on its side. An update that makes the model
    contradict what it showed a moment ago has moved too far; this is what catches a learning rate
    that collapses the model.
  - Post-interaction (on accept): the one-click Dice of the last `guard_replay` accepted cases, each
    in the window its first click was predicted in, must not fall by more than `guard_tolerance`;
    and on the accepted image itself, the mask for the person's clicks must not get worse. The
    replay cases live in memory only (the store keeps the cache).
  Each decision is counted (`counts`) and each rejection keeps its reason (`events`); sessions put
  them in `record()`, the service in its activity log, experiments in results.json.
- `RegressionGuard` (one per task slot of the engine): a whole candidate adapter (an episode's
  result, a federation bank) is swapped in only if its simulated-user Dice-AUC on held-out cached
  cases is not worse than the live adapter's; each verdict is a `GuardReview`, logged as "guard".

(The service's bearer-token check is a third thing, `fedpoint.client.service.security.TokenGuard`.)
"""

from __future__ import annotations

import copy
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import numpy as np
import torch

from fedpoint.shared.clicks import Click
from fedpoint.shared.metrics import dice_auc


@dataclass
class Snapshot:
    state: dict[str, torch.Tensor]
    optimizer: dict


def _cloned(value):
    """A copy of an optimizer state dict: tensors cloned, containers rebuilt (deepcopy's generic
    walk cost about 9 ms a 3D click for a few hundred small tensors)."""
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, dict):
        return {k: _cloned(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_cloned(v) for v in value)
    return copy.copy(value)


def snapshot(model) -> Snapshot:
    return Snapshot(model.adapter.state(), _cloned(model.optimizer.state_dict()))


def restore(model, snap: Snapshot) -> None:
    with model.lock:
        model.adapter.load_state(snap.state)
        model.optimizer.load_state_dict(snap.optimizer)


def _dice(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.bool(), b.bool()
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


def clicks_kept(mask: torch.Tensor, clicks: Sequence[Click]) -> int:
    """How many clicks the raw prediction puts on their own side (positive inside, negative outside)."""
    m = mask.reshape(mask.shape[-len(clicks[0].point):]) if clicks else mask
    return sum(bool(m[c.point]) == c.positive for c in clicks)


@dataclass
class ReplayCase:
    image: torch.Tensor        # (1, C, *window) the first click's window of an accepted image
    target: torch.Tensor       # (1, 1, *window) its accepted mask there
    click: Click | None        # the first click, in window coordinates (None: the case started with a box)
    box: object = None         # its box in window coordinates (`fedpoint.shared.clicks.Box`), if it started with one


@dataclass
class OnlineGuard:
    consistency: float = 0.9
    replay: int = 4
    tolerance: float = 0.02
    enabled: bool = True
    radius: float = 0.02   # trust region: RMS per value of the adapter's distance from the anchor
    counts: dict[str, int] = field(default_factory=lambda: {"mid_kept": 0, "mid_rejected": 0,
                                                            "post_kept": 0, "post_rejected": 0, "rolled_back": 0})
    events: list[dict] = field(default_factory=list)
    listener: Callable[[dict], None] | None = None  # e.g. the site store's log (SiteEngine sets it)

    def __post_init__(self) -> None:
        self.cases: deque[ReplayCase] = deque(maxlen=max(self.replay, 1))
        self.anchor: Snapshot | None = None  # the last state that validated best on the replay cases

    @classmethod
    def from_config(cls, cfg) -> "OnlineGuard":
        return cls(cfg.guard_consistency, cfg.guard_replay, cfg.guard_tolerance, cfg.guard, cfg.guard_radius)

    def project(self, model) -> bool:
        """Trust region: pull the adapter back onto the ball of RMS `radius` around the anchor (a
        kept step may not carry the site further from its last validated state). True if it had to."""
        if not self.enabled or self.anchor is None or self.radius <= 0:
            return False
        params = dict(model.adapter.net.named_parameters())
        with model.lock, torch.no_grad():
            deltas = {n: params[n] - self.anchor.state[n].to(params[n].device) for n in model.adapter.names}
            sq = sum(float((d.float() ** 2).sum()) for d in deltas.values())
            count = sum(d.numel() for d in deltas.values())
            rms = (sq / max(count, 1)) ** 0.5
            if rms <= self.radius:
                return False
            scale = self.radius / rms
            for n, d in deltas.items():
                params[n].copy_(self.anchor.state[n].to(params[n].device) + d * scale)
        self.counts["projected"] = self.counts.get("projected", 0) + 1
        return True

    def _decide(self, stage: str, ok: bool, reason: str, case_id: str, **figures) -> bool:
        self.counts[f"{stage}_{'kept' if ok else 'rejected'}"] += 1
        if not ok:
            event = {"stage": stage, "case": case_id, "reason": reason,
                     **{k: round(float(v), 4) for k, v in figures.items()}}
            self.events.append(event)
            if self.listener is not None:
                self.listener(event)
        return ok

    # ------------------------------------------------------------------------------ mid
    def check_mid(self, model, image_c, clicks_c, prev_c, shown_c: torch.Tensor, case_id: str = "",
                  box=None) -> tuple[bool, torch.Tensor | None]:
        """After a mid step: returns (keep, the updated model's raw mask on the window)."""
        with model.lock, torch.no_grad():
            after = (model.logits(image_c, clicks_c, prev_c, box=box) > 0).float()
        params_ok = all(torch.isfinite(p).all() for p in model.adapter.trainable_parameters())
        agree = _dice(after[0, 0], shown_c.reshape(after.shape)[0, 0])
        kept_before = clicks_kept(shown_c.reshape(after.shape)[0, 0], clicks_c)
        kept_after = clicks_kept(after[0, 0], clicks_c)
        if not params_ok:
            return self._decide("mid", False, "non-finite adapter weights", case_id), None
        if agree < self.consistency:
            return self._decide("mid", False, f"the updated model contradicts the mask it showed (Dice {agree:.3f} < "
                                f"{self.consistency})", case_id, agreement=agree), None
        if kept_after < kept_before:
            return self._decide("mid", False, f"the updated model drops a click ({kept_after} < {kept_before} on their side)",
                                case_id, agreement=agree), None
        return self._decide("mid", True, "", case_id), after

    # ------------------------------------------------------------------------------ post
    def replay_score(self, model) -> float | None:
        if not self.cases:
            return None
        scores = []
        with model.lock, torch.no_grad():
            for case in self.cases:
                pred = model.logits(case.image, [] if case.click is None else [case.click], None, box=case.box) > 0
                scores.append(_dice(pred[0, 0], case.target[0, 0]))
        return float(np.mean(scores))

    def own_score(self, model, image_c, clicks_c: Sequence[Click], target_c: torch.Tensor, box=None) -> float:
        with model.lock, torch.no_grad():
            pred = model.logits(image_c, clicks_c, None, box=box) > 0
        return _dice(pred[0, 0], target_c.reshape(pred.shape)[0, 0])

    def check_post(self, model, before_replay: float | None, before_own: float, image_c, clicks_c, target_c,
                   case_id: str = "", box=None) -> bool:
        params_ok = all(torch.isfinite(p).all() for p in model.adapter.trainable_parameters())
        if not params_ok:
            return self._decide("post", False, "non-finite adapter weights", case_id)
        after_own = self.own_score(model, image_c, clicks_c, target_c, box=box)
        if after_own < before_own - self.tolerance:
            return self._decide("post", False, f"the accepted image got worse with its own clicks (Dice {before_own:.3f} -> "
                                f"{after_own:.3f})", case_id, before=before_own, after=after_own)
        if before_replay is not None:
            after_replay = self.replay_score(model)
            if after_replay < before_replay - self.tolerance:
                return self._decide("post", False, f"one-click Dice on the last {len(self.cases)} accepted cases fell "
                                    f"({before_replay:.3f} -> {after_replay:.3f})", case_id,
                                    before=before_replay, after=after_replay)
        return self._decide("post", True, "", case_id)

    # ------------------------------------------------------------------------------ rolling check
    def set_anchor(self, model) -> None:
        self.anchor = snapshot(model)

    def rolling_check(self, model, case_id: str = "") -> bool:
        """After an accept: many small kept steps can still add up to harm. Score the live model
        and the anchor (the last state that validated at least as well) on the replay cases; when
        the live one is worse by more than `tolerance`, go back to the anchor (weights and Adam
        state), else a live state at least as good becomes the new anchor. Returns False on a
        rollback."""
        if not self.enabled or not self.cases:
            return True
        if self.anchor is None:
            self.set_anchor(model)
            return True
        live = self.replay_score(model)
        with model.lock:
            current = snapshot(model)
            model.adapter.load_state(self.anchor.state)
            anchored = self.replay_score(model)
            model.adapter.load_state(current.state)
        if live < anchored - self.tolerance:
            restore(model, self.anchor)
            self.counts["rolled_back"] += 1
            event = {"stage": "rolling", "case": case_id, "reason": f"one-click Dice on the last {len(self.cases)} accepted "
                     f"cases {live:.3f} < {anchored:.3f} of the last validated state: rolled back to it",
                     "live": round(live, 4), "anchor": round(anchored, 4)}
            self.events.append(event)
            if self.listener is not None:
                self.listener(event)
            return False
        if live >= anchored:
            self.anchor = current
        return True

    def remember(self, image_c: torch.Tensor, target_c: torch.Tensor, click_c: Click | None, box=None) -> None:
        """Keep an accepted case for replay: its first prompt (a click, or the box) in its window."""
        if self.replay:
            self.cases.append(ReplayCase(image_c.detach(), target_c.detach().reshape(1, 1, *image_c.shape[2:]).float(),
                                         click_c, box))


# ------------------------------------------------------------------------------ the regression guard
def simulated_dice_auc(model, samples: list[tuple[np.ndarray, np.ndarray]], clicks: int) -> float:
    """Mean over samples of the Dice-AUC of a deterministic simulated user, no updates."""
    if not samples:
        return float("nan")
    scores = [dice_auc(model.replay(image, mask, clicks)) for image, mask in samples]
    return float(np.mean(scores))


@dataclass(frozen=True)
class GuardReview:
    """The regression guard's verdict on one candidate adapter (what it logs as a "guard" event).
    `candidate` and `current` are None when nothing could be judged (`unvalidated`)."""

    source: str
    accepted: bool
    unvalidated: bool
    val_cases: int
    reason: str
    candidate: float | None = None
    current: float | None = None

    def as_dict(self) -> dict:
        """The logged entry: an unvalidated review names no scores."""
        if self.unvalidated:
            return {"source": self.source, "accepted": self.accepted, "unvalidated": True, "val_cases": self.val_cases,
                    "reason": self.reason}
        return {"source": self.source, "accepted": self.accepted, "unvalidated": False, "candidate": self.candidate,
                "current": self.current, "val_cases": self.val_cases, "reason": self.reason}


@dataclass
class RegressionGuard:
    """Rejects an adapter that scores worse than the current one on held-out cached cases.

    With fewer than `require_cases` cases nothing can be judged: the review says so
    (`unvalidated`) and passes or refuses by `unvalidated_pass` (banks: pass, so a new site starts
    from the federation; episodes: refuse, since nothing checked what they learned)."""

    clicks: int = 5
    tolerance: float = 0.0
    min_cases: int = 1
    history: list[dict] = field(default_factory=list)

    def review(self, model, candidate: Mapping[str, torch.Tensor], val: list[tuple[np.ndarray, np.ndarray]], source: str,
               store=None, candidate_score: float | None = None,
               require_cases: int = 0, unvalidated_pass: bool = False) -> GuardReview:
        if len(val) < max(require_cases, 1):
            return self._record(GuardReview(
                source, unvalidated_pass, True, len(val), f"{len(val)} held-out case(s), {max(require_cases, 1)} needed: "
                + ("passed unvalidated" if unvalidated_pass else "refused unvalidated")), store)
        bad = [k for k, v in candidate.items() if not torch.isfinite(torch.as_tensor(v)).all()]
        current = simulated_dice_auc(model, val, self.clicks)
        if bad:
            candidate_score = float("nan")
            ok, reason = False, f"non-finite values in {bad[0]}"
        else:
            if candidate_score is None:
                trial = model.copy()
                trial.adapter.load_state(candidate)
                candidate_score = simulated_dice_auc(trial, val, self.clicks)
            ok = candidate_score >= current - self.tolerance
            reason = "" if ok else f"Dice-AUC {candidate_score:.4f} < current {current:.4f} on {len(val)} held-out case(s)"
        return self._record(GuardReview(source, ok, False, len(val), reason, candidate_score, current), store)

    def _record(self, review: GuardReview, store) -> GuardReview:
        entry = review.as_dict()
        self.history.append(entry)
        if store is not None:
            store.log("guard", **entry)
        return review
