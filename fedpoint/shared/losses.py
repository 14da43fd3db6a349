"""Losses for interactive segmentation and its online adaptation.

`dice_focal` is MONAI's DiceFocalLoss on the sigmoid of one logit map. `ccg_loss` is the
click-centred Gaussian loss of "You Point, I Learn" (Xu et al., ICLR 2026), in the form the paper
states:

    L_CCG = sum_c sum_x G_c(x) * I_c(x) * CE(p(x), y(x)) / (|C| * N)

where G_c is a Gaussian of width sigma around click c truncated at 3 sigma, I_c keeps only voxels
whose (pseudo-)label equals the click's class, CE is the cross-entropy -log p(true class), |C| the
number of clicks and N the number of voxels. The public reference code differs in three ways: it
truncates at a 10-pixel radius with sigma = 10 // 3, averages over batch and pixels without the
1/|C| factor, and calls torch's cross-entropy with its arguments swapped, so each pixel's term is
roughly linear in -p(true class) instead of -log p(true class). We use the -log form.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from fedpoint.shared.clicks import Click, gaussian_window
from fedpoint.shared.monai_import import load_monai


FOCAL_GAMMA, FOCAL_WEIGHT = 2.0, 0.7


@lru_cache(maxsize=1)
def _dice_focal():
    load_monai()
    from monai.losses import DiceFocalLoss  # imported once, on first use

    return DiceFocalLoss(sigmoid=True, gamma=FOCAL_GAMMA, lambda_dice=1.0 - FOCAL_WEIGHT, lambda_focal=FOCAL_WEIGHT)


def dice_focal(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """alpha * focal + (1 - alpha) * Dice with alpha = 0.7, gamma = 2 (the paper's weighting)."""
    return _dice_focal()(logits, target)


@lru_cache(maxsize=1)
def _dice_ce():
    load_monai()
    from monai.losses import DiceCELoss  # built once: episodes call this on every simulated click

    return DiceCELoss(sigmoid=True)


def dice_ce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Dice + binary cross-entropy, 1:1 (CLoPA's episode loss)."""
    return _dice_ce()(logits, target)


def click_weight_map(clicks: Sequence[Click], shape: Sequence[int], sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-click Gaussian weights summed separately for positive and negative clicks: (2, *shape)."""
    weights = np.zeros((2, *shape), dtype=np.float32)
    for click in clicks:
        slices, values = gaussian_window(click.point, shape, sigma)
        weights[0 if click.positive else 1][slices] += values
    return weights


def ccg_loss(logits: torch.Tensor, target: torch.Tensor, clicks: Sequence[Click], sigma: float = 3.0) -> torch.Tensor:
    """Click-centred Gaussian loss for one image: logits and target of shape (1, 1, *spatial)."""
    if not clicks:
        return logits.sum() * 0.0
    spatial = tuple(logits.shape[2:])
    weights = torch.from_numpy(click_weight_map(clicks, spatial, sigma)).to(logits.device)
    label = target[0, 0]
    # -log p(foreground) where a positive click's Gaussian meets foreground, -log p(background)
    # where a negative click's Gaussian meets background.
    ce_fg = F.softplus(-logits[0, 0])
    ce_bg = F.softplus(logits[0, 0])
    per_voxel = weights[0] * label * ce_fg + weights[1] * (1.0 - label) * ce_bg
    return per_voxel.sum() / (len(clicks) * label.numel())


def interaction_loss(
    logits: torch.Tensor, target: torch.Tensor, clicks: Sequence[Click], beta: float = 200.0, sigma: float = 3.0
) -> torch.Tensor:
    """DF + beta * CCG: the loss of mid- and post-interaction updates and of pre-training."""
    return dice_focal(logits, target) + beta * ccg_loss(logits, target, clicks, sigma)
