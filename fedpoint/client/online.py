"""Online adaptation from one annotation ("You Point, I Learn", Xu et al., ICLR 2026).

Mid-interaction: after click t, the prediction with the new click is the pseudo-label; the model
that produced the previous mask (clicks 1..t-1) takes a step toward it, with the click-centred
Gaussian loss on the newest click only. The model thereby learns to need that click less often.

Post-interaction, on accept, with the accepted mask as pseudo ground truth: stage 1 pulls the
first-click prediction toward it; stage 2 places artificial clicks in the largest error components
of the stage-1 prediction (the user's own clicks would reproduce the accepted mask and give no
gradient) and steps again.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from fedpoint.client.site_model import SiteModel
from fedpoint.shared.clicker import error_components
from fedpoint.shared.clicks import Box, Click
from fedpoint.shared.losses import interaction_loss


def mid_interaction_update(model: SiteModel, image_t: torch.Tensor, previous_clicks: Sequence[Click],
                           previous_input_mask: torch.Tensor | None, new_click: Click, pseudo_label: torch.Tensor,
                           box: Box | None = None) -> None:
    cfg = model.adapt_cfg
    with model.lock:
        for _ in range(cfg.mid_steps):
            logits = model.logits(image_t, previous_clicks, previous_input_mask, grad=True, box=box)
            model.step(interaction_loss(logits, pseudo_label, [new_click], cfg.ccg_beta, cfg.ccg_sigma))


def artificial_clicks(pred: np.ndarray, target: np.ndarray, count: int, rng: np.random.Generator) -> list[Click]:
    """One click at a random voxel of each of the `count` largest error components."""
    clicks = []
    for region, is_fn in error_components(pred, target, limit=count):
        voxels = np.argwhere(region)
        clicks.append(Click(tuple(int(i) for i in voxels[rng.integers(len(voxels))]), positive=is_fn))
    return clicks


def _first(first_click: Click | None) -> list[Click]:
    return [] if first_click is None else [first_click]


def post_stage1(model: SiteModel, image_t: torch.Tensor, first_click: Click | None, target: torch.Tensor,
                box: Box | None = None) -> torch.Tensor:
    """Stage 1: the first click (or the box) alone should give the accepted mask. Returns the stage-1 prediction."""
    cfg = model.adapt_cfg
    with model.lock:
        for _ in range(cfg.post_steps):
            logits = model.logits(image_t, _first(first_click), None, grad=True, box=box)
            model.step(interaction_loss(logits, target, _first(first_click), cfg.ccg_beta, cfg.ccg_sigma))
        return model.predict(image_t, _first(first_click), None, box=box)


def post_stage2(model: SiteModel, image_t: torch.Tensor, first_click: Click | None, target: torch.Tensor,
                stage1: torch.Tensor, rng: np.random.Generator, box: Box | None = None) -> list[Click]:
    """Stage 2: artificial clicks where stage 1 still errs, the stage-1 mask as the previous mask."""
    cfg = model.adapt_cfg
    accepted = target[0, 0].bool().cpu().numpy()
    extra = artificial_clicks(stage1[0, 0].bool().cpu().numpy(), accepted, cfg.post_clicks, rng)
    if extra:
        with model.lock:
            for _ in range(cfg.post_steps):
                logits = model.logits(image_t, [*_first(first_click), *extra], stage1, grad=True, box=box)
                model.step(interaction_loss(logits, target, extra, cfg.ccg_beta, cfg.ccg_sigma))
    return extra


def post_interaction_update(model: SiteModel, image_t: torch.Tensor, first_click: Click | None, accepted: np.ndarray,
                            rng: np.random.Generator, box: Box | None = None) -> list[Click]:
    """Both stages; returns the artificial clicks of stage 2 (for the record). A session that
    started with a box gives the box (in the window's grid) and no first click."""
    target = torch.as_tensor(accepted, dtype=torch.float32, device=model.device)[None, None]
    stage1 = post_stage1(model, image_t, first_click, target, box)
    return post_stage2(model, image_t, first_click, target, stage1, rng, box)
