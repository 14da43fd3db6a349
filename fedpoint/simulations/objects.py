"""The object generator of pre-training: (image crop, object mask, first click) at the working size.

One draw picks a training image (weighted by source family), a region of its label map, a 2D slice
through it (any of the three axes of a volume) and one connected component there; or, with
probability `synthetic`, makes a synthetic shape on a textured background. With `spatial_dims=3`
the sampler takes only volumes, resampled once to `spacing_mm` isotropic, and draws 3D components
and 3D crops (axes permuted and flipped instead of rotated). The crop then follows
one of the two regimes a person meets at inference through the focus crop:

- *context* (the first click): a square window centred on the first click, of a random side between
  one and five working sizes (log-uniform: small windows stay common, and a lung field or a body fits
  in the largest), which may cut the object;
- *zoom* (later clicks, and a box prompt): the object's bounding box, made square and expanded 1.1-2.5x.

With probability `p_box` the draw's first interaction is a box (a zoom-regime crop, the object's box
jittered by a few per cent of its size, as a person draws it) instead of the click.

Windows smaller than the working size are taken at native resolution (inference never upsamples);
larger ones are resized down to it. Intensities are then augmented to span modalities: CT windows
(for HU images), MR-like gamma and smooth bias fields, inverted contrast, noise and blur.
Everything is drawn from one numpy Generator, so a sampler is deterministic by seed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
from scipy import ndimage

# CT windows (level, width) drawn for HU images: wide, lung, soft tissue, bone, brain.
CT_WINDOWS = ((-300.0, 1400.0), (-600.0, 1500.0), (40.0, 400.0), (300.0, 1500.0), (40.0, 80.0))


@dataclass
class ObjectDraw:
    image: np.ndarray   # float32 (1, *[size] * spatial_dims), ~[0, 1]
    mask: np.ndarray    # bool ([size] * spatial_dims), never empty
    click: tuple[int, ...]  # the first positive click, inside `mask`
    source: str
    regime: str
    box: object = None  # a `fedpoint.shared.clicks.Box` in crop coordinates when the first interaction is a box


@dataclass
class SamplerConfig:
    size: int = 96
    context_range: tuple[float, float] = (1.0, 3.0)   # first-click window side, in working sizes
    zoom_range: tuple[float, float] = (1.1, 2.5)      # later-click window side, in object extents
    p_context: float = 0.5
    synthetic: float = 0.1
    min_pixels: int = 12
    p_invert: float = 0.15
    p_bias: float = 0.3
    p_noise: float = 0.4
    p_blur: float = 0.2
    # Relative draw weight per source family; a family not listed weighs 1.
    weights: dict[str, float] = field(default_factory=lambda: {"pseudo": 2.5})
    spatial_dims: int = 2
    spacing_mm: float = 1.5    # 3D: volumes are resampled to this isotropic spacing before cropping
    p_box: float = 0.0         # share of draws whose first interaction is a box (a base with a box input)
    box_jitter: float = 0.05   # box sides moved by N(0, box_jitter x the object's extent)


class ObjectSampler:
    """Draws training objects from `TrainingImage`s (see `fedpoint.data.training`)."""

    def __init__(self, images: Sequence, cfg: SamplerConfig | None = None, seed: int = 0):
        self.cfg = cfg or SamplerConfig()
        self.rng = np.random.default_rng(seed)
        if self.cfg.spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {self.cfg.spatial_dims}")
        self.images = [im for im in images if np.any(im.labels)]
        if self.cfg.spatial_dims == 3:
            self.images = [isotropic(im, self.cfg.spacing_mm) for im in self.images if np.ndim(im.labels) == 3]
        if not self.images and self.cfg.synthetic <= 0:
            raise ValueError("the object sampler needs at least one image with labels, or synthetic shapes")
        families = sorted({im.source for im in self.images})
        self.families = {f: [i for i, im in enumerate(self.images) if im.source == f] for f in families}
        w = np.array([self.cfg.weights.get(f, 1.0) for f in families], float)
        self.family_p = w / w.sum() if len(w) else w
        # Per image: the present label values and their bounding boxes (one pass of find_objects).
        self.regions = []
        for im in self.images:
            labels = np.asarray(im.labels)
            boxes = ndimage.find_objects(labels.astype(np.int32))
            self.regions.append([(v + 1, b) for v, b in enumerate(boxes) if b is not None])

    # ---------------------------------------------------------------------------------- draws
    def draw(self) -> ObjectDraw:
        for _ in range(50):
            if not self.images or self.rng.random() < self.cfg.synthetic:
                if self.cfg.spatial_dims == 3:
                    image2d, mask, hu, source = synthetic_object_3d(self.rng, self.cfg.size + self.cfg.size // 2)
                else:
                    image2d, mask, hu, source = synthetic_object(self.rng, 2 * self.cfg.size)
            else:
                found = self._labelled()
                if found is None:
                    continue
                image2d, mask, hu, source = found
            out = self._crop(image2d, mask, hu, source)
            if out is not None:
                return out
        raise RuntimeError("could not draw an object in 50 tries: are the training labels all tiny?")

    def batch(self, n: int) -> list[ObjectDraw]:
        return [self.draw() for _ in range(n)]

    def _labelled(self):
        rng = self.rng
        family = list(self.families)[int(rng.choice(len(self.families), p=self.family_p))]
        index = self.families[family][int(rng.integers(len(self.families[family])))]
        im = self.images[index]
        value, box = self.regions[index][int(rng.integers(len(self.regions[index])))]
        labels, image = np.asarray(im.labels), np.asarray(im.image)
        if self.cfg.spatial_dims == 3:
            return self._component_3d(labels, image, value, box, im)
        if labels.ndim == 3:
            axis = int(rng.integers(3))
            s = box[axis]
            k = int(rng.integers(s.start, s.stop))
            index = tuple(k if a == axis else slice(None) for a in range(3))  # a view, no copy
            labels, image = labels[index], image[index]
        image = image.astype(np.float32)
        component = self._component(labels == value)
        if component is None:
            return None
        return image, component, im.modality == "CT", im.source

    def _component(self, mask: np.ndarray) -> np.ndarray | None:
        """One connected component of `mask` of at least `min_pixels`, drawn uniformly; None if none."""
        parts, count = ndimage.label(mask)
        if count == 0:
            return None
        sizes = np.bincount(parts.ravel())[1:]
        ok = np.flatnonzero(sizes >= self.cfg.min_pixels)
        if len(ok) == 0:
            return None
        return parts == int(ok[self.rng.integers(len(ok))]) + 1

    def _component_3d(self, labels, image, value, box, im):
        """One connected 3D component of region `value` (labelled inside its bounding box only)."""
        component = self._component(labels[box] == value)
        if component is None:
            return None
        mask = np.zeros(labels.shape, dtype=bool)
        mask[box] = component
        return image, mask, im.modality == "CT", im.source

    def _crop(self, image2d: np.ndarray, mask: np.ndarray, hu: bool, source: str) -> ObjectDraw | None:
        cfg, rng = self.cfg, self.rng
        click = _interior_point(mask, rng)
        coords = np.argwhere(mask)
        lo, hi = coords.min(0), coords.max(0) + 1
        with_box = cfg.p_box > 0 and rng.random() < cfg.p_box
        if not with_box and rng.random() < cfg.p_context:
            regime = "context"
            lo_c, hi_c = cfg.context_range
            side = cfg.size * float(np.exp(rng.uniform(np.log(lo_c), np.log(hi_c))))
            centre = np.array(click, float) + 0.5
        else:
            regime = "zoom"
            side = float((hi - lo).max()) * float(rng.uniform(*cfg.zoom_range))
            centre = (lo + hi) / 2.0 + rng.normal(0, 0.08, mask.ndim) * (hi - lo)
        side = max(side, float(cfg.size))  # never upsample: small windows are taken at native scale
        scale = side / cfg.size
        start = centre - side / 2.0
        # Work on the window's own pixels (plus a margin for the prefilter), not the whole slice.
        lo_i = np.floor(start).astype(int) - 2
        hi_i = np.ceil(start + side).astype(int) + 2
        region = tuple(slice(max(0, a), min(n, b)) for a, b, n in zip(lo_i, hi_i, mask.shape))
        offset = np.array([r.start for r in region], float)
        img = _intensity(image2d, region, hu, rng, cfg)
        crop = _resample(img, start - offset, scale, cfg.size, order=1)
        crop_mask = _resample(mask[region].astype(np.float32), start - offset, scale, cfg.size, order=1) >= 0.5
        c = tuple(int(np.clip(np.floor((p + 0.5 - s) / scale), 0, cfg.size - 1)) for p, s in zip(click, start))
        if crop_mask.sum() < 4:
            return None
        if not crop_mask[c]:
            c = _interior_point(crop_mask, rng)
        if mask.ndim == 3:
            crop, crop_mask, c = _permute_flip(crop, crop_mask, c, rng)
            if rng.random() < cfg.p_bias:
                crop = _bias_field(crop, rng, order=1)
        else:
            crop, crop_mask, c = _flip_turn(crop, crop_mask, c, rng)
        crop = _after_crop(crop, rng, cfg)
        box = _jittered_box(crop_mask, cfg.box_jitter, rng) if with_box else None
        return ObjectDraw(crop[None].astype(np.float32), crop_mask, c, source, regime, box)


# -------------------------------------------------------------------------------------- pieces
def _jittered_box(mask: np.ndarray, jitter: float, rng: np.random.Generator):
    """The object's box with each side moved by N(0, jitter x extent) voxels, inside the crop, never empty."""
    from fedpoint.shared.clicks import Box

    coords = np.argwhere(mask)
    lo, hi = coords.min(0), coords.max(0) + 1
    extent = hi - lo
    lo = np.clip(np.round(lo + rng.normal(0, jitter, mask.ndim) * extent), 0, np.array(mask.shape) - 1).astype(int)
    hi = np.clip(np.round(hi + rng.normal(0, jitter, mask.ndim) * extent), lo + 1, mask.shape).astype(int)
    return Box(tuple(int(v) for v in lo), tuple(int(v) for v in hi))


