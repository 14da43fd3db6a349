"""The network's input contract: one builder for pre-training, the site, the episodes and evaluation.

`ModelConfig.inputs` names the input channels by role, in order (`fedpoint.shared.config.INPUT_ROLES`):
the image channel(s), the positive and negative click maps (Gaussians of `click_sigma` voxels, peak 1),
the previous mask and, for a base trained with it, the box prompt (1 inside the box). Every caller
gives the prompts already in the grid the network sees (a pre-training crop, or a focus window's
grid: `FocusWindow.clicks` / `FocusWindow.box`), and `build_inputs` stacks the channels in the
config's order, so adding a role or another backbone changes this module and the config only.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from fedpoint.shared.clicks import Box, Click, encode_box, encode_clicks
from fedpoint.shared.config import ModelConfig


def prompt_maps(clicks: Sequence[Click], box: Box | None, shape: Sequence[int], cfg: ModelConfig) -> dict[str, np.ndarray]:
    """The prompt channels of one item by role: "pos" and "neg" (1, *shape) each, and "box" where
    the network takes one. A box given to a network that takes none is refused."""
    if box is not None and not cfg.takes_box:
        raise ValueError("this base was not trained with a box prompt (its card's model.inputs has no 'box')")
    clicks_map = encode_clicks(clicks, shape, cfg.click_sigma)
    maps = {"pos": clicks_map[:1], "neg": clicks_map[1:]}
    if cfg.takes_box:
        maps["box"] = encode_box(box, shape)
    return maps


def build_inputs(images: torch.Tensor, clicks: Sequence[Sequence[Click]], prev: torch.Tensor | None,
                 cfg: ModelConfig, boxes: Sequence[Box | None] | None = None) -> torch.Tensor:
    """(N, in_channels, *spatial) from images (N, image_channels, *spatial), one click list (and one
    box or None) per item and the previous masks (N, 1, *spatial; None: empty), in `cfg.inputs` order."""
    n, spatial = images.shape[0], tuple(images.shape[2:])
    if len(clicks) != n or (boxes is not None and len(boxes) != n):
        raise ValueError(f"build_inputs: {n} images but {len(clicks)} click lists"
                         + ("" if boxes is None else f" and {len(boxes)} boxes"))
    boxes = boxes if boxes is not None else [None] * n
    per_item = [prompt_maps(c, b, spatial, cfg) for c, b in zip(clicks, boxes)]
    if prev is None:
        prev = torch.zeros((n, 1, *spatial), dtype=images.dtype, device=images.device)
    parts = []
    for role in cfg.inputs:
        if role == "image":
            parts.append(images)
        elif role == "prev":
            parts.append(prev.reshape(n, 1, *spatial).to(images.dtype))
        else:
            parts.append(torch.from_numpy(np.stack([m[role] for m in per_item])).to(images.device))
    return torch.cat(parts, dim=1)
