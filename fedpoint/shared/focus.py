"""The focus crop ("zoom-in", as in RITM): the network predicts in a window, never on a whole image.

The base network was trained on crops of `ModelConfig.input_size` voxels a side, with click
Gaussians of `click_sigma` voxels at that size. A whole 512 x 512 slice is a regime it never saw,
so every prediction runs in a `FocusWindow`:

- the **first click** looks at a square (cubic) window of `context` native voxels centred on it
  (default `CONTEXT_FACTOR` x input_size), shifted to lie inside the image and clipped to it where
  the image is smaller;
- **later clicks** look at the bounding box of the current mask and every click, expanded by
  `expand` (1.4) and to at least `min_size` (input_size // 2), made square, inside the image;
- a **box prompt** is a zoom window from the start: the box (with the mask and the clicks once there
  are any), expanded and made square the same way, so the box says the structure's scale.

A window is resampled to the working size keeping its aspect (one scale for every axis), with each
side rounded up to a multiple of the network's `size_multiple`. Nothing is ever upsampled: a window
that fits in `input_size` is taken at native resolution, grown to the next multiple (with more
image, or zero padding past the image's edge), exactly the old whole-image behaviour for small
images. `paste` maps a window's prediction back onto the whole image; outside the window it is
background.

Anisotropy (3D CT at 0.7 x 0.7 x 5 mm): given the image's voxel spacing, windows are measured in
voxels of the finest axis, so a window is a cube in millimetres (fewer slices than rows), and it
is resampled to a working grid of near-cubic voxels: a thick axis is upsampled to match the fine
ones, which is the only case where a window is upsampled. Without spacing (or with an isotropic
one) every axis counts the same, as above.

Click maps are encoded in the window's coordinates at the working size, with the model's sigma, so
a click's Gaussian has the size the network was trained with.

One rule, one window object: `Focus` (a resolved config and the model's sizes) picks the window
for a set of prompts; `FocusWindow.cut` gives what the network sees there (a `WindowView`) and
`WindowView.paste` maps its prediction back. Callers never crop or pick a window by hand.

Resampling is linear (bilinear / trilinear, voxel centres aligned, `align_corners=False`), the same
sampling `fedpoint.data.samples` cuts training and evaluation crops with. Dimension-agnostic: 2D
and 3D, numpy or torch in, the same kind out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from fedpoint.shared.clicker import mask_bounds
from fedpoint.shared.clicks import Box, Click, encode_clicks
from fedpoint.shared.config import ModelConfig

CONTEXT_FACTOR = 1          # first-click window side = CONTEXT_FACTOR * input_size native voxels (chosen on dev-split)
FIRST_SCALES = (1.0, 2.0, 4.0)  # first click: window sides tried, in multiples of the context (chosen on dev-split + dev-split-large)
FIRST_RULE = "border"       # ... and how one is chosen: "fixed" (the first), "border" or "confidence" (`choose_scale`)
SCALE_RULES = ("fixed", "border", "confidence")
CONTEXT_MM_3D = 48.0        # 3D with a known spacing: first-click cube side in mm (chosen on dev-split-3d)
ZOOM_EXPAND = 1.4           # later clicks: the mask + clicks box, expanded this much
MIN_SIZE_FACTOR = 0.5       # ... and at least this share of input_size a side
BACKGROUND_LOGIT = -1.0e4   # what `paste` puts outside the window for logits


@dataclass(frozen=True)
class FocusConfig:
    """Where the network looks. `None` means "derive from the model's input_size" (see module doc)."""

    context: int | None = None     # first-click window side, native voxels (default CONTEXT_FACTOR * input_size)
    context_mm: float | None = None  # 3D, spacing known: the side in mm instead (default CONTEXT_MM_3D unless `context` is given)
    expand: float = ZOOM_EXPAND     # zoom window: expansion of the mask + clicks bounding box
    min_size: int | None = None    # zoom window: smallest side, native voxels (default input_size // 2)
    scales: tuple[float, ...] | None = None  # first click without a box: window sides tried (x context); 2D default FIRST_SCALES
    rule: str | None = None        # how the first click's window is chosen among `scales`; 2D default FIRST_RULE

    def __post_init__(self) -> None:
        if self.scales is not None and (not self.scales or any(not m > 0 for m in self.scales)):
            raise ValueError(f"focus scales must be positive multiples of the context, got {self.scales}")
        if self.rule is not None and self.rule not in SCALE_RULES:
            raise ValueError(f"focus rule must be one of {', '.join(SCALE_RULES)}, got {self.rule!r}")
        if self.context is not None and self.context < 1:
            raise ValueError(f"focus context must be at least 1 voxel, got {self.context}")
        if not self.expand >= 1.0:
            raise ValueError(f"focus expand must be >= 1 (the window must hold the mask), got {self.expand}")
        if self.min_size is not None and self.min_size < 1:
            raise ValueError(f"focus min_size must be at least 1 voxel, got {self.min_size}")
        if self.context_mm is not None and not self.context_mm > 0:
            raise ValueError(f"focus context_mm must be positive, got {self.context_mm}")

    def resolve(self, cfg: ModelConfig) -> "FocusConfig":
        """The same config with its defaults filled in for this model."""
        context_mm = self.context_mm
        if context_mm is None and self.context is None and cfg.spatial_dims == 3:
            context_mm = CONTEXT_MM_3D
        return FocusConfig(
            context=self.context or CONTEXT_FACTOR * cfg.input_size,
            expand=self.expand,
            min_size=self.min_size or max(1, int(cfg.input_size * MIN_SIZE_FACTOR)),
            context_mm=context_mm,
            # 3D keeps one first-click cube (chosen on dev-split-3d before the scale choice existed)
            scales=tuple(self.scales) if self.scales is not None else (FIRST_SCALES if cfg.spatial_dims == 2 else (1.0,)),
            rule=self.rule or (FIRST_RULE if cfg.spatial_dims == 2 else "fixed"),
        )

    def context_for(self, spacing: Sequence[float] | None) -> int:
        """The first-click window side in voxels of the finest axis for an image of this spacing."""
        if spacing is None or self.context_mm is None:
            return int(self.context)
        return max(1, int(round(self.context_mm / min(float(x) for x in spacing))))


@dataclass(frozen=True)
class FocusWindow:
    """A box of the image (`start` may be negative and `start + size` may pass the edge: zero padding)
    and the grid the network sees it on (`out_size`, multiples of the model's size_multiple)."""

    start: tuple[int, ...]
    size: tuple[int, ...]
    out_size: tuple[int, ...]

    @property
    def ndim(self) -> int:
        return len(self.start)

    @property
    def stop(self) -> tuple[int, ...]:
        return tuple(s + n for s, n in zip(self.start, self.size))

    @property
    def scale(self) -> tuple[float, ...]:
        """Model voxels per native voxel, per axis (<= 1: never upsampled)."""
        return tuple(o / n for o, n in zip(self.out_size, self.size))

    @property
    def native(self) -> bool:
        return tuple(self.size) == tuple(self.out_size)

    def contains(self, point: Sequence[int]) -> bool:
        return all(s <= p < e for p, s, e in zip(point, self.start, self.stop))

    def to_window(self, point: Sequence[float]) -> tuple[int, ...]:
        """A native voxel index -> the nearest voxel of the window's grid (may lie outside it)."""
        return tuple(int(math.floor((p - s + 0.5) * k)) for p, s, k in zip(point, self.start, self.scale))

    def to_image(self, point: Sequence[float]) -> tuple[int, ...]:
        """A voxel of the window's grid -> the native voxel under its centre."""
        return tuple(int(math.floor(s + (q + 0.5) / k)) for q, s, k in zip(point, self.start, self.scale))

    def clicks(self, clicks: Sequence[Click]) -> list[Click]:
        """Clicks in the window's coordinates (a click outside keeps its coordinates outside)."""
        return [Click(self.to_window(c.point), c.positive) for c in clicks]

    def box(self, box: Box | None) -> Box | None:
        """A box in the window's grid: every working voxel whose centre lies in the box (at least one
        a side, so a box thinner than a working voxel still marks one); may reach past the grid."""
        if box is None:
            return None
        lo, hi = [], []
        for l, h, s, k in zip(box.lo, box.hi, self.start, self.scale):
            a = int(math.floor((l - s) * k + 0.5))
            b = max(a + 1, int(math.floor((h - s) * k + 0.5)))
            lo.append(a)
            hi.append(b)
        return Box(tuple(lo), tuple(hi))

    def as_dict(self) -> dict:
        return {"start": list(self.start), "size": list(self.size), "out_size": list(self.out_size)}

    # crop and paste together: what goes into the window and what comes back out of it
    def crop(self, x, mask: bool = False):
        """`x` cut out and resampled onto the window's grid (see `crop`)."""
        return crop(x, self, mask)

    def paste(self, x, image_shape: Sequence[int], fill: float | bool | None = None):
        """A prediction on the window's grid mapped back onto the whole image (see `paste`)."""
        return paste(x, self, image_shape, fill)

    def cut(self, image_t: torch.Tensor, clicks: Sequence[Click], prev: torch.Tensor | None = None,
            box: Box | None = None) -> "WindowView":
        """What the network sees in this window: the image (1, C, *spatial) and the previous mask
        (full size, any leading axes) cut out and resampled, the clicks and the box moved onto the grid."""
        if prev is not None:
            prev = self.crop(prev.reshape(1, 1, *prev.shape[-self.ndim:]), mask=True).float()
        return WindowView(self, tuple(int(n) for n in image_t.shape[-self.ndim:]), self.crop(image_t),
                          self.clicks(clicks), prev, self.box(box))


@dataclass(frozen=True)
class WindowView:
    """One window's inputs on its grid, and the way back: `paste` puts a prediction made on them
    onto the whole image (`image_shape`)."""

    window: FocusWindow
    image_shape: tuple[int, ...]
    image: torch.Tensor             # (1, C, *window.out_size)
    clicks: list[Click]             # in the window's grid
    prev: torch.Tensor | None       # (1, 1, *window.out_size) float 0/1, or None
    box: Box | None                 # in the window's grid, or None

    def paste(self, x, fill: float | bool | None = None):
        return self.window.paste(x, self.image_shape, fill)


@dataclass(frozen=True)
class Focus:
    """The one rule for where the network looks, for one model: a resolved `FocusConfig` and the
    model's sizes. Every caller (the session, replay, episodes, propagation, the next-image choice)
    asks `window`; a session's first click without a box also weighs `first_click_windows`."""

    config: FocusConfig
    model_cfg: ModelConfig

    @classmethod
    def of(cls, config: FocusConfig | None, model_cfg: ModelConfig) -> "Focus":
        return cls((config or FocusConfig()).resolve(model_cfg), model_cfg)

    def window(self, clicks: Sequence[Click], prev_mask, image_shape: Sequence[int],
               spacing: Sequence[float] | None = None, box: Box | None = None) -> FocusWindow:
        """A box and no mask yet -> the box's zoom window; no mask yet (the first click, or only
        background so far) -> a `context` window around the clicks; else the zoom window of the mask,
        every click and the box. `spacing` (mm per axis) makes the windows cubes in millimetres."""
        f, cfg = self.config, self.model_cfg
        if box is not None:
            return box_window(box, prev_mask, clicks, image_shape, cfg, f.expand, f.min_size, spacing)
        if prev_mask is None or not bool(prev_mask.any()):
            context = f.context_for(spacing)
            if len(clicks) == 1:
                return first_click_window(clicks[0].point, image_shape, context, cfg, spacing)
            return zoom_window(None, clicks, image_shape, cfg, f.expand, context, spacing)
        return zoom_window(prev_mask, clicks, image_shape, cfg, f.expand, f.min_size, spacing)

    def first_click_windows(self, point: Sequence[int], image_shape: Sequence[int],
                            spacing: Sequence[float] | None = None) -> list[FocusWindow]:
        """The first click's candidate windows, one per side `scales` names (x the context), from
        the smallest; a side past the image's size gives the same window, kept once."""
        base = self.config.context_for(spacing)
        windows: list[FocusWindow] = []
        for side in sorted({max(1, int(round(base * m))) for m in self.config.scales}):
            window = first_click_window(point, image_shape, side, self.model_cfg, spacing)
            if not windows or window != windows[-1]:
                windows.append(window)
        return windows

    @property
    def weighs_scales(self) -> bool:
        """Whether a first click (no box) tries several windows (`first_click_windows`)."""
        return len(self.config.scales) > 1


# ---------------------------------------------------------------------------------- windows
def _relative(spacing: Sequence[float] | None, ndim: int) -> list[float]:
    """Each axis's voxel size in voxels of the finest axis (all 1 without spacing)."""
    if spacing is None:
        return [1.0] * ndim
    finest = min(float(x) for x in spacing)
    return [float(x) / finest for x in spacing]


def fit_window(start: Sequence[int], size: Sequence[int], image_shape: Sequence[int], cfg: ModelConfig,
               spacing: Sequence[float] | None = None) -> FocusWindow:
    """The window for a native box: native resolution if it fits in input_size, else resized down
    to it with one scale; sides rounded up to size_multiple (the box grows to match, centred, or at
    its end at native resolution, shifted back into the image where the image allows). With an
    anisotropic `spacing`, sizes count in finest-axis voxels and thick axes are upsampled to them."""
    m, work = cfg.size_multiple, cfg.input_size
    start = [int(s) for s in start]
    size = [max(1, int(n)) for n in size]
    rel = _relative(spacing, len(size))
    if any(r > 1 + 1e-6 for r in rel):
        return _fit_anisotropic(start, size, rel, cfg)
    if max(size) <= work:
        out = [max(m, math.ceil(n / m) * m) for n in size]
        start = [st - min(max(0, st + o - n_img), max(0, st)) for st, o, n_img in zip(start, out, image_shape)]
        return FocusWindow(tuple(start), tuple(out), tuple(out))
    scale = work / max(size)
    out = [max(m, math.ceil(n * scale / m - 1e-9) * m) for n in size]
    new = [max(n, int(round(o / scale))) for n, o in zip(size, out)]  # grows only: the box stays inside
    start = [st - (nn - n) // 2 for st, n, nn in zip(start, size, new)]
    return FocusWindow(tuple(start), tuple(new), tuple(out))


def _fit_anisotropic(start: list[int], size: list[int], rel: list[float], cfg: ModelConfig) -> FocusWindow:
    """Working voxels of one physical size on every axis: that of the finest axis while the box
    fits in input_size, coarser when it does not. The box grows (centred) to the rounded grid."""
    m, work = cfg.size_multiple, cfg.input_size
    extent = [n * r for n, r in zip(size, rel)]  # in finest-axis voxels
    scale = min(1.0, work / max(extent))          # working voxels per finest-axis voxel
    out = [max(m, math.ceil(e * scale / m - 1e-9) * m) for e in extent]
    new = [max(n, int(math.ceil(o / (scale * r) - 1e-9))) for n, o, r in zip(size, out, rel)]
    start = [st - (nn - n) // 2 for st, n, nn in zip(start, size, new)]
    return FocusWindow(tuple(start), tuple(new), tuple(out))


def _box_inside(centre: Sequence[float], side: int, image_shape: Sequence[int],
                rel: Sequence[float] | None = None) -> tuple[list[int], list[int]]:
    """A box of `side` a side (finest-axis voxels) centred at `centre`, clipped to the image's
    extent, shifted inside it."""
    starts, sizes = [], []
    for c, n, r in zip(centre, image_shape, rel or [1.0] * len(image_shape)):
        s = min(max(1, int(math.ceil(side / r - 1e-9))), n)
        starts.append(int(min(max(math.floor(c - s / 2), 0), n - s)))
        sizes.append(s)
    return starts, sizes


def first_click_window(point: Sequence[int], image_shape: Sequence[int], context: int, cfg: ModelConfig,
                       spacing: Sequence[float] | None = None) -> FocusWindow:
    """A square (cubic) window of `context` native voxels (of the finest axis) centred on the first
    click, shifted to lie inside the image; an axis shorter than `context` is taken whole."""
    rel = _relative(spacing, len(image_shape))
    starts, sizes = _box_inside([p + 0.5 for p in point], int(context), image_shape, rel)
    return fit_window(starts, sizes, image_shape, cfg, spacing)


def zoom_window(mask: np.ndarray | torch.Tensor | None, clicks: Sequence[Click], image_shape: Sequence[int],
                cfg: ModelConfig, expand: float = ZOOM_EXPAND, min_size: int | None = None,
                spacing: Sequence[float] | None = None) -> FocusWindow:
    """RITM's ZoomIn: the bounding box of the mask and every click, expanded by `expand` and to at
    least `min_size`, made square (cubic), inside the image (clipped to it where it is smaller)."""
    if min_size is None:
        min_size = max(1, int(cfg.input_size * MIN_SIZE_FACTOR))
    points = [np.asarray(c.point, dtype=np.int64)[None] for c in clicks]
    if mask is not None:
        m = mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
        box = mask_bounds(m.reshape(m.shape[-len(image_shape):]))
        if box is not None:
            points.append(np.stack(box))
    if not points:
        raise ValueError("a zoom window needs a non-empty mask or at least one click")
    pts = np.concatenate(points)
    lo, hi = pts.min(0), pts.max(0) + 1
    rel = _relative(spacing, len(image_shape))
    side = max(int(math.ceil(float(((hi - lo) * np.asarray(rel)).max()) * expand)), int(min_size))
    starts, sizes = _box_inside((lo + hi) / 2, side, image_shape, rel)
    return fit_window(starts, sizes, image_shape, cfg, spacing)


def box_window(box: Box, mask, clicks: Sequence[Click], image_shape: Sequence[int], cfg: ModelConfig,
               expand: float = ZOOM_EXPAND, min_size: int | None = None,
               spacing: Sequence[float] | None = None) -> FocusWindow:
    """The window of a session that started with a box: the zoom window of the box's corners, the
    clicks and the mask (the box alone before the first prediction)."""
    corners = [Click(p, True) for p in box.corners()]
    return zoom_window(mask, [*corners, *clicks], image_shape, cfg, expand, min_size, spacing)


def scale_score(logits: torch.Tensor, window: FocusWindow, click: Click, image_shape: Sequence[int], rule: str) -> float:
    """How well a first-click window fits the structure, from the network's own prediction in it
    (logits on the window's grid, shape (1, 1, *out_size)); higher is better.

    - "border": the predicted part holding the click must not touch a side of the window that lies
      inside the image (else the structure goes on past it): 1 when clear, 0 when it touches;
    - "confidence": the network's certainty |2p - 1| on a band around the predicted part's
      outline: a structure the window holds gets a sharp edge, a cut or unseen one a fuzzy edge.
    """
    from scipy import ndimage

    p = torch.sigmoid(logits.detach().float()).reshape(window.out_size).cpu().numpy()
    mask = p > 0.5
    inside = window.to_window(click.point)
    if all(0 <= q < n for q, n in zip(inside, window.out_size)) and mask[inside]:
        parts, _ = ndimage.label(mask)
        mask = parts == parts[inside]
    if not mask.any():
        return 0.0
    if rule == "border":
        for axis, (start, stop, n_img) in enumerate(zip(window.start, window.stop, image_shape)):
            low, high = [slice(None)] * mask.ndim, [slice(None)] * mask.ndim
            low[axis], high[axis] = 0, -1
            if (start > 0 and mask[tuple(low)].any()) or (stop < n_img and mask[tuple(high)].any()):
                return 0.0
        return 1.0
    band = ndimage.binary_dilation(mask, iterations=2) & ~ndimage.binary_erosion(mask, iterations=2)
    return float(np.abs(2 * p[band] - 1).mean()) if band.any() else 0.0


def choose_scale(scores: Sequence[float], rule: str) -> int:
    """The index of the chosen candidate window (candidates from the smallest to the largest):
    "fixed" the first; "border" the smallest that holds the structure (the largest if none does);
    "confidence" the most confident (the smaller one on a tie)."""
    if rule == "fixed" or len(scores) == 1:
        return 0
    if rule == "border":
        clear = [i for i, s in enumerate(scores) if s > 0]
        return clear[0] if clear else len(scores) - 1
    return int(np.argmax(scores))


# ---------------------------------------------------------------------------------- crop / paste
def _as_tensor(x) -> tuple[torch.Tensor, bool]:
    if isinstance(x, torch.Tensor):
        return x, False
    return torch.as_tensor(np.ascontiguousarray(x)), True


def _overlap(window: FocusWindow, image_shape: Sequence[int]) -> tuple[tuple[slice, ...], tuple[slice, ...]] | None:
    """Slices of the image and of the (native) window that overlap, or None."""
    src, dst = [], []
    for st, n, n_img in zip(window.start, window.size, image_shape):
        lo, hi = max(0, st), min(n_img, st + n)
        if hi <= lo:
            return None
        src.append(slice(lo, hi))
        dst.append(slice(lo - st, hi - st))
    return tuple(src), tuple(dst)


def _resize(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """(N, C, *spatial) float -> (N, C, *size), linear, voxel centres aligned."""
    mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[len(size)]
    return F.interpolate(x, size=tuple(size), mode=mode, align_corners=False)


def crop(x, window: FocusWindow, mask: bool = False):
    """Cut `window` out of `x` (shape (*lead, *spatial), e.g. (1, C, *spatial)) and resample it to
    `window.out_size`: linear for images and click maps; with `mask=True` (or a bool input) linear
    and thresholded at one half, returned as bool. Zero / False past the image's edge."""
    t, was_numpy = _as_tensor(x)
    nd = window.ndim
    lead, spatial = tuple(t.shape[:-nd]), tuple(t.shape[-nd:])
    is_mask = mask or t.dtype == torch.bool
    flat = t.reshape(1, -1, *spatial)
    src = flat.float() if is_mask or not flat.is_floating_point() else flat
    region = torch.zeros((1, flat.shape[1], *window.size), dtype=src.dtype, device=src.device)
    ov = _overlap(window, spatial)
    if ov is not None:
        region[(slice(None), slice(None), *ov[1])] = src[(slice(None), slice(None), *ov[0])]
    if not window.native:
        region = _resize(region, window.out_size)
    if is_mask:
        region = region >= 0.5
    out = region.reshape(*lead, *window.out_size)
    return out.cpu().numpy() if was_numpy else out


def paste(x, window: FocusWindow, image_shape: Sequence[int], fill: float | bool | None = None):
    """Map a window's logits or mask (shape (*lead, *window.out_size)) back onto the whole image
    (shape (*lead, *image_shape)) at native resolution. Outside the window: `fill`, by default
    background (False for a bool mask, `BACKGROUND_LOGIT` for logits). Logits are resampled
    linearly; a bool mask is resampled linearly and thresholded at one half."""
    t, was_numpy = _as_tensor(x)
    nd = window.ndim
    image_shape = tuple(int(n) for n in image_shape)
    if tuple(t.shape[-nd:]) != tuple(window.out_size):
        raise ValueError(f"paste: shape {tuple(t.shape)} does not end with the window's size {window.out_size}")
    lead = tuple(t.shape[:-nd])
    is_mask = t.dtype == torch.bool
    flat = t.reshape(1, -1, *window.out_size)
    region = flat.float() if is_mask or not flat.is_floating_point() else flat
    if not window.native:
        region = _resize(region, window.size)
    if is_mask:
        region = region >= 0.5
        background = bool(fill) if fill is not None else False
    else:
        background = BACKGROUND_LOGIT if fill is None else float(fill)
    out = torch.full((1, flat.shape[1], *image_shape), background, dtype=region.dtype, device=region.device)
    ov = _overlap(window, image_shape)
    if ov is not None:
        out[(slice(None), slice(None), *ov[0])] = region[(slice(None), slice(None), *ov[1])]
    out = out.reshape(*lead, *image_shape)
    return out.cpu().numpy() if was_numpy else out


def encode_window_clicks(clicks: Sequence[Click], window: FocusWindow, sigma: float) -> np.ndarray:
    """(2, *window.out_size) click maps, the clicks moved into the window's grid, Gaussians of
    `sigma` voxels of that grid (the working size), so they look the way they did in training."""
    return encode_clicks(window.clicks(clicks), window.out_size, sigma)


def enforce_clicks(mask, clicks: Sequence[Click]):
    """The click rule: the mask holds every positive click's voxel and none of the negative ones
    (in click order, so a later click on the same voxel wins). Works in place on a numpy array or a
    tensor of shape (*lead, *spatial) and returns it; clicks outside the mask's grid are skipped."""
    if not clicks:
        return mask
    nd = len(clicks[0].point)
    spatial = tuple(mask.shape[-nd:])
    is_bool = mask.dtype in (bool, np.bool_, torch.bool)
    for c in clicks:
        if all(0 <= p < n for p, n in zip(c.point, spatial)):
            mask[(..., *c.point)] = bool(c.positive) if is_bool else float(c.positive)
    return mask
