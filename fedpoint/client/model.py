"""The model a site clicks with: frozen base + adapter + optimizer, safe to share between threads."""

from __future__ import annotations

import threading
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from fedpoint.shared.adapters import Adapter, State
from fedpoint.shared.clicks import Click, encode_clicks
from fedpoint.shared.config import AdaptationConfig, ModelConfig


class SiteModel:
    """Predicts masks from an image, clicks and the previous mask, and takes adapter steps.

    `lock` guards the weights: a prediction never sees a half-swapped adapter, and a background
    episode trains on its own copy and swaps in under the lock.
    """

    def __init__(self, adapter: Adapter, model_cfg: ModelConfig, adapt_cfg: AdaptationConfig | None = None,
                 device: str | torch.device = "cpu"):
        self.adapter = adapter
        self.model_cfg = model_cfg
        self.adapt_cfg = adapt_cfg or AdaptationConfig()
        self.device = torch.device(device)
        self.net = adapter.net.to(self.device).eval()  # instance norm: eval and train behave alike
        self.optimizer = torch.optim.Adam(adapter.trainable_parameters(), lr=self.lr)
        self.lock = threading.RLock()
        self.version = 0
        self.steps = 0

    @property
    def lr(self) -> float:
        return self.adapt_cfg.lr or self.adapter.default_lr

    # ------------------------------------------------------------------------------ inputs
    def image_tensor(self, image: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.ascontiguousarray(image), dtype=torch.float32, device=self.device)[None]

    def _inputs(self, image_t: torch.Tensor, clicks: Sequence[Click], prev: torch.Tensor | None) -> torch.Tensor:
        spatial = tuple(image_t.shape[2:])
        maps = torch.from_numpy(encode_clicks(clicks, spatial, self.model_cfg.click_sigma)).to(self.device)[None]
        prev = torch.zeros((1, 1, *spatial), device=self.device) if prev is None else prev.reshape(1, 1, *spatial).float()
        return torch.cat([image_t, maps, prev], dim=1)

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
               grad: bool = False) -> torch.Tensor:
        """Logits of shape (1, 1, *spatial) for one image tensor of shape (1, C, *spatial)."""
        x, spatial = self._pad(self._inputs(image_t, clicks, prev))
        with torch.set_grad_enabled(grad):
            out = self.net(x)
        return out[(slice(None), slice(None), *(slice(0, n) for n in spatial))]

    def predict(self, image_t: torch.Tensor, clicks: Sequence[Click], prev: torch.Tensor | None = None) -> torch.Tensor:
        """A binary mask (float 0/1 tensor, shape (1, 1, *spatial)), no gradient."""
        with self.lock, torch.no_grad():
            return (self.logits(image_t, clicks, prev) > 0).float()

    # ------------------------------------------------------------------------------ updates
    def step(self, loss: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.steps += 1

    def swap_state(self, state: State, reset_optimizer: bool = True) -> None:
        """Replace the adapter weights atomically (an episode's best epoch, or a received bank)."""
        with self.lock:
            self.adapter.load_state(state)
            if reset_optimizer:
                self.optimizer = torch.optim.Adam(self.adapter.trainable_parameters(), lr=self.lr)
            self.version += 1