def _interior_point(mask: np.ndarray, rng: np.random.Generator) -> tuple[int, ...]:
    """A random voxel of `mask`, drawn with weight on its depth (people click inside, not on edges)."""
    box = ndimage.find_objects(mask.astype(np.uint8))[0]
    sub = mask[box]
    depth = ndimage.distance_transform_edt(np.pad(sub, 1))[tuple(slice(1, -1) for _ in sub.shape)]
    flat = depth.ravel()
    candidates = np.flatnonzero(flat > 0)
    w = flat[candidates] ** 1.5
    pick = candidates[int(rng.choice(len(candidates), p=w / w.sum()))]
    return tuple(int(i) + b.start for i, b in zip(np.unravel_index(pick, sub.shape), box))


def _resample(array: np.ndarray, start, scale: float, size: int, order: int) -> np.ndarray:
    """Square window of `size * scale` native pixels from `start`, sampled at `size` points a side.
    Downscaling prefilters with a Gaussian so thin structures do not alias."""
    if scale > 1.5 and order > 0:
        array = ndimage.gaussian_filter(array, sigma=0.4 * scale)
    axes = [s + (np.arange(size) + 0.5) * scale - 0.5 for s in start]
    grid = np.meshgrid(*axes, indexing="ij")
    return ndimage.map_coordinates(array, grid, order=order, mode="constant", cval=0.0)


