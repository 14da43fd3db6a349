"""Volumes on the 2D base: a mask made on one slice, carried through the next, corrected on any.

The propagation route (MedSAM2's video propagation, on a 2-core CPU): a click on a slice of a
volume predicts that slice with the 2D base, through the focus crop. Its mask is then carried to
the neighbouring slices, in both directions: each next slice is predicted from a prompt made of
the slice before it (`click_prompt`: its mask as the previous-mask input and a positive click at
its deepest point), and propagation stops where the prediction vanishes or stops overlapping the
slice it came from. One session, one 3D mask.

A box on a slice (a 2D base that takes a box) starts that slice's interaction again, with the box as
its prompt (it stays an input of the slice's later clicks), and propagates like a click.

A correction (a click on any slice) continues that slice's own interaction (its clicks so far and
its current mask as the previous mask), makes it a *user slice*, and propagates from it outward
until the next user slice on each side: user slices are never changed by propagation, and the
slices beyond the next user slice keep what they had. Slices the new run no longer reaches are
cleared when they came from this side (from this slice or from behind it); those that came from
the user slice ahead are kept.

The prompt for the next slice is one function (`SlicePrompt` from the neighbour's mask), so a box
prompt can replace the click when the 2D base takes one.

Slices are taken along the last spatial axis (the thick axis of CT and MR volumes, and the axis the
site service's slider moves along).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np
import torch

from fedpoint.shared.clicker import deepest_point
from fedpoint.shared.clicks import Box, Click, check_box, check_point, check_spacing

if TYPE_CHECKING:
    from fedpoint.client.engine import SiteEngine
    from fedpoint.client.session import AnnotationSession

NO_SOURCE = -1  # a slice no interaction has reached


class VolumeInputError(ValueError):
    """Bad input to a propagation session; the message says what is wrong."""


@dataclass(frozen=True)
class SlicePrompt:
    """What the network gets for a slice it was not clicked on: clicks (in the slice's
    coordinates) and a previous-mask input (bool, the slice's shape)."""

    clicks: tuple[Click, ...]
    prev: np.ndarray


Prompt = Callable[[np.ndarray], "SlicePrompt | None"]


def click_prompt(neighbour: np.ndarray) -> SlicePrompt | None:
    """Today's prompt for the next slice: the neighbour's mask as the previous mask and one
    positive click at its deepest point; None (stop) for an empty neighbour."""
    if not neighbour.any():
        return None
    return SlicePrompt((Click(deepest_point(neighbour), True),), neighbour)


@dataclass(frozen=True)
class PropagationConfig:
    """When propagation stops: a prediction of fewer than `min_voxels` voxels has vanished; one
    whose share of voxels inside the neighbour's mask is below `min_overlap` has stopped
    overlapping it (0: any shared voxel continues); with `max_growth`, one more than that many
    times the neighbour's size has leaked (None: no limit). `max_slices` bounds how far one
    interaction carries a mask on each side (0: slice by slice, the clicked slice only, the way a
    volume is annotated without propagation; None: until the stop rule)."""

    min_voxels: int = 1
    min_overlap: float = 0.0
    band: float | None = 0.0  # intensity gate: keep voxels within the neighbour's object band, widened this much
    max_growth: float | None = 1.2  # chosen on dev-split-3d (docs/engine.md)
    max_slices: int | None = None
    cut_grows: bool = True  # a neighbour its focus window cut short may grow past max_growth (dev-split-3d)

    def __post_init__(self) -> None:
        if self.min_voxels < 1:
            raise ValueError(f"min_voxels must be at least 1, got {self.min_voxels}")
        if not 0.0 <= self.min_overlap < 1.0:
            raise ValueError(f"min_overlap must be in [0, 1), got {self.min_overlap}")
        if self.max_growth is not None and not self.max_growth >= 1.0:
            raise ValueError(f"max_growth must be >= 1 (or None: no limit), got {self.max_growth}")
        if self.band is not None and not self.band >= 0:
            raise ValueError(f"band must be >= 0 (or None: no intensity gate), got {self.band}")
        if self.max_slices is not None and self.max_slices < 0:
            raise ValueError(f"max_slices must be >= 0 (or None: no limit), got {self.max_slices}")

    def gate(self, pred: np.ndarray, image: np.ndarray, neighbour: np.ndarray, neighbour_image: np.ndarray) -> np.ndarray:
        """With `band`: the prediction's voxels whose intensity (first channel) lies within the
        neighbour's object band (its 5th-95th percentile inside its mask, widened by `band` times
        that range on each side). The 2D base trusts its previous-mask input, so past an object's
        end it copies the neighbour's mask onto tissue that is not the object: the gate removes it."""
        if self.band is None or not pred.any():
            return pred
        lo, hi = np.percentile(neighbour_image[0][neighbour], (5, 95))
        pad = self.band * max(hi - lo, 1e-3)
        plane = image[0]
        return pred & (plane >= lo - pad) & (plane <= hi + pad)

    def continues(self, pred: np.ndarray, neighbour: np.ndarray, neighbour_cut: bool = False) -> bool:
        """Whether propagation goes on past `pred`. With `cut_grows`, the growth limit does not hold
        when the neighbour's mask was cut by its focus window (`neighbour_cut`): a large object's
        first mask is a window's worth of it, and the next slice's larger window shows more."""
        size = int(pred.sum())
        if size < self.min_voxels:
            return False
        exempt = self.cut_grows and neighbour_cut
        if self.max_growth is not None and not exempt and size > self.max_growth * int(neighbour.sum()):
            return False
        shared = int((pred & neighbour).sum())
        return shared > 0 and shared >= self.min_overlap * size


@dataclass
class Interaction:
    """One click (or box) on the volume and what it cost: the slices predicted (the clicked one
    included) and the wall time of the interaction and its propagation."""

    click: Click | None  # None: a box (`box`, on slice `z`)
    predicted: int
    ms: float
    changed: dict[int, tuple[np.ndarray, int]] = field(default_factory=dict, repr=False)  # undo: old mask, source
    clicks_before: list[Click] | None = field(default=None, repr=False)  # the slice's clicks before (None: not a user slice)
    z: int = 0
    box: Box | None = None  # the box drawn (2D, on slice z)
    box_before: Box | None = field(default=None, repr=False)


class PropagationSession:
    """One volume annotated with the 2D base by one person: click, undo, accept.

    `click` takes a voxel of the volume (the last axis picks the slice) and returns the 3D mask;
    `box` a box on one slice; `slices_reached` says where it is. `accept` sends each user slice's
    final mask through the engine's accept (the post-interaction update and the site's cache, as 2D
    cases named `<case_id>.z0042`): the 2D base and its adapters (`task`'s, None: the primary
    one) learn from the slices a person worked on. `on_progress(slice)` is called after each
    slice a propagation predicts (a page shows how far a long run is)."""

    def __init__(self, engine: "SiteEngine", volume: np.ndarray, case_id: str = "volume",
                 spacing: Sequence[float] | None = None, prompt: Prompt = click_prompt,
                 config: PropagationConfig | None = None, on_progress: Callable[[int], None] | None = None,
                 task: str | None = None):
        model = engine.slot(task).model
        if model.model_cfg.spatial_dims != 2:
            raise VolumeInputError("propagation carries 2D predictions through slices: it needs a 2D base "
                                   "(a 3D base annotates the volume in one session of its own)")
        volume = np.asarray(volume)
        if volume.ndim == 3:
            volume = volume[None]
        if volume.ndim != 4:
            raise VolumeInputError(f"expected a volume of shape (channels, x, y, slices), got shape {volume.shape}")
        try:
            self.spacing = check_spacing(spacing, 3)
        except ValueError as err:
            raise VolumeInputError(str(err)) from None
        self.engine, self.model, self.case_id, self.task = engine, model, case_id, task
        self.prompt, self.config, self.on_progress = prompt, config or PropagationConfig(), on_progress
        self.spatial_shape = tuple(volume.shape[1:])
        # slice-major copies: a slice is one contiguous block
        self._slices = np.ascontiguousarray(np.moveaxis(volume.astype(np.float32, copy=False), -1, 0))
        self._mask = np.zeros((self.spatial_shape[-1], *self.spatial_shape[:-1]), dtype=bool)
        self.source = np.full(self.spatial_shape[-1], NO_SOURCE, dtype=np.int64)
        self.cut = np.zeros(self.spatial_shape[-1], dtype=bool)  # a slice's mask reaches an inner edge of its window
        self.user_clicks: dict[int, list[Click]] = {}  # every user slice (a box's slice too) -> its clicks
        self.user_boxes: dict[int, Box] = {}
        self.interactions: list[Interaction] = []
        self.accepted: np.ndarray | None = None
        self.slice_sessions: dict[int, "AnnotationSession"] = {}  # after accept: each user slice's 2D session

    # --------------------------------------------------------------------------- state
    @property
    def mask(self) -> np.ndarray:
        """The 3D mask (bool, the volume's spatial shape); a read-only view."""
        view = np.moveaxis(self._mask, 0, -1)
        view.flags.writeable = False
        return view

    @property
    def clicks(self) -> list[Click]:
        return [i.click for i in self.interactions if i.click is not None]

    @property
    def user_slices(self) -> list[int]:
        return sorted(self.user_clicks)

    def slice_image(self, z: int) -> np.ndarray:
        """Slice z of the volume, (C, x, y) float32: the image a 2D case of that slice holds."""
        return self._slices[z]

    def slices_reached(self) -> list[int]:
        return [int(z) for z in np.flatnonzero(self._mask.reshape(len(self._mask), -1).any(1))]

    # --------------------------------------------------------------------------- interaction
    def click(self, point: Sequence[float], positive: bool = True) -> np.ndarray:
        """A click on the volume: re-predict its slice, propagate outward; returns the 3D mask."""
        if self.accepted is not None:
            raise VolumeInputError("this annotation was already accepted")
        try:
            p = check_point(point, self.spatial_shape)
        except ValueError as err:
            raise VolumeInputError(str(err)) from None
        t0 = time.perf_counter()
        z, click = p[-1], Click(p[:-1], bool(positive))
        step = Interaction(Click(p, bool(positive)), 0, 0.0, clicks_before=self.user_clicks.get(z), z=z,
                           box_before=self.user_boxes.get(z))
        clicks = [*self.user_clicks.get(z, []), click]
        current = self._mask[z]
        pred, cut = self._predict(z, clicks, current if current.any() else None, self.user_boxes.get(z))
        for c in clicks:  # the click rule on the clicked slice
            pred[c.point] = c.positive
        self.user_clicks[z] = clicks
        return self._run(step, z, pred, t0, cut)

    def box(self, lo: Sequence[float], hi: Sequence[float], z: int) -> np.ndarray:
        """A box on slice `z` from corner `lo` to corner `hi` (exclusive; [x, y]): that slice's
        interaction starts again from the box, then propagates outward; returns the 3D mask."""
        if self.accepted is not None:
            raise VolumeInputError("this annotation was already accepted")
        if not self.model.model_cfg.takes_box:
            raise VolumeInputError("this base takes no box prompt (it was trained with clicks only): start with a click")
        n = self.spatial_shape[-1]
        if isinstance(z, bool) or not isinstance(z, (int, np.integer)) or not 0 <= z < n:
            raise VolumeInputError(f"slice {z} is outside the volume ({n} slices)")
        try:
            box = check_box(lo, hi, self.spatial_shape[:-1])
        except ValueError as err:
            raise VolumeInputError(str(err)) from None
        t0 = time.perf_counter()
        z = int(z)
        step = Interaction(None, 0, 0.0, clicks_before=self.user_clicks.get(z), z=z, box=box,
                           box_before=self.user_boxes.get(z))
        pred, cut = self._predict(z, [], None, box)
        self.user_clicks[z], self.user_boxes[z] = [], box
        return self._run(step, z, pred, t0, cut)

    def _run(self, step: Interaction, z: int, pred: np.ndarray, t0: float, cut: bool = False) -> np.ndarray:
        """Write the user slice's new mask, propagate from it both ways, record the interaction."""
        self._write(step, z, pred, z, cut)
        step.predicted = 1
        for direction in (1, -1):
            step.predicted += self._propagate(step, z, direction)
        step.ms = (time.perf_counter() - t0) * 1e3
        self.interactions.append(step)
        return self.mask

    def undo(self) -> np.ndarray:
        """Take the last click back: every slice it changed returns to what it was."""
        if self.accepted is not None:
            raise VolumeInputError("this annotation was already accepted")
        if not self.interactions:
            raise VolumeInputError("there is no click to undo")
        step = self.interactions.pop()
        for z, (old, src, cut) in step.changed.items():
            self._mask[z], self.source[z], self.cut[z] = old, src, cut
        z = step.z
        if step.clicks_before is None:
            self.user_clicks.pop(z, None)
        else:
            self.user_clicks[z] = step.clicks_before
        if step.box_before is None:
            self.user_boxes.pop(z, None)
        else:
            self.user_boxes[z] = step.box_before
        return self.mask

    def accept(self, mask: np.ndarray | None = None, into_cache: bool = True) -> np.ndarray:
        """Accept the 3D mask (or one the person edited). Each user slice that holds the object goes
        through the engine's accept as a 2D case (post update; the cache when the engine has one,
        unless `into_cache` is False: then the caller stores the cases, as the site service does
        in one all-or-none write); its 2D session is kept in `slice_sessions`."""
        if self.accepted is not None:
            raise VolumeInputError("this annotation was already accepted")
        final = self.mask if mask is None else np.asarray(mask)
        if final.shape != self.spatial_shape:
            raise VolumeInputError(f"mask shape {final.shape} differs from the volume's spatial shape {self.spatial_shape}")
        final = final.astype(bool)
        if not final.any():
            raise VolumeInputError("the mask is empty: accept a mask that marks the object")
        for z in self.user_slices:
            plane = np.ascontiguousarray(final[..., z])
            if plane.any():
                session = self.engine.open(self._slices[z], f"{self.case_id}.z{z:04d}", into_cache=into_cache,
                                           task=self.task)
                self.engine.accept(session, plane)
                self.slice_sessions[z] = session
        self.accepted = final.copy()
        return self.accepted

    def record(self) -> dict:
        """What happened, for logs and evaluation (no image data)."""
        return {
            "case_id": self.case_id,
            "clicks": [i.click.as_dict() for i in self.interactions if i.click is not None],
            "boxes": {int(z): b.as_dict() for z, b in self.user_boxes.items()},
            "interaction_ms": [round(i.ms, 3) for i in self.interactions],
            "slices_predicted": [i.predicted for i in self.interactions],
            "user_slices": self.user_slices,
            "slices_reached": self.slices_reached(),
        }

    # --------------------------------------------------------------------------- propagation
    def _propagate(self, step: Interaction, z: int, direction: int) -> int:
        """Carry slice z's mask outward until the prediction stops or the next user slice; clear what
        this side had put beyond the stop. Returns the slices predicted."""
        n, predicted = len(self._mask), 0
        ahead = next((u for u in (sorted(self.user_clicks, reverse=direction < 0))
                      if (u - z) * direction > 0), None)
        end = n if direction > 0 and ahead is None else (-1 if ahead is None else ahead)
        if self.config.max_slices is not None:  # never past the reach, nor past the volume or the next user slice
            reach = z + direction * (self.config.max_slices + 1)
            end = min(end, reach) if direction > 0 else max(end, reach)
        neighbour, neighbour_cut, s = self._mask[z], bool(self.cut[z]), z + direction
        while s != end:
            prompt = self.prompt(neighbour)
            if prompt is None:
                break
            pred, cut = self._predict(s, list(prompt.clicks),
                                          prompt.prev if prompt.prev is not None and prompt.prev.any() else None)
            pred = self.config.gate(pred, self._slices[s], neighbour, self._slices[s - direction])
            predicted += 1
            if self.on_progress is not None:
                self.on_progress(s)
            if not self.config.continues(pred, neighbour, neighbour_cut):
                break
            self._write(step, s, pred, z, cut)
            neighbour, neighbour_cut, s = pred, cut, s + direction
        for rest in range(s, end, direction):  # beyond the stop: what came from this side goes
            src = int(self.source[rest])
            if src != NO_SOURCE and (src - z) * direction <= 0:
                self._write(step, rest, np.zeros_like(neighbour), NO_SOURCE)
        return predicted

    def _write(self, step: Interaction, z: int, mask: np.ndarray, source: int, cut: bool = False) -> None:
        step.changed.setdefault(z, (self._mask[z].copy(), int(self.source[z]), bool(self.cut[z])))
        self._mask[z] = mask
        self.source[z] = source if mask.any() else NO_SOURCE
        self.cut[z] = cut and mask.any()

    def _predict(self, z: int, clicks: list[Click], prev: np.ndarray | None,
                 box: Box | None = None) -> tuple[np.ndarray, bool]:
        """The 2D base on slice z through the focus crop: the window `SiteModel.look` picks for these
        clicks, this previous mask and the slice's box, the prediction pasted back (bool, the slice's
        shape), and whether it reaches an edge of that window lying inside the slice (the object may
        go on beyond what the window showed)."""
        model = self.model
        shape = self._mask.shape[1:]
        spacing = None if self.spacing is None else self.spacing[:-1]
        prev_t = None if prev is None else torch.as_tensor(prev, device=model.device).reshape(1, 1, *shape).float()
        view = model.look(model.image_tensor(self._slices[z]), clicks, prev_t, box=box, spacing=spacing)
        with model.lock, torch.no_grad():
            out = view.paste(model.logits_in(view) > 0)
        pred = out[0, 0].cpu().numpy()
        return pred, reaches_inner_edge(pred, view.window)


def reaches_inner_edge(mask: np.ndarray, window) -> bool:
    """Whether `mask` holds a pixel on an edge of `window` (a `FocusWindow`) that lies inside the
    image: the window cut the object short there."""
    for axis, (start, stop, n) in enumerate(zip(window.start, window.stop, mask.shape)):
        for edge, inside in ((start, start > 0), (stop - 1, stop < n)):
            if inside and 0 <= edge < n and np.take(mask, edge, axis=axis).any():
                return True
    return False


def open_volume(engine: "SiteEngine", volume: np.ndarray, case_id: str = "volume",
                spacing: Sequence[float] | None = None, **options) -> PropagationSession:
    """A propagation session on `volume` ((C, x, y, slices) or (x, y, slices)) with the engine's 2D
    model; `options` go to `PropagationSession` (prompt, config, on_progress, task)."""
    return PropagationSession(engine, volume, case_id, spacing, **options)
