"""The user's prompts and their encoding as input maps, in 2D or 3D: clicks (Gaussians) and a box."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np


@dataclass(frozen=True)
class Click:
    """A click at a voxel index (array axis order, no channel axis); positive = inside the object."""

    point: tuple[int, ...]
    positive: bool

    def as_dict(self) -> dict:
        return {"point": list(self.point), "positive": self.positive}


def check_point(point: Sequence[float], shape: Sequence[int]) -> tuple[int, ...]:
    """Round a point to a voxel index and refuse one outside the image."""
    if len(point) != len(shape):
        raise ValueError(f"click {tuple(point)} has {len(point)} coordinates; the image has {len(shape)} spatial axes {tuple(shape)}")
    if not all(np.isfinite(float(p)) for p in point):
        raise ValueError(f"click {tuple(point)} has a coordinate that is not a finite number")
    index = tuple(int(round(float(p))) for p in point)
    if any(i < 0 or i >= n for i, n in zip(index, shape)):
        raise ValueError(f"click {tuple(point)} lies outside the image of spatial shape {tuple(shape)}")
    return index



@dataclass(frozen=True)
class Box:
    """A box prompt (a rectangle in 2D, a cuboid in 3D): voxel indices from `lo` (inclusive) to `hi`
    (exclusive) on each spatial axis, array axis order. The user drew it around the structure."""

    lo: tuple[int, ...]
    hi: tuple[int, ...]

    @property
    def ndim(self) -> int:
        return len(self.lo)

    @property
    def size(self) -> tuple[int, ...]:
        return tuple(h - l for l, h in zip(self.lo, self.hi))

    def corners(self) -> list[tuple[int, ...]]:
        """Its first and last voxel: what a window must hold to hold the box."""
        return [tuple(self.lo), tuple(h - 1 for h in self.hi)]

    def as_dict(self) -> dict:
        return {"lo": list(self.lo), "hi": list(self.hi)}


def check_box(lo: Sequence[float], hi: Sequence[float], shape: Sequence[int], field: str = "box") -> Box:
    """A box from two corners (`hi` exclusive), refused when it has the wrong dimension, is not
    finite, is inverted or empty, or reaches outside the image. Messages name `field`."""
    if len(lo) != len(shape) or len(hi) != len(shape):
        raise ValueError(f"{field}: corners {tuple(lo)}, {tuple(hi)} must have {len(shape)} coordinates each "
                         f"(the image has {len(shape)} spatial axes {tuple(shape)})")
    values = [float(v) for v in (*lo, *hi)]
    if not all(np.isfinite(v) for v in values):
        raise ValueError(f"{field}: a corner coordinate is not a finite number")
    a = tuple(int(round(float(v))) for v in lo)
    b = tuple(int(round(float(v))) for v in hi)
    if any(y <= x for x, y in zip(a, b)):
        raise ValueError(f"{field}: from {a} to {b} is inverted or empty (each end must be above its start)")
    if any(x < 0 or y > n for x, y, n in zip(a, b, shape)):
        raise ValueError(f"{field}: from {a} to {b} reaches outside the image of spatial shape {tuple(shape)}")
    return Box(a, b)


def encode_box(box: Box | None, shape: Sequence[int]) -> np.ndarray:
    """One float32 map of shape (1, *shape): 1 inside the box, 0 outside (all 0 without a box). The
    box may reach past the grid; the part inside is drawn."""
    out = np.zeros((1, *shape), dtype=np.float32)
    if box is not None:
        region = tuple(slice(max(0, l), min(n, h)) for l, h, n in zip(box.lo, box.hi, shape))
        out[(0, *region)] = 1.0
    return out


def check_spacing(spacing: Sequence[float] | None, ndim: int) -> tuple[float, ...] | None:
    """Voxel spacing in mm, one positive finite number per spatial axis, or None (voxels)."""
    if spacing is None:
        return None
    values = tuple(float(s) for s in spacing)
    if len(values) != ndim:
        raise ValueError(f"spacing {values} has {len(values)} entries; the image has {ndim} spatial axes")
    if not all(np.isfinite(v) and v > 0 for v in values):
        raise ValueError(f"spacing {values} must be positive finite millimetres on every axis (missing or zero spacing?)")
    return values

TRUNCATE = 3.0  # a click's Gaussian is cut at this many sigmas


def gaussian_window(point: Sequence[int], shape: Sequence[int], sigma: float):
    """The slices of a box of radius `TRUNCATE * sigma` around `point`, clipped to the image, and the
    (unnormalised, peak 1) Gaussian values inside it."""
    truncate = TRUNCATE
    radius = max(1, int(np.ceil(truncate * sigma)))
    slices, axes = [], []
    for p, n in zip(point, shape):
        lo = min(n, max(0, p - radius))
        hi = max(lo, min(n, p + radius + 1))  # a click off the grid: its tail only, or nothing
        slices.append(slice(lo, hi))
        axes.append((np.arange(lo, hi, dtype=np.float32) - p) ** 2)
    sq = axes[0]
    for a in axes[1:]:
        sq = sq[..., None] + a  # broadcasting builds the squared distance on the box only
    values = np.exp(-sq / (2.0 * sigma * sigma)).astype(np.float32)
    values[sq > (truncate * sigma) ** 2] = 0.0
    return tuple(slices), values


def encode_clicks(clicks: Sequence[Click], shape: Sequence[int], sigma: float = 3.0) -> np.ndarray:
    """Two float32 maps (positive, negative) of shape (2, *shape): per click a Gaussian of peak 1,
    truncated at 3 sigma, combined by maximum so that nearby clicks do not exceed 1."""
    maps = np.zeros((2, *shape), dtype=np.float32)
    for click in clicks:
        slices, values = gaussian_window(click.point, shape, sigma)
        channel = maps[0 if click.positive else 1]
        np.maximum(channel[slices], values, out=channel[slices])
    return maps