def _intensity(image: np.ndarray, region, hu: bool, rng: np.random.Generator, cfg: SamplerConfig) -> np.ndarray:
    """`image[region]` to [0, 1]: a random CT window for HU images, percentiles of the whole slice
    otherwise (as inference normalises whole images); then gamma, inversion and a smooth
    multiplicative bias field (MR-like)."""
    if hu:
        level, width = CT_WINDOWS[int(rng.integers(len(CT_WINDOWS)))]
        level += rng.normal(0, 0.1 * width)
        width *= float(rng.uniform(0.8, 1.25))
        out = np.clip((image[region] - (level - width / 2)) / width, 0, 1)
    else:
        step = 3 if image.ndim == 2 else 4  # percentiles of a subsample: as good, much cheaper
        lo, hi = np.percentile(image[(slice(None, None, step),) * image.ndim],
                               (float(rng.uniform(0, 2)), float(rng.uniform(98, 100))))
        out = np.clip((image[region] - lo) / max(hi - lo, 1e-6), 0, 1)
    out = out ** float(np.exp(rng.uniform(np.log(0.6), np.log(1.7))))
    if rng.random() < cfg.p_invert:
        out = 1.0 - out
    if out.ndim == 2 and rng.random() < cfg.p_bias:  # 3D: on the crop (`_bias_field`), far cheaper
        out = _bias_field(out, rng)
    return out.astype(np.float32)


