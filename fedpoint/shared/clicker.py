"""The simulated user: where would a careful annotator click next?

Deterministic rule (RITM and its successors): find the error regions (false negatives and false
positives, connected components), take the largest, and click at its deepest point, the voxel
farthest from the region's border by the Euclidean distance transform. The click is positive when
that region is a false negative. A seeded random-in-region variant is used for training.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from scipy import ndimage

from fedpoint.shared.clicks import Click


def error_components(pred: np.ndarray, gt: np.ndarray, limit: int | None = None) -> list[tuple[np.ndarray, bool]]:
    """Connected error regions as (mask, is_false_negative), largest first; only the `limit`
    largest are materialised (a noisy prediction can have hundreds of specks)."""
    found = []  # (size, is_fn, labels, index)
    for error, is_fn in ((gt & ~pred, True), (pred & ~gt, False)):
        labels, n = ndimage.label(error)
        if n == 0:
            continue
        sizes = np.bincount(labels.ravel())[1:]
        top = np.argsort(-sizes, kind="stable")[: limit or n]
        found += [(int(sizes[i]), is_fn, labels, int(i) + 1) for i in top]
    found.sort(key=lambda r: -r[0])
    return [(labels == index, is_fn) for _, is_fn, labels, index in found[: limit or len(found)]]


def deepest_point(region: np.ndarray) -> tuple[int, ...]:
    """The voxel of `region` farthest from its border; padding makes the image edge count as border."""
    padded = np.pad(region, 1)
    depth = ndimage.distance_transform_edt(padded)[tuple(slice(1, -1) for _ in region.shape)]
    return tuple(int(i) for i in np.unravel_index(int(np.argmax(depth)), region.shape))


class Clicker:
    """Next click for a ground-truth mask given the current prediction."""

    def __init__(self, gt: np.ndarray, mode: Literal["deepest", "random"] = "deepest", seed: int | None = None):
        gt = np.asarray(gt)
        if gt.dtype != bool and not np.isin(gt, (0, 1)).all():
            raise ValueError("the ground-truth mask must be binary (0/1 or bool)")
        self.gt = gt.astype(bool)
        if not self.gt.any():
            raise ValueError("the ground-truth mask is empty: there is no object to click on")
        if mode not in ("deepest", "random"):
            raise ValueError(f"unknown clicker mode {mode!r}; use 'deepest' or 'random'")
        self.mode = mode
        self.rng = np.random.default_rng(seed)

    def next_click(self, pred: np.ndarray | None = None) -> Click | None:
        """The next click, or None when the prediction is already perfect."""
        pred = np.zeros_like(self.gt) if pred is None else np.asarray(pred).astype(bool)
        if pred.shape != self.gt.shape:
            raise ValueError(f"prediction shape {pred.shape} differs from the mask shape {self.gt.shape}")
        regions = error_components(pred, self.gt, limit=1)
        if not regions:
            return None
        region, is_fn = regions[0]
        if self.mode == "deepest":
            point = deepest_point(region)
        else:
            candidates = np.argwhere(region)
            point = tuple(int(i) for i in candidates[self.rng.integers(len(candidates))])
        return Click(point, positive=is_fn)
