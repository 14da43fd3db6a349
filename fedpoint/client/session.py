"""One image (or volume) being annotated by one person: a box or a click first, then clicks, undo, accept.

Every prediction runs in a focus window (`fedpoint.shared.focus`): a box in its own zoom window,
a first click in a context window centred on it, later clicks in the zoom window of the previous
mask, every click and the box. A box stays an input of every later prediction of the session. The
window's prediction is pasted back onto the whole image, and the click rule holds: the mask shown
contains every positive click's voxel and none of the negative ones.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from fedpoint.client.site_model import SiteModel
from fedpoint.client.online import mid_interaction_update, post_interaction_update
from fedpoint.client.guards import restore, snapshot
from fedpoint.client.packed_masks import compact, expand
from fedpoint.shared.clicks import Box, Click, check_box, check_point, check_spacing
from fedpoint.shared.focus import FocusWindow, WindowView, enforce_clicks


class InputError(ValueError):
    """Bad input from a user or a caller; the message says what is wrong."""


def check_image(image: np.ndarray, spatial_dims: int, channels: int) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim == spatial_dims:  # a grey image without its channel axis
        image = image[None]
    if image.ndim != spatial_dims + 1:
        hint = " (a 3D base needs a volume; use a 2D base such as base2d for images and slices)" if spatial_dims == 3 else ""
        raise InputError(f"expected a {spatial_dims}D image of shape (channels, *spatial), got shape {image.shape}{hint}")
    if spatial_dims == 3 and min(image.shape[1:]) < 2:
        raise InputError(f"shape {image.shape} is a single slice, not a volume: the 3D base needs at least 2 voxels on "
                         "every axis (use a 2D base such as base2d for slices)")
    if image.shape[0] != channels:
        raise InputError(f"the model takes {channels} image channel(s), the image has {image.shape[0]} (shape {image.shape})")
    if not np.issubdtype(image.dtype, np.number):
        raise InputError(f"image values must be numbers, got dtype {image.dtype}")
    if not np.isfinite(image).all():
        raise InputError("the image contains NaN or infinite values")
    if float(image.max()) == float(image.min()):
        raise InputError("the image is constant: there is nothing to segment")
    return image.astype(np.float32, copy=False)


def check_mask(mask: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.shape != shape:
        raise InputError(f"mask shape {mask.shape} differs from the image's spatial shape {shape}")
    if mask.dtype != bool and not np.isin(mask, (0, 1)).all():
        raise InputError(f"the mask must be binary (0/1); it holds values {np.unique(mask)[:5].tolist()}")
    if not mask.any():
        raise InputError("the mask is empty: accept a mask that marks the object")
    return mask.astype(bool)


@dataclass
class Step:
    click: Click | None         # None: the session's box (its first step)
    mask: torch.Tensor          # the mask shown after this click, bool (1, 1, *spatial): 1 byte a voxel
    input_mask: torch.Tensor | None  # the previous mask the model saw when predicting it
    predict_ms: float
    update_ms: float
    window: FocusWindow  # where the network looked for this click (or the box)


@dataclass
class AnnotationSession:
    """Interactive annotation of one image with optional online updates on each click and on accept.

    With a mid-interaction update, the mask shown for a click is the prediction made before the
    update (the pseudo-label the update learns from); the update benefits later clicks. With
    `repredict` (default: the adaptation config's) the updated model predicts again and that mask is
    shown, as You Point, I Learn does (one more forward per click when the guard is off).
    """

    model: SiteModel
    image: np.ndarray
    case_id: str = ""
    on_accept: Callable[["AnnotationSession", np.ndarray], None] | None = None
    seed: int = 0
    steps: list[Step] = field(default_factory=list)
    accepted: np.ndarray | None = None
    post_ms: float = 0.0
    repredict: bool | None = None  # None: AdaptationConfig.repredict
    post_window: FocusWindow | None = None
    rejected: list[dict] = field(default_factory=list)  # online updates the online guard rolled back, with reasons
    spacing: tuple[float, ...] | None = None  # mm per spatial axis: windows are cubes in mm (None: voxels)
    drawn_box: Box | None = None  # the box the session started with, if any

    def __post_init__(self) -> None:
        if self.repredict is None:
            self.repredict = self.model.adapt_cfg.repredict
        cfg = self.model.model_cfg
        self.image = check_image(self.image, cfg.spatial_dims, cfg.image_channels)
        try:
            self.spacing = check_spacing(self.spacing, cfg.spatial_dims)
        except ValueError as err:
            raise InputError(str(err)) from None
        self.spatial_shape = tuple(self.image.shape[1:])
        self._image_t = self.model.image_tensor(self.image)

    # --------------------------------------------------------------------------- interaction
    @property
    def clicks(self) -> list[Click]:
        return [s.click for s in self.steps if s.click is not None]

    def box(self, lo, hi) -> np.ndarray:
        """Start the annotation with a box from corner `lo` to corner `hi` (exclusive), voxel
        indices; returns its mask. Drawing again before any click replaces the box."""
        if self.accepted is not None:
            raise InputError("this annotation was already accepted")
        if self.clicks:
            raise InputError("a box starts an annotation: undo the clicks first")
        model, shape = self.model, self.spatial_shape
        if not model.model_cfg.takes_box:
            raise InputError("this base takes no box prompt (it was trained with clicks only): start with a click")
        try:
            box = check_box(lo, hi, shape)
        except ValueError as err:
            raise InputError(str(err)) from None
        t0 = time.perf_counter()
        view = model.look(self._image_t, [], None, box, self.spacing)
        with model.lock, torch.no_grad():
            mask = view.paste(model.logits_in(view) > 0)
        self.drawn_box = box
        self.steps = [Step(None, mask, None, (time.perf_counter() - t0) * 1e3, 0.0, view.window)]
        return self.mask

    @property
    def mask(self) -> np.ndarray:
        if not self.steps:
            return np.zeros(self.spatial_shape, dtype=bool)
        return self.steps[-1].mask[0, 0].bool().cpu().numpy()

    def click(self, point, positive: bool = True) -> np.ndarray:
        """Add a click and return the new mask (bool, the image's spatial shape)."""
        if self.accepted is not None:
            raise InputError("this annotation was already accepted")
        click = Click(check_point(point, self.spatial_shape), bool(positive))
        model, shape = self.model, self.spatial_shape
        before = self.clicks
        prev = self.steps[-1].mask if self.steps else None
        clicks = [*before, click]
        t0 = time.perf_counter()
        with model.lock, torch.no_grad():
            if not self.steps and model.focus.weighs_scales:  # the first click, no box: which scale?
                view, logits_c = model.first_click(self._image_t, click, self.spacing)
            else:
                view = model.look(self._image_t, clicks, prev, self.drawn_box, self.spacing)
                logits_c = model.logits_in(view)
        pred_c = logits_c > 0
        mask = enforce_clicks(view.paste(pred_c), clicks)
        predict_ms = (time.perf_counter() - t0) * 1e3
        update_ms = 0.0
        if model.adapt_cfg.uses_mid and self.steps and model.adapt_cfg.mid_steps:
            update_ms, mask, extra_ms = self._mid_update(view, pred_c, clicks, mask)
            predict_ms += extra_ms
        self.steps.append(Step(click, mask, prev, predict_ms, update_ms, view.window))
        compact(self.steps)  # older steps' masks bit-packed (issue 28: a 3D session's memory)
        return self.mask

    def _mid_update(self, view: WindowView, pred_c: torch.Tensor, clicks: list[Click], mask: torch.Tensor
                    ) -> tuple[float, torch.Tensor, float]:
        """The model that made the previous mask steps toward this click's prediction, in this
        click's window, as a trial the online guard keeps or rolls back. Returns (update ms, the
        mask to show, extra predict ms of a `repredict`)."""
        model, extra_ms = self.model, 0.0
        t1 = time.perf_counter()
        pseudo = enforce_clicks(pred_c.float(), view.clicks)
        seen = self.steps[-1].input_mask
        seen_c = None if seen is None else view.window.crop(seen, mask=True).float()
        online_guard = model.online_guard
        # One trial at a time on the site's shared model: another person's step landing between
        # this snapshot and its restore would be undone with it.
        with model.lock:
            snap = snapshot(model) if online_guard.enabled else None
            mid_interaction_update(model, view.image, view.clicks[:-1], seen_c, view.clicks[-1], pseudo, box=view.box)
            after = None
            if snap is not None:
                keep, after = online_guard.check_mid(model, view.image, view.clicks, view.prev, pred_c.float(), self.case_id,
                                              box=view.box)
                if not keep:
                    restore(model, snap)
                    self.rejected.append(online_guard.events[-1])
                elif online_guard.project(model):
                    after = None  # the projected model differs from the one checked
        update_ms = (time.perf_counter() - t1) * 1e3
        if self.repredict and after is not None:  # the online guard already predicted with the updated model
            mask = enforce_clicks(view.paste(after.bool()), clicks)
        elif self.repredict:
            t2 = time.perf_counter()
            with model.lock, torch.no_grad():
                pred_c = model.logits_in(view) > 0
            mask = enforce_clicks(view.paste(pred_c), clicks)
            extra_ms = (time.perf_counter() - t2) * 1e3
        return update_ms, mask, extra_ms

    def undo(self) -> np.ndarray:
        """Remove the last click; the mask goes back to what it was before it (updates stay)."""
        if self.accepted is not None:
            raise InputError("this annotation was already accepted")
        if not self.steps:
            raise InputError("there is no click to undo")
        if self.steps.pop().click is None:
            self.drawn_box = None
        expand(self.steps)
        return self.mask

    def accept(self, mask: np.ndarray | None = None) -> np.ndarray:
        """Accept the current mask (or a mask the person edited) as final; runs the post update."""
        if self.accepted is not None:
            raise InputError("this annotation was already accepted")
        final = check_mask(self.mask if mask is None else mask, self.spatial_shape)
        cfg = self.model.adapt_cfg
        if cfg.uses_post and self.steps and cfg.post_steps:
            t0 = time.perf_counter()
            first = self.steps[0].click  # None: the session started with its box
            # The first prompt's own window: stage 1 teaches exactly the prediction a person sees
            # after one click (or the box), so it trains in the window that prediction was made in.
            first_view = self.steps[0].window.cut(self._image_t, [] if first is None else [first], None, self.drawn_box)
            first_c = None if first is None else first_view.clicks[0]
            target = first_view.window.crop(final, mask=True)
            if first is not None and first.positive and not target.any():  # an object thinner than a voxel of the window
                target[first_c.point] = True
            # The whole trial (snapshot, step, checks, replay memory, rolling check) holds the model:
            # concurrent accepts on one site would otherwise roll back each other's steps.
            with self.model.lock:
                self._post_update(first_view, first_c, target, final)
            self.post_window = first_view.window
            self.post_ms = (time.perf_counter() - t0) * 1e3
        self.accepted = final
        if self.on_accept is not None:
            self.on_accept(self, final)
        return final

    def _post_update(self, first_view: WindowView, first_c: Click | None, target: np.ndarray, final: np.ndarray) -> None:
        """The post-interaction update in the first prompt's window, as a trial the online guard
        keeps or rolls back: judged on the accepted image in its last click's window and on the
        replay cases, then remembered for replay and checked against the anchor."""
        model, online_guard = self.model, self.model.online_guard
        if online_guard.enabled:
            snap = snapshot(model)
            last = self.steps[-1].window
            own = last.cut(self._image_t, self.clicks, None, self.drawn_box)
            own_target = torch.as_tensor(last.crop(final, mask=True), dtype=torch.float32, device=model.device)
            before_own = online_guard.own_score(model, own.image, own.clicks, own_target, box=own.box)
            before_replay = online_guard.replay_score(model)
        post_interaction_update(model, first_view.image, first_c, target, np.random.default_rng(self.seed), box=first_view.box)
        if not online_guard.enabled:
            return
        if not online_guard.check_post(model, before_replay, before_own, own.image, own.clicks, own_target,
                                case_id=self.case_id, box=own.box):
            restore(model, snap)
            self.rejected.append(online_guard.events[-1])
        else:
            online_guard.project(model)
        target_t = torch.as_tensor(target, dtype=torch.float32, device=model.device)
        online_guard.remember(first_view.image, target_t, first_c, first_view.box)
        if not online_guard.rolling_check(model, self.case_id):
            self.rejected.append(online_guard.events[-1])

    def record(self) -> dict:
        """What happened, for logs and evaluation (no image data)."""
        return {
            "case_id": self.case_id,
            "clicks": [s.click.as_dict() for s in self.steps if s.click is not None],
            "box": None if self.drawn_box is None else self.drawn_box.as_dict(),
            "predict_ms": [round(s.predict_ms, 3) for s in self.steps],
            "update_ms": [round(s.update_ms, 3) for s in self.steps],
            "post_ms": round(self.post_ms, 3),
            "windows": [_window_record(s.window) for s in self.steps],
            "post_window": _window_record(self.post_window),
            "guard_rejected": len(self.rejected),
            "guard_reasons": [r["reason"] for r in self.rejected],
        }


def _window_record(window: FocusWindow | None) -> dict | None:
    return None if window is None else {"start": list(window.start), "size": list(window.size)}