def _bias_field(out: np.ndarray, rng: np.random.Generator, order: int = 3) -> np.ndarray:
    """A smooth multiplicative field (MR-like inhomogeneity) from a 4-a-side grid of log-gains."""
    coarse = rng.normal(0, 0.25, (4,) * out.ndim)
    field_ = ndimage.zoom(coarse, [n / 4 for n in out.shape], order=order)[tuple(slice(0, n) for n in out.shape)]
    return np.clip(out * np.exp(field_), 0, 1)


def _after_crop(crop: np.ndarray, rng: np.random.Generator, cfg: SamplerConfig) -> np.ndarray:
    if rng.random() < cfg.p_blur:
        crop = ndimage.gaussian_filter(crop, float(rng.uniform(0.5, 1.5)))
    if rng.random() < cfg.p_noise:
        crop = crop + rng.normal(0, float(rng.uniform(0.01, 0.06)), crop.shape)
    crop = crop * float(rng.uniform(0.85, 1.15)) + float(rng.uniform(-0.08, 0.08))
    return np.clip(crop, 0, 1).astype(np.float32)


def _flip_turn(image, mask, click, rng):
    k = int(rng.integers(4))
    n = image.shape[0]
    image, mask = np.rot90(image, k), np.rot90(mask, k)
    y, x = click
    for _ in range(k):  # np.rot90 maps (i, j) -> (n - 1 - j, i)
        y, x = n - 1 - x, y
    if rng.random() < 0.5:
        image, mask, y = image[::-1], mask[::-1], n - 1 - y
    return np.ascontiguousarray(image), np.ascontiguousarray(mask), (int(y), int(x))


def _permute_flip(image, mask, click, rng):
    """3D: a random axis order and a random flip of each axis (the volume's orientation varies)."""
    order = rng.permutation(3)
    image, mask = np.transpose(image, order), np.transpose(mask, order)
    click = [click[int(a)] for a in order]
    for axis in range(3):
        if rng.random() < 0.5:
            image, mask = np.flip(image, axis), np.flip(mask, axis)
            click[axis] = image.shape[axis] - 1 - click[axis]
    return np.ascontiguousarray(image), np.ascontiguousarray(mask), tuple(int(c) for c in click)


def isotropic(im, spacing_mm: float):
    """A 3D training image resampled to `spacing_mm` a voxel (linear image, nearest labels); a copy."""
    import copy

    spacing = tuple(getattr(im, "spacing", None) or (1.0,) * im.image.ndim)
    zoom = [s / spacing_mm for s in spacing]
    if all(abs(z - 1.0) < 1e-3 for z in zoom):
        return im
    image = ndimage.zoom(np.asarray(im.image, np.float32), zoom, order=1)
    labels = ndimage.zoom(np.asarray(im.labels), zoom, order=0)
    out = copy.copy(im)
    out.image, out.labels, out.spacing = image, labels, (spacing_mm,) * 3
    return out


