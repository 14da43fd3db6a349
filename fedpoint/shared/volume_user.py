"""The 3D simulated user: a whole volume annotated interaction by interaction, by either route.

The protocol of the CVPR 2025 interactive 3D segmentation challenge, with clicks only: an
interaction is one click on any slice of the volume; the first at the deepest point of the object,
each next one at the deepest point (in mm) of the largest connected 3D error region of the mask so
far, positive when that region is a false negative (`fedpoint.shared.clicker.Clicker` on the 3D
mask). What a click does is the route's business (`interact(click) -> 3D mask`): the 3D base
predicts the volume in one window, the propagation route predicts the clicked slice and carries it
through the others. Dice, NoC@85/90 and Dice-AUC are taken on the 3D mask after each interaction;
each interaction's wall time is the route's alone (the user's search for the error is not timed).
Deterministic: the same route on the same volume gives the same clicks and the same figures.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from fedpoint.shared.clicks import Click
from fedpoint.shared.metrics import DICE_AUC, NOF_BUDGET, click_metrics, dice, dice_auc
from fedpoint.shared.simulated_user import SimulatedUser

Interact = Callable[[Click], np.ndarray]

INTERACTION_P50 = "interaction_p50_ms"  # a volume record's median and 95th percentile time per interaction
INTERACTION_P95 = "interaction_p95_ms"


@dataclass(frozen=True)
class VolumeStep:
    """One interaction: the click (a voxel of the volume), the 3D Dice after it, its wall time."""

    click: Click
    dice: float
    ms: float


def simulate_volume(interact: Interact, gt: np.ndarray, budget: int,
                    spacing: Sequence[float] | None = None) -> list[VolumeStep]:
    """Up to `budget` interactions on one volume; the user stops early only at a perfect mask."""
    gt = np.asarray(gt, bool)
    if gt.ndim != 3:
        raise ValueError(f"the 3D simulated user needs a volume mask, got shape {gt.shape}")
    user = SimulatedUser(gt, "deepest", spacing=spacing)
    steps: list[VolumeStep] = []
    mask = None
    for _ in range(budget):
        click = user.respond(mask)
        if click is None:
            break
        t0 = time.perf_counter()
        mask = np.asarray(interact(click), bool)
        ms = (time.perf_counter() - t0) * 1e3
        if mask.shape != gt.shape:
            raise ValueError(f"the route returned a mask of shape {mask.shape} for a volume of shape {gt.shape}")
        steps.append(VolumeStep(click, dice(mask, gt), ms))
    return steps


def volume_metrics(steps: Sequence[VolumeStep], budget: int = NOF_BUDGET) -> dict[str, float]:
    """Dice@k, NoC@85/90 and NoF (`click_metrics`), Dice-AUC, and the interaction times' p50/p95."""
    if not steps:
        raise ValueError("no interaction to score")
    dices = [s.dice for s in steps]
    ms = np.array([s.ms for s in steps])
    return {**click_metrics(dices, budget), DICE_AUC: dice_auc(dices),
            INTERACTION_P50: float(np.percentile(ms, 50)), INTERACTION_P95: float(np.percentile(ms, 95))}
