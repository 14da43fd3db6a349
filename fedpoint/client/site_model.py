"""The model a site clicks with: frozen base + adapter + optimizer, safe to share between threads.

`SiteModelFactory` is the one place a `SiteModel` is built: the engine's task slots (from a site
store's adapter versions), the service, a federation round (from a bank), an episode's trial copy.
"""

from __future__ import annotations

import copy
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from fedpoint.client.guards import OnlineGuard
from fedpoint.shared.adapters import Adapter, State, load_adapter, make_adapter
from fedpoint.shared.clicks import Box, Click
from fedpoint.shared.config import AdaptationConfig, AdapterConfig, ModelConfig
from fedpoint.shared.device import DEFAULT_DEVICE
from fedpoint.shared.focus import Focus, FocusConfig, FocusWindow, WindowView, choose_scale, enforce_clicks, scale_score
from fedpoint.shared.inputs import build_inputs

if TYPE_CHECKING:
    from torch import nn

    from fedpoint.client.site_store import SiteStore

_log = logging.getLogger("fedpoint.store")


class SiteModel:
    """Predicts masks from an image, clicks and the previous mask, and takes adapter steps.

    `lock` guards the weights: a prediction never sees a half-swapped adapter, and a background
    episode trains on its own copy and swaps in under the lock.

    `focus` says where the network looks (`fedpoint.shared.focus.Focus`): a caller asks `look` for
    the window and what the network sees in it, predicts with `logits_in` and pastes back with the view.
    """

    def __init__(self, adapter: Adapter, model_cfg: ModelConfig, adapt_cfg: AdaptationConfig | None = None,
                 device: str | torch.device = DEFAULT_DEVICE, focus: FocusConfig | None = None):
        self.adapter = adapter
        self.model_cfg = model_cfg
        self.adapt_cfg = adapt_cfg or AdaptationConfig()
        self.focus = Focus.of(focus, model_cfg)
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
        return self.adapter.rules.lr_for(self.adapt_cfg.lr)

    def copy(self, lr: float | None = None) -> "SiteModel":
        """A trial copy (an episode trains on it; the regression guard scores a candidate on it):
        its own adapter and optimizer, the same base, configs and focus; `lr` overrides the rate."""
        with self.lock:
            adapter = copy.deepcopy(self.adapter)
        adaptation = self.adapt_cfg if lr is None else self.adapt_cfg.model_copy(update={"lr": lr})
        return SiteModelFactory(self.net, self.model_cfg, adaptation, self.device, self.focus.config).wrap(adapter)

    # ------------------------------------------------------------------------------ inputs
    def image_tensor(self, image: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.ascontiguousarray(image), dtype=torch.float32, device=self.device)[None]

    # ------------------------------------------------------------------------------ focus
    def look(self, image_t: torch.Tensor, clicks: Sequence[Click], prev: torch.Tensor | None = None,
             box: Box | None = None, spacing: Sequence[float] | None = None) -> WindowView:
        """Where the network looks for these prompts (the `focus` rule) and what it sees there:
        clicks, the box and `prev` (a full-size mask, or None) in the image's coordinates."""
        spatial = tuple(image_t.shape[2:])
        seen = None if prev is None else prev.reshape(prev.shape[-len(spatial):]) > 0
        return self.focus.window(clicks, seen, spatial, spacing, box).cut(image_t, clicks, prev, box)

    def first_click(self, image_t: torch.Tensor, click: Click, spacing: Sequence[float] | None = None
                    ) -> tuple[WindowView, torch.Tensor]:
        """The first click of a session without a box: the structure's scale is unknown, so the
        network predicts in each of `focus.first_click_windows` and `focus.config.rule` keeps one
        by its own prediction (`fedpoint.shared.focus.choose_scale`). Returns (view, its logits)."""
        shape, rule = tuple(image_t.shape[2:]), self.focus.config.rule
        views = [w.cut(image_t, [click]) for w in self.focus.first_click_windows(click.point, shape, spacing)]
        outs = [self.logits_in(v) for v in views]
        scores = [scale_score(o, v.window, click, shape, rule) for o, v in zip(outs, views)] if len(views) > 1 else [1.0]
        best = choose_scale(scores, rule)
        return views[best], outs[best]

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
               grad: bool = False, box: Box | None = None) -> torch.Tensor:
        """Logits of shape (1, 1, *spatial) for one image tensor of shape (1, C, *spatial), on the
        grid it is given (a window's, from `look`: the one way to predict in a window); clicks, the
        box and `prev` (float 0/1) in that grid's coordinates."""
        inputs = build_inputs(image_t, [clicks], None if prev is None else prev.float(), self.model_cfg, [box])
        x, spatial = self._pad(inputs)
        with torch.set_grad_enabled(grad):
            out = self.net(x)
        return out[(slice(None), slice(None), *(slice(0, n) for n in spatial))]

    def logits_in(self, view: WindowView, grad: bool = False) -> torch.Tensor:
        """Logits on a window's grid, shape (1, 1, *view.window.out_size) (losses are taken there;
        `view.paste` maps a prediction back)."""
        return self.logits(view.image, view.clicks, view.prev, grad, view.box)

    def predict(self, image_t: torch.Tensor, clicks: Sequence[Click], prev: torch.Tensor | None = None,
                box: Box | None = None) -> torch.Tensor:
        """A binary mask (float 0/1 tensor, shape (1, 1, *spatial)) on the grid given, no gradient."""
        with self.lock, torch.no_grad():
            return (self.logits(image_t, clicks, prev, box=box) > 0).float()

    def predict_focused(self, image_t: torch.Tensor, clicks: Sequence[Click],
                        prev: torch.Tensor | None = None, box: Box | None = None,
                        spacing: Sequence[float] | None = None) -> tuple[torch.Tensor, FocusWindow]:
        """What a session shows for `clicks` (and a box) after its first prediction, without
        updates: the window `look` picks, the prediction in it pasted back (background outside),
        and the click rule. Returns (mask (1, 1, *spatial) float 0/1, window)."""
        view = self.look(image_t, clicks, prev, box, spacing)
        with self.lock, torch.no_grad():
            out = self.logits_in(view) > 0
        return enforce_clicks(view.paste(out).float(), clicks), view.window

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


