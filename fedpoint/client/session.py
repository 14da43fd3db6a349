"""One image (or volume) being annotated by one person: click, undo, accept."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from fedpoint.client.model import SiteModel
from fedpoint.client.online import mid_interaction_update, post_interaction_update
from fedpoint.shared.clicks import Click, check_point


class InputError(ValueError):
    """Bad input from a user or a caller; the message says what is wrong."""


def check_image(image: np.ndarray, spatial_dims: int, channels: int) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim == spatial_dims:  # a grey image without its channel axis
        image = image[None]
    if image.ndim != spatial_dims + 1:
        raise InputError(f"expected a {spatial_dims}D image of shape (channels, *spatial), got shape {image.shape}")
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
    click: Click
    mask: torch.Tensor          # the mask shown after this click, (1, 1, *spatial)
    input_mask: torch.Tensor | None  # the previous mask the model saw when predicting it
    predict_ms: float
    update_ms: float


@dataclass
class AnnotationSession:
    """Interactive annotation of one image with optional online updates on each click and on accept."""

    model: SiteModel
    image: np.ndarray
    case_id: str = ""
    on_accept: Callable[["AnnotationSession", np.ndarray], None] | None = None
    seed: int = 0
    steps: list[Step] = field(default_factory=list)
    accepted: np.ndarray | None = None
    post_ms: float = 0.0

    def __post_init__(self) -> None:
        cfg = self.model.model_cfg
        self.image = check_image(self.image, cfg.spatial_dims, cfg.image_channels)
        self.spatial_shape = tuple(self.image.shape[1:])
        self._image_t = self.model.image_tensor(self.image)

    # --------------------------------------------------------------------------- interaction
    @property
    def clicks(self) -> list[Click]:
        return [s.click for s in self.steps]

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
        before = self.clicks
        prev = self.steps[-1].mask if self.steps else None
        clicks = [*before, click]
        update_ms = 0.0
        if self.model.adapt_cfg.uses_mid and self.steps and self.model.adapt_cfg.mid_steps:
            pseudo = self.model.predict(self._image_t, clicks, prev)
            t1 = time.perf_counter()
            mid_interaction_update(self.model, self._image_t, before, self.steps[-1].input_mask, click, pseudo)
            update_ms = (time.perf_counter() - t1) * 1e3
        t2 = time.perf_counter()
        mask = self.model.predict(self._image_t, clicks, prev)
        predict_ms = (time.perf_counter() - t2) * 1e3
        self.steps.append(Step(click, mask, prev, predict_ms, update_ms))
        return self.mask

    def undo(self) -> np.ndarray:
        """Remove the last click; the mask goes back to what it was before it (updates stay)."""
        if self.accepted is not None:
            raise InputError("this annotation was already accepted")
        if not self.steps:
            raise InputError("there is no click to undo")
        self.steps.pop()
        return self.mask

    def accept(self, mask: np.ndarray | None = None) -> np.ndarray:
        """Accept the current mask (or a mask the person edited) as final; runs the post update."""
        if self.accepted is not None:
            raise InputError("this annotation was already accepted")
        final = check_mask(self.mask if mask is None else mask, self.spatial_shape)
        cfg = self.model.adapt_cfg
        if cfg.uses_post and self.steps and cfg.post_steps:
            t0 = time.perf_counter()
            post_interaction_update(self.model, self._image_t, self.steps[0].click, final, np.random.default_rng(self.seed))
            self.post_ms = (time.perf_counter() - t0) * 1e3
        self.accepted = final
        if self.on_accept is not None:
            self.on_accept(self, final)
        return final

    def record(self) -> dict:
        """What happened, for logs and evaluation (no image data)."""
        return {
            "case_id": self.case_id,
            "clicks": [s.click.as_dict() for s in self.steps],
            "predict_ms": [round(s.predict_ms, 3) for s in self.steps],
            "update_ms": [round(s.update_ms, 3) for s in self.steps],
            "post_ms": round(self.post_ms, 3),
        }
