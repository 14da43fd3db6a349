"""The model a site clicks with: frozen base + adapter + optimizer, safe to share between threads."""

from __future__ import annotations

import threading
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from fedpoint.client.online_guard import OnlineGuard
from fedpoint.shared.adapters import Adapter, State
from fedpoint.shared.clicks import Box, Click
from fedpoint.shared.config import AdaptationConfig, ModelConfig
from fedpoint.shared.focus import (FocusConfig, FocusWindow, box_window, choose_scale, crop, enforce_clicks,
                                   first_click_window, paste, scale_score, zoom_window)
from fedpoint.shared.inputs import build_inputs


class SiteModel:
    """Predicts masks from an image, clicks and the previous mask, and takes adapter steps.

    `lock` guards the weights: a prediction never sees a half-swapped adapter, and a background
    episode trains on its own copy and swaps in under the lock.

    `focus` says where the network looks (`fedpoint.shared.focus`); the caller (the annotation
    session, an episode) picks the window with `window_for` and passes it to `logits` / `predict`.
    """

    def __init__(self, adapter: Adapter, model_cfg: ModelConfig, adapt_cfg: AdaptationConfig | None = None,
                 device: str | torch.device = "cpu", focus: FocusConfig | None = None):
        self.adapter = adapter
        self.model_cfg = model_cfg
        self.adapt_cfg = adapt_cfg or AdaptationConfig()
        self.focus = (focus or FocusConfig()).resolve(model_cfg)
        self.device = torch.device(device)
        self.net = adapter.net.to(self.device).eval()  # instance norm: eval and train behave alike
        self.optimizer = torch.optim.Adam(adapter.trainable_parameters(), lr=self.lr)
        self.online_guard = OnlineGuard.from_config(self.adapt_cfg)
        self.lock = threading.RLock()
        self.online_guard.set_anchor(self)
        self.version = 0
        self.steps = 0

    @property
    def lr(self) -> float:
        return self.adapt_cfg.lr or self.adapter.rules.lr

    # ------------------------------------------------------------------------------ inputs
    def image_tensor(self, image: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.ascontiguousarray(image), dtype=torch.float32, device=self.device)[None]

    def _inputs(self, image_t: torch.Tensor, clicks: Sequence[Click], prev: torch.Tensor | None,
                window: FocusWindow | None = None, box: Box | None = None) -> torch.Tensor:
        if window is not None:  # image and previous mask cut out and resampled, prompts moved into the window
            image_t = crop(image_t, window)
            clicks = window.clicks(clicks)
            box = window.box(box)
            if prev is not None:
                prev = crop(prev.reshape(1, 1, *prev.shape[-window.ndim:]), window, mask=True)
        return build_inputs(image_t, [clicks], None if prev is None else prev.float(), self.model_cfg, [box])

    # ------------------------------------------------------------------------------ focus
    def window_for(self, clicks: Sequence[Click], prev_mask, image_shape: Sequence[int],
                   spacing: Sequence[float] | None = None, box: Box | None = None) -> FocusWindow:
        """The session's rule: a box and no mask yet -> the box's zoom window; no mask yet (the first
        click, or only background so far) -> a `context` window around the clicks; else the zoom
        window of the mask, every click and the box. `spacing` (mm per axis) makes the windows cubes
        in millimetres (`fedpoint.shared.focus`)."""
        f = self.focus
        if box is not None:
            return box_window(box, prev_mask, clicks, image_shape, self.model_cfg, f.expand, f.min_size, spacing)
        if prev_mask is None or not bool(prev_mask.any()):
            context = f.context_for(spacing)
            if len(clicks) == 1:
                return first_click_window(clicks[0].point, image_shape, context, self.model_cfg, spacing)
            return zoom_window(None, clicks, image_shape, self.model_cfg, f.expand, context, spacing)
        return zoom_window(prev_mask, clicks, image_shape, self.model_cfg, f.expand, f.min_size, spacing)

    def first_click(self, image_t: torch.Tensor, click: Click, spacing: Sequence[float] | None = None
                    ) -> tuple[FocusWindow, torch.Tensor]:
        """The first click of a session without a box: the structure's scale is unknown, so the
        network predicts in a window of each side `focus.scales` names (x the context) and
        `focus.rule` keeps one by its own prediction (`fedpoint.shared.focus.choose_scale`).
        Returns (window, logits on its grid)."""
        f, shape = self.focus, tuple(image_t.shape[2:])
        base = f.context_for(spacing)
        sides = sorted({max(1, int(round(base * m))) for m in f.scales})
        windows, outs = [], []
        for side in sides:
            window = first_click_window(click.point, shape, side, self.model_cfg, spacing)
            if windows and window == windows[-1]:  # the image is smaller than this side: the same window
                continue
            windows.append(window)
            outs.append(self.logits(image_t, [click], None, window=window))
        scores = [scale_score(o, w, click, shape, f.rule) for o, w in zip(outs, windows)] if len(windows) > 1 else [1.0]
        best = choose_scale(scores, f.rule)
        return windows[best], outs[best]

    def _pad(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
        m = self.model_cfg.size_multiple
        spatial = tuple(x.shape[2:])
        extra = [(-n) % m for n in spatial]
        if not any(extra):
            return x, spatial
        pad = []
        for e in reversed(extra):  # F.pad lists the last axis first
            pad += [0, e]
        return F.pad(x, pad), spatial

    # ------------------------------------------------------------------------------ forward
    def logits(self, image_t: torch.Tensor, clicks: Sequence[Click], prev: torch.Tensor | None = None,
               grad: bool = False, window: FocusWindow | None = None, box: Box | None = None) -> torch.Tensor:
        """Logits for one image tensor of shape (1, C, *spatial); clicks, the box and `prev` (a
        full-size mask) in the image's coordinates. Without a window: on the whole image, shape (1, 1, *spatial).
        With one: on the window's grid, shape (1, 1, *window.out_size) (losses are taken there;
        `fedpoint.shared.focus.paste` maps them back)."""
        x, spatial = self._pad(self._inputs(image_t, clicks, prev, window, box))
        with torch.set_grad_enabled(grad):
            out = self.net(x)
        return out[(slice(None), slice(None), *(slice(0, n) for n in spatial))]

    def predict(self, image_t: torch.Tensor, clicks: Sequence[Click], prev: torch.Tensor | None = None,
                window: FocusWindow | None = None, box: Box | None = None) -> torch.Tensor:
        """A binary mask (float 0/1 tensor, shape (1, 1, *spatial) of the whole image), no gradient;
        with a window, predicted in it and pasted back (background outside)."""
        with self.lock, torch.no_grad():
            out = self.logits(image_t, clicks, prev, window=window, box=box) > 0
        if window is not None:
            out = paste(out, window, tuple(image_t.shape[2:]))
        return out.float()

    def predict_focused(self, image_t: torch.Tensor, clicks: Sequence[Click],
                        prev: torch.Tensor | None = None, box: Box | None = None) -> tuple[torch.Tensor, FocusWindow]:
        """What a session shows for `clicks` (and a box), without updates: the window `window_for`
        picks, the prediction in it pasted back, and the click rule. Returns (mask (1, 1, *spatial), window)."""
        spatial = tuple(image_t.shape[2:])
        window = self.window_for(clicks, None if prev is None else prev[0, 0] > 0, spatial, box=box)
        mask = self.predict(image_t, clicks, prev, window, box)
        return enforce_clicks(mask, clicks), window

    def replay(self, image: np.ndarray, mask: np.ndarray, clicks: int) -> list[float]:
        """Dice after each click of the deterministic simulated user on one image against `mask`,
        predicting as a session shows it (focus windows, click rule), no updates; a user who stops
        at a perfect mask fills the budget (`simulate(fill=True)`)."""
        from fedpoint.shared.simulated_user import simulate

        image_t = self.image_tensor(image)
        prev = None

        def predict(chosen):
            nonlocal prev
            prev, _ = self.predict_focused(image_t, chosen, prev)
            return prev[0, 0].bool().cpu().numpy()

        return [step.dice for step in simulate(predict, mask, clicks, fill=True)]

    # ------------------------------------------------------------------------------ updates
    def step(self, loss: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.steps += 1

    def load_optimizer_state(self, state: dict | None) -> bool:
        """Continue with a saved Adam state (saved with an adapter version of the same kind); a
        state that does not fit this adapter is ignored and the optimizer starts fresh."""
        if not state:
            return False
        try:
            with self.lock:
                self.optimizer.load_state_dict(state)
                for group in self.optimizer.param_groups:
                    group["lr"] = self.lr  # the learning rate is configuration, not state
        except (ValueError, KeyError, RuntimeError):
            self.optimizer = torch.optim.Adam(self.adapter.trainable_parameters(), lr=self.lr)
            return False
        self.online_guard.set_anchor(self)
        return True

    def swap_state(self, state: State, reset_optimizer: bool = True) -> None:
        """Replace the adapter weights atomically (an episode's best epoch, or a received bank)."""
        with self.lock:
            self.adapter.load_state(state)
            if reset_optimizer:
                self.optimizer = torch.optim.Adam(self.adapter.trainable_parameters(), lr=self.lr)
            self.online_guard.set_anchor(self)  # what the guard validated against has changed
            self.version += 1
