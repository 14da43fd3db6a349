"""Pre-training the base interactive model with iterative simulated clicks (RITM-style).

Each step takes a batch of objects, places a first positive click, lets the model predict up to
`max_extra_clicks` times without gradient (each time adding a random click in the largest error
region and feeding the prediction back as the previous mask), then trains on DF + beta * CCG for
the last state. Training with the previous mask and correction clicks is what makes the model
answer to clicks, which online adaptation later builds on.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from fedpoint.shared.clicker import Clicker
from fedpoint.shared.clicks import Click, encode_clicks
from fedpoint.shared.config import ModelConfig
from fedpoint.shared.losses import interaction_loss
from fedpoint.shared.metrics import click_metrics, dice
from fedpoint.shared.model import build_model, save_base


@dataclass
class PretrainConfig:
    # The packaged base uses the MNI152 template alone. Adding "colin27-aal" (116 compact AAL
    # regions; Debian's mricron-data) gives a much stronger base, but then the norm adapter's
    # default online lr over-corrects on mildly shifted images: see docs/engine.md.
    datasets: tuple[str, ...] = ("mni152",)
    size: int = 128
    steps: int = 1500
    batch: int = 8
    lr: float = 1e-3
    max_extra_clicks: int = 4
    ccg_beta: float = 200.0
    ccg_sigma: float = 3.0
    val_every: int = 10          # every n-th sample is held out for validation
    seed: int = 0
    threads: int | None = None


def load_training_samples(cfg: PretrainConfig, data_dir: Path | None = None):
    """Slices along all three axes, objects split into connected components for variety; about
    120 slices per dataset and axis, spread over its objects (40 each for MNI's three masks)."""
    from fedpoint.data import load_dataset, make_samples

    samples = []
    for name in cfg.datasets:
        dataset = load_dataset(name, data_dir=data_dir)
        per_object = max(4, 120 // sum(len(c.objects) for c in dataset.cases))
        for axis in range(3):
            samples += make_samples(dataset, spatial_dims=2, size=(cfg.size, cfg.size), axis=axis, min_voxels=40,
                                    split_components=True, max_per_object=per_object, seed=cfg.seed)
    train = [s for i, s in enumerate(samples) if i % cfg.val_every]
    val = [s for i, s in enumerate(samples) if i % cfg.val_every == 0]
    return train, val


def augment(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Flips, 90-degree turns and a mild gamma: the shapes vary, the modality stays MR."""
    k = int(rng.integers(4))
    image, mask = np.rot90(image, k, axes=(1, 2)), np.rot90(mask, k)
    if rng.random() < 0.5:
        image, mask = image[:, ::-1], mask[::-1]
    image = np.clip(image, 0, None) ** float(rng.uniform(0.7, 1.4))
    return np.ascontiguousarray(image, dtype=np.float32), np.ascontiguousarray(mask)


def _inputs(images: torch.Tensor, clicks: list[list[Click]], prev: torch.Tensor, sigma: float) -> torch.Tensor:
    spatial = tuple(images.shape[2:])
    maps = torch.from_numpy(np.stack([encode_clicks(c, spatial, sigma) for c in clicks]))
    return torch.cat([images, maps, prev], dim=1)


def train_step(net, optimizer, batch, cfg: PretrainConfig, model_cfg: ModelConfig, rng: np.random.Generator) -> float:
    images = torch.from_numpy(np.stack([b[0] for b in batch]))
    masks = [b[1] for b in batch]
    clickers = [Clicker(m, mode="random", seed=int(rng.integers(2**31))) for m in masks]
    clicks = [[c.next_click(None)] for c in clickers]
    prev = torch.zeros((len(batch), 1, *images.shape[2:]))
    for _ in range(int(rng.integers(0, cfg.max_extra_clicks + 1))):
        with torch.no_grad():
            prev = (net(_inputs(images, clicks, prev, model_cfg.click_sigma)) > 0).float()
        for i, clicker in enumerate(clickers):
            nxt = clicker.next_click(prev[i, 0].numpy().astype(bool))
            if nxt is not None:
                clicks[i].append(nxt)
    logits = net(_inputs(images, clicks, prev, model_cfg.click_sigma))
    target = torch.from_numpy(np.stack(masks)[:, None].astype(np.float32))
    loss = sum(interaction_loss(logits[i:i + 1], target[i:i + 1], clicks[i], cfg.ccg_beta, cfg.ccg_sigma)
               for i in range(len(batch))) / len(batch)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return float(loss.detach())


def validate(net, samples: Sequence, model_cfg: ModelConfig, clicks: int = 10) -> dict[str, float]:
    """Frozen evaluation with the deterministic simulated user."""
    rows = []
    for s in samples:
        image = torch.from_numpy(s.image)[None]
        clicker, chosen, prev, dices = Clicker(s.mask), [], torch.zeros((1, 1, *s.mask.shape)), []
        for _ in range(clicks):
            click = clicker.next_click(prev[0, 0].numpy().astype(bool) if chosen else None)
            if click is None:
                break
            chosen.append(click)
            with torch.no_grad():
                prev = (net(_inputs(image, [chosen], prev, model_cfg.click_sigma)) > 0).float()
            dices.append(dice(prev[0, 0].numpy().astype(bool), s.mask))
        rows.append(click_metrics(dices))
    return {k: round(float(np.mean([r[k] for r in rows])), 4) for k in ("dice1", "dice3", "dice5", "dice10", "noc85", "noc90", "nof")}


def pretrain(cfg: PretrainConfig, out: Path, model_cfg: ModelConfig | None = None, data_dir: Path | None = None,
             on_step: Callable[[int, float], None] | None = None) -> dict:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    model_cfg = model_cfg or ModelConfig()
    train, val = load_training_samples(cfg, data_dir)
    net = build_model(model_cfg)
    optimizer = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.steps, eta_min=cfg.lr * 0.05)
    t0 = time.perf_counter()
    losses = []
    for step in range(1, cfg.steps + 1):
        batch = [augment(s.image, s.mask, rng) for s in (train[int(i)] for i in rng.integers(len(train), size=cfg.batch))]
        losses.append(train_step(net, optimizer, batch, cfg, model_cfg, rng))
        scheduler.step()
        if on_step is not None:
            on_step(step, float(np.mean(losses[-20:])))
    net.eval()
    metrics = validate(net, val[:60], model_cfg)
    card = {
        "provenance": {
            "datasets": list(cfg.datasets),
            "train_objects": len(train),
            "val_objects": min(len(val), 60),
            "note": "2D slices (all three axes) of the listed built-in datasets (mni152: the MNI152 2009a template's "
                    "brain, grey- and white-matter masks shipped by nilearn; colin27-aal: the Colin27 brain with its "
                    "116 AAL regions from Debian's mricron-data); objects split into connected components; every 10th "
                    "sample held out for validation.",
        },
        "training": {**cfg.__dict__, "datasets": list(cfg.datasets), "seconds": round(time.perf_counter() - t0, 1),
                     "final_loss": round(float(np.mean(losses[-50:])), 4)},
        "validation": metrics,
        "reproduce": f"fedpoint pretrain --datasets {','.join(cfg.datasets)} --steps {cfg.steps} --size {cfg.size} --batch {cfg.batch} --seed {cfg.seed}"
                     + (f" --threads {cfg.threads}" if cfg.threads else "") + f" --out {Path(out).name}",
    }
    save_base(net, model_cfg, Path(out), card)
    return card
