"""Interactive segmentation metrics over a sequence of clicks.

NoC and NoF here are Dice-based (not IoU-based as in RITM's natural-image papers): NoC@90 is the
number of clicks until Dice >= 0.90, or the click budget when it is never reached.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

NOF_BUDGET = 20

# The metric names, here and only here: every table, record and summary takes its keys from these.
DICE_AT = (1, 3, 5, 10)      # Dice after k clicks
NOC_AT = (85, 90)            # clicks to reach this Dice (percent)
NOF_AT = 90                  # failure: this Dice (percent) never reached
DICE_KEYS = tuple(f"dice{k}" for k in DICE_AT)
NOC_KEYS = tuple(f"noc{t}" for t in NOC_AT)
NOF = "nof"
CLICKS = "clicks"            # clicks the user made on the image
DICE_AUC = "dice_auc"        # computed from the per-click Dice list (`dice_auc`), not by `click_metrics`
CLICK_METRICS = DICE_KEYS + NOC_KEYS + (NOF,)          # what `click_metrics` scores (plus CLICKS)
TIMING_KEYS = ("predict_ms", "update_ms", "post_ms")   # per-image timings of an annotation record
SUMMARY_KEYS = CLICK_METRICS + TIMING_KEYS             # a stream summary's means (`client.stream.summarize_stream`)
SUMMARY_COLUMNS = CLICK_METRICS + TIMING_KEYS[:2]      # the `fedpoint evaluate` table
SITE_METRICS = DICE_KEYS + (DICE_AUC,) + NOC_KEYS + (NOF,)  # the report's per-site table
HEADERS = {
    **{f"dice{k}": f"Dice@{k}" for k in DICE_AT},
    DICE_AUC: "Dice-AUC",
    **{f"noc{t}": f"NoC@{t}" for t in NOC_AT},
    NOF: "NoF",
    "predict_ms": "ms/pred",
    "update_ms": "ms/upd",
    "post_ms": "ms/post",
}


def is_fraction(key: str) -> bool:
    """A metric in [0, 1] (Dice, Dice-AUC, the failure rate), shown with three decimals; the
    others are counts or milliseconds."""
    return key.startswith("dice") or key.startswith("dsc") or key == NOF


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


BOX_METRICS = ("dice_box", "dice_box5", "dsc_auc5")  # the box-then-clicks protocol (`box_metrics`)
HEADERS |= {"dice_box": "Dice box", "dice_box5": "Dice box+5", "dsc_auc5": "DSC-AUC box+5"}


def box_metrics(dices: Sequence[float], clicks: int = 5) -> dict[str, float]:
    """The box-then-clicks protocol of the CVPR 2025 interactive segmentation challenge, from the
    Dice after the box (`dices[0]`) and after each click: Dice after the box, Dice after the box and
    `clicks` clicks (a user who stopped keeps the last mask), and the area under Dice over those
    `clicks + 1` interactions by the trapezoidal rule, divided by `clicks` so it lies in [0, 1]."""
    if not dices:
        raise ValueError("need the Dice after the box")
    curve = [dice_at(dices, k) for k in range(1, clicks + 2)]
    area = sum((a + b) / 2 for a, b in zip(curve[:-1], curve[1:]))
    return {"dice_box": curve[0], "dice_box5": curve[-1], "dsc_auc5": area / max(clicks, 1)}


def click_metrics(dices: Sequence[float], budget: int = NOF_BUDGET) -> dict[str, float]:
    """The standard per-image summary: Dice@1/3/5/10, NoC@85/90 and NoF@budget (keys: `CLICK_METRICS`
    and `CLICKS`)."""
    out: dict[str, float] = {f"dice{k}": dice_at(dices, k) for k in DICE_AT}
    out |= {f"noc{t}": noc(dices, t / 100, budget) for t in NOC_AT}
    out[NOF] = float(nof(dices, NOF_AT / 100, budget))
    out[CLICKS] = len(dices)
    return out
