"""The simulated user: the one loop of clicks, predictions and Dice that every measurement runs.

RITM's protocol: the first click is given (an object sampler's) or the user's own, at the deepest
point of the object (a random point of it for the "random" user); every next click is at the
largest error of the last prediction (`Clicker`). The user stops when the mask is perfect or the
budget is spent. Evaluation, the episodes' validation Dice-AUC and training iterations, the
pre-training's steps and validation, and the click benchmarks all go through `SimulatedUser`, so
they agree on where a user clicks and when they stop.

`simulate` runs one image: it takes a `predict(clicks) -> mask` callable (a session, a model on a
window, a network with its previous mask: whatever the caller holds) and yields one `ClickStep` per
click. A batch of images predicted together (pre-training) drives several `SimulatedUser`s in
lockstep with `respond`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, Literal, Sequence

import numpy as np

from fedpoint.shared.clicker import Clicker, mask_bounds
from fedpoint.shared.clicks import Box, Click
from fedpoint.shared.metrics import dice

Predict = Callable[[Sequence[Click]], np.ndarray]


class SimulatedUser:
    """One user annotating one object: its clicks so far and where it clicks next.

    `rng` (the "random" user) gives the user its seed by one draw, at construction, so callers
    sharing a generator draw in the order they create users; `seed` sets it directly."""

    def __init__(self, gt: np.ndarray, mode: Literal["deepest", "random"] = "deepest", *,
                 first: Click | None = None, seed: int | None = None, rng: np.random.Generator | None = None,
                 spacing: Sequence[float] | None = None):
        if rng is not None:
            seed = int(rng.integers(2**31))
        self.clicker = Clicker(gt, mode=mode, seed=seed, spacing=spacing)
        self.clicks: list[Click] = []
        self._first = first

    def respond(self, pred: np.ndarray | None = None) -> Click | None:
        """The next click given the current prediction (None before any), added to `clicks`; None
        when the prediction is already perfect (nothing is added: asked again, the user looks again).
        A given `first` click is the answer to the first question, whatever the prediction."""
        if not self.clicks and self._first is not None:
            click = self._first
        else:
            click = self.clicker.next_click(pred)
        if click is not None:
            self.clicks.append(click)
        return click


def tight_box(gt: np.ndarray) -> Box:
    """The simulated user's box: the tightest box around the truth (the CVPR 2025 challenge's
    protocol draws it from the ground truth the same way). Refuses an empty mask."""
    bounds = mask_bounds(np.asarray(gt, bool))
    if bounds is None:
        raise ValueError("an empty mask has no box")
    lo, hi = bounds
    return Box(tuple(int(v) for v in lo), tuple(int(v) + 1 for v in hi))


@dataclass(frozen=True)
class ClickStep:
    """One click of a simulated interaction: the click (None for a click the user did not need,
    see `fill`), the mask predicted after it, and its Dice against the truth (None unless scored)."""

    click: Click | None
    mask: np.ndarray | None
    dice: float | None


def simulate(predict: Predict, gt: np.ndarray, budget: int, *, mode: Literal["deepest", "random"] = "deepest",
             first: Click | None = None, seed: int | None = None, rng: np.random.Generator | None = None,
             spacing: Sequence[float] | None = None, score: bool = True, fill: bool = False,
             start: np.ndarray | None = None) -> Iterator[ClickStep]:
    """Up to `budget` clicks on one image; `predict(clicks)` gets every click so far (the newest
    last) and returns the predicted mask. `start` is the mask shown before the first click (after a
    box prompt, the box's prediction): the first click then goes to its largest error. With `fill`, a user who stopped at a perfect mask still
    yields a ClickStep (click None, Dice 1.0) for each click left, so Dice-AUC counts the whole budget.
    The user is created now (its seed drawn from `rng` now), the clicks as the caller iterates."""
    user = SimulatedUser(gt, mode, first=first, seed=seed, rng=rng, spacing=spacing)
    return _interaction(user, predict, gt, budget, score, fill, start)


def _interaction(user: SimulatedUser, predict: Predict, gt, budget: int, score: bool, fill: bool,
                 start: np.ndarray | None = None) -> Iterator[ClickStep]:
    mask = start
    for k in range(budget):
        click = user.respond(mask)
        if click is None:  # a perfect mask: the user stops
            if fill:
                for _ in range(budget - k):
                    yield ClickStep(None, mask, 1.0)
            return
        mask = predict(user.clicks)
        yield ClickStep(click, mask, dice(mask, gt) if score else None)
