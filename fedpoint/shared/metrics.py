"""Interactive segmentation metrics over a sequence of clicks.

NoC and NoF here are Dice-based (not IoU-based as in RITM's natural-image papers): NoC@90 is the
number of clicks until Dice >= 0.90, or the click budget when it is never reached.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

NOF_BUDGET = 20


def dice(pred: np.ndarray, gt: np.ndarray) -> float:
    """Dice of two binary masks; two empty masks agree perfectly."""
    pred, gt = np.asarray(pred, bool), np.asarray(gt, bool)
    if pred.shape != gt.shape:
        raise ValueError(f"mask shapes differ: {pred.shape} vs {gt.shape}")
    total = int(pred.sum()) + int(gt.sum())
    return 1.0 if total == 0 else 2.0 * int((pred & gt).sum()) / total


def dice_at(dices: Sequence[float], k: int) -> float:
    """Dice after k clicks (1-based). A user who stopped early keeps their last mask."""
    if k < 1 or not dices:
        raise ValueError("need k >= 1 and at least one click")
    return float(dices[min(k, len(dices)) - 1])


def noc(dices: Sequence[float], threshold: float, budget: int = NOF_BUDGET) -> int:
    """Clicks needed to reach Dice >= threshold, or `budget` if never reached within it."""
    for k, d in enumerate(dices[:budget], start=1):
        if d >= threshold:
            return k
    return budget


def nof(dices: Sequence[float], threshold: float = 0.90, budget: int = NOF_BUDGET) -> bool:
    """Failure: Dice never reaches the threshold within the budget."""
    return not any(d >= threshold for d in dices[:budget])


def dice_auc(dices: Sequence[float]) -> float:
    """Area under Dice-vs-clicks, normalised to [0, 1] (the mean Dice over the clicks)."""
    return float(np.mean(dices)) if len(dices) else 0.0


def click_metrics(dices: Sequence[float], budget: int = NOF_BUDGET) -> dict[str, float]:
    """The standard per-image summary: Dice@1/3/5/10, NoC@85/90 and NoF@budget."""
    out = {f"dice{k}": dice_at(dices, k) for k in (1, 3, 5, 10)}
    out["noc85"] = noc(dices, 0.85, budget)
    out["noc90"] = noc(dices, 0.90, budget)
    out["nof"] = float(nof(dices, 0.90, budget))
    out["clicks"] = len(dices)
    return out
