"""The replay judge: does the adapted model need fewer clicks on the site's own cases? Label-free.

The site's accepted masks are the only truth it has. Every `judge_every`-th accepted case (the
first included) is held back: whatever its session taught the adapter is undone on accept, and
the case joins the judge's set (the newest `judge_cases`). After every kept update (the post
update of an accept, an episode the accept started), the simulated user replays the judge's cases
against their accepted masks for `judge_clicks` clicks, and the judge counts the clicks to Dice
0.90 (NoC@90, `judge_clicks` + 1 when not reached; Dice-AUC breaks ties). The adapter goes back to
the last state that passed (weights and Adam moments) when it needs more clicks than that state,
and to the frozen start when the frozen start needs fewer clicks than either.

The per-accept cost is one replay of the judge's set (`judge_cases` x `judge_clicks` forwards),
plus two more replays when the set changes (the last good state and the frozen start re-scored).
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from fedpoint.client.guards import Snapshot, restore, snapshot
from fedpoint.shared.metrics import dice_auc

Case = tuple[np.ndarray, np.ndarray]  # (image, accepted mask)


@dataclass(frozen=True)
class ReplayScore:
    noc90: float     # mean clicks to Dice 0.90 over the judge's cases (clicks + 1 when not reached)
    dice_auc: float  # mean Dice-AUC over the same clicks

    def worse_than(self, other: "ReplayScore", tolerance: float) -> bool:
        """More clicks, or as many clicks and a Dice-AUC lower by more than `tolerance`."""
        if self.noc90 > other.noc90 + 1e-9:
            return True
        return abs(self.noc90 - other.noc90) <= 1e-9 and self.dice_auc < other.dice_auc - tolerance


def replay_score(model, cases: list[Case], clicks: int) -> ReplayScore:
    """The simulated user (deterministic) on each case against its accepted mask, no updates."""
    nocs, aucs = [], []
    for image, mask in cases:
        dices = model.replay(image, mask, clicks)
        nocs.append(next((k + 1 for k, d in enumerate(dices) if d >= 0.90), clicks + 1))
        aucs.append(dice_auc(dices))
    return ReplayScore(float(np.mean(nocs)), float(np.mean(aucs)))


@dataclass
class ReplayJudge:
    cases_kept: int = 3
    clicks: int = 5
    every: int = 4
    tolerance: float = 0.01
    listener: Callable[[dict], None] | None = None
    counts: dict[str, int] = field(default_factory=lambda: {"held_back": 0, "kept": 0, "rolled_back": 0,
                                                            "to_frozen": 0, "replays": 0})
    events: list[dict] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)  # the judge's time per accept it judged

    def __post_init__(self) -> None:
        self.cases: deque[Case] = deque(maxlen=max(self.cases_kept, 1))
        self.frozen: Snapshot | None = None
        self.good: Snapshot | None = None
        self._good_score: ReplayScore | None = None
        self._frozen_score: ReplayScore | None = None
        self._accepts = 0

    @classmethod
    def from_config(cls, cfg) -> "ReplayJudge":
        return cls(cfg.judge_cases, cfg.judge_clicks, cfg.judge_every, cfg.judge_tolerance)

    def start(self, model) -> None:
        """The frozen start (the adapter as the site opened it) and the first good state."""
        self.frozen = snapshot(model)
        self.good = self.frozen

    def holds_back(self) -> bool:
        """Whether the next accepted case is held back (called once per session, when it opens)."""
        held = self.every > 0 and self._accepts % self.every == 0
        self._accepts += 1
        return held

    def hold_back(self, model, image: np.ndarray, mask: np.ndarray, before: Snapshot | None) -> None:
        """Undo what the held-back session taught (when `before` is given) and keep the case."""
        if before is not None:
            restore(model, before)
        self.cases.append((np.asarray(image), np.asarray(mask, dtype=bool)))
        self.counts["held_back"] += 1
        self._good_score = self._frozen_score = None  # the set changed: re-score both on the next judgement

    def judge(self, model, case_id: str = "") -> bool:
        """After an update: keep it, or roll back to the last good state or to the frozen start.
        Returns True when the live adapter was kept."""
        if not self.cases or self.good is None:
            return True
        t0 = time.perf_counter()
        cases = list(self.cases)
        live = self._score(model, cases)
        if self._good_score is None:
            self._good_score = self._score_state(model, self.good, cases)
        if self._frozen_score is None:
            self._frozen_score = self._score_state(model, self.frozen, cases)
        best_state, best, target = self.good, self._good_score, "the last good state"
        if best.worse_than(self._frozen_score, self.tolerance):
            best_state, best, target = self.frozen, self._frozen_score, "the frozen start"
        kept = not live.worse_than(best, self.tolerance)
        if kept:
            self.good, self._good_score = snapshot(model), live
            self.counts["kept"] += 1
        else:
            restore(model, best_state)
            self.good, self._good_score = best_state, best
            self.counts["to_frozen" if best_state is self.frozen else "rolled_back"] += 1
            event = {"stage": "judge", "case": case_id, "reason": f"NoC@90 {live.noc90:.2f} (Dice-AUC {live.dice_auc:.3f}) "
                     f"on {len(cases)} held-back case(s) against {best.noc90:.2f} ({best.dice_auc:.3f}) of {target}: "
                     "rolled back", "live_noc90": round(live.noc90, 3), "kept_noc90": round(best.noc90, 3)}
            self.events.append(event)
            if self.listener is not None:
                self.listener(event)
        self.seconds.append(time.perf_counter() - t0)
        return kept

    def _score(self, model, cases: list[Case]) -> ReplayScore:
        self.counts["replays"] += 1
        with model.lock:
            return replay_score(model, cases, self.clicks)

    def _score_state(self, model, state: Snapshot, cases: list[Case]) -> ReplayScore:
        """A stored state's score, on the live model's weights for a moment (under its lock)."""
        with model.lock:
            current = model.adapter.state()
            model.adapter.load_state(state.state)
            try:
                return self._score(model, cases)
            finally:
                model.adapter.load_state(current)

    def rebase(self, model) -> None:
        """The adapter was replaced from outside (a bank the site took): that is the new start."""
        self.start(model)
        self._good_score = self._frozen_score = None