def synthetic_object_3d(rng: np.random.Generator, side: int):
    """A random 3D blob (an oriented ellipsoid, or smoothed noise grown from a seed) with its own
    contrast on a textured background."""
    grid = np.stack(np.mgrid[:side, :side, :side]).astype(np.float32)
    centre = rng.uniform(0.35, 0.65, 3) * side
    radii = rng.uniform(0.06, 0.25) * side * rng.uniform(0.4, 1.0, 3)
    d = grid - centre[:, None, None, None]
    if rng.random() < 0.5:
        rot, _ = np.linalg.qr(rng.normal(0, 1, (3, 3)))
        u = np.tensordot(rot, d, axes=1)
        mask = sum((u[i] / radii[i]) ** 2 for i in range(3)) <= 1
    else:
        noise = ndimage.gaussian_filter(rng.normal(0, 1, (side,) * 3), side * rng.uniform(0.04, 0.08))
        dist = np.sqrt(sum((d[i] / radii.max()) ** 2 for i in range(3)))
        mask = (noise / (noise.std() + 1e-6) * 0.5 - dist + 1.0) > 0
        labels, n = ndimage.label(mask)
        seed = tuple(int(c) for c in centre)
        if n and labels[seed]:
            mask = labels == labels[seed]
        elif n:
            mask = labels == 1 + int(np.argmax(np.bincount(labels.ravel())[1:]))
        else:
            mask = dist <= 1
    def texture(scale):
        return ndimage.gaussian_filter(rng.normal(0, 1, (side,) * 3), scale)
    bg = rng.uniform(0, 1) + 0.3 * texture(rng.uniform(1, 4)) / 0.1
    fg_shift = rng.choice([-1, 1]) * rng.uniform(0.15, 0.6)
    image = bg * 0.1 + np.where(mask, fg_shift, 0.0) + 0.05 * texture(rng.uniform(0.5, 2)) / 0.1
    image = ndimage.gaussian_filter(image, rng.uniform(0.3, 1.2))
    return image.astype(np.float32), mask, False, "synthetic"


def synthetic_object(rng: np.random.Generator, side: int):
    """A random blob (smoothed noise thresholded around a seed, or an ellipse) with its own texture
    and contrast on a textured background: shapes no atlas has."""
    yy, xx = np.mgrid[:side, :side].astype(np.float32)
    cy, cx = rng.uniform(0.3, 0.7, 2) * side
    r = rng.uniform(0.05, 0.3) * side
    if rng.random() < 0.5:
        a, b, t = r, r * rng.uniform(0.4, 1.0), rng.uniform(0, np.pi)
        u = (xx - cx) * np.cos(t) + (yy - cy) * np.sin(t)
        v = -(xx - cx) * np.sin(t) + (yy - cy) * np.cos(t)
        mask = (u / a) ** 2 + (v / b) ** 2 <= 1
    else:
        noise = ndimage.gaussian_filter(rng.normal(0, 1, (side, side)), side * rng.uniform(0.03, 0.08))
        dist = np.hypot(yy - cy, xx - cx) / r
        mask = (noise / (noise.std() + 1e-6) * 0.5 - dist + 1.0) > 0
        labels, n = ndimage.label(mask)
        if n == 0:
            mask = np.hypot(yy - cy, xx - cx) <= r
        else:
            mask = labels == labels[int(cy), int(cx)] if labels[int(cy), int(cx)] else labels == 1 + int(np.argmax(np.bincount(labels.ravel())[1:]))
    def texture(scale):
        return ndimage.gaussian_filter(rng.normal(0, 1, (side, side)), scale)
    bg = rng.uniform(0, 1) + 0.3 * texture(rng.uniform(1, 8)) / 0.1
    fg_shift = rng.choice([-1, 1]) * rng.uniform(0.15, 0.6)
    image = bg * 0.1 + np.where(mask, fg_shift, 0.0) + 0.05 * texture(rng.uniform(0.5, 3)) / 0.1
    image = ndimage.gaussian_filter(image, rng.uniform(0.3, 1.5))
    return image.astype(np.float32), mask, False, "synthetic"