@dataclass
class SiteModelFactory:
    """The composition root of `SiteModel`: a frozen base opened once (`net`, `model_cfg`) and what
    every model built on it shares. `wrap` puts an adapter on it; calling the factory opens a
    task's model from its store (`fedpoint.client.engine.SiteEngine` calls it per task)."""

    net: "nn.Module"
    model_cfg: ModelConfig
    adaptation: AdaptationConfig
    device: str | torch.device = DEFAULT_DEVICE
    focus: FocusConfig | None = None
    adapter: AdapterConfig | str = "norm"  # the kind a task with no usable saved version starts with

    def wrap(self, adapter: Adapter, adaptation: AdaptationConfig | None = None) -> SiteModel:
        return SiteModel(adapter, self.model_cfg, adaptation or self.adaptation, self.device, self.focus)

    def __call__(self, task: str, task_store: "SiteStore | None", adapter_dir: str | Path | None = None) -> SiteModel:
        """A task's model: `adapter_dir` when given (an exported bank, say: it must load), else the
        newest version of the task's store that loads (a damaged one is logged and skipped), else a
        fresh adapter; the store's Adam state continues with a stored version."""
        if adapter_dir is not None:  # a saved adapter brings its own kind and settings (LoRA rank 2, say)
            return self.wrap(load_adapter(self.net, adapter_dir))
        if task_store is None:
            return self.fresh()
        model = self.wrap(self._stored_adapter(task_store))
        model.load_optimizer_state(task_store.latest_optimizer_state(model.adapter.kind))
        return model

    def fresh(self, adaptation: AdaptationConfig | None = None) -> SiteModel:
        """A fresh adapter of the configured kind on the base."""
        return self.wrap(make_adapter(self.net, self.adapter), adaptation)

    def _stored_adapter(self, task_store: "SiteStore") -> Adapter:
        tried: list[int] = []
        while (resume := task_store.usable_adapter(skip=tuple(tried))) is not None:
            try:
                return load_adapter(self.net, resume)
            except Exception as err:  # noqa: BLE001 - passed the file checks but does not load (shapes, kind...)
                version = int(resume.name[1:])
                task_store.log("adapter-skipped", version=version, reason=f"adapters/{resume.name}: {type(err).__name__}: {err}")
                _log.warning("adapter version %d (adapters/%s) does not load (%s); trying the previous one", version,
                             resume.name, err)
                tried.append(version)
        if tried or task_store.adapter_versions():
            kind = self.adapter if isinstance(self.adapter, str) else self.adapter.kind
            _log.warning("no adapter version in the store loads; starting from a fresh %s adapter", kind)
        return make_adapter(self.net, self.adapter)
