"""Pre-training the base interactive model with iterative simulated clicks (RITM-style).

Each step draws a batch of objects from the object generator (`objects.py`: atlas regions,
threshold masks, superpixel pseudo-objects of unlabelled images, synthetic shapes; crops in the
first-click and zoom regimes of the focus crop), predicts from one positive click with gradient,
then lets the model answer up to `max_clicks - 1` further simulated clicks (each in the largest
error region, the prediction fed back as the previous mask) and takes a second loss on the last
state. Loss: Dice-Focal + beta * click-centred Gaussian, on the first click's prediction and on the last one.

A run writes `<out>.ckpt` every `checkpoint_minutes` (and on Ctrl-C) holding the weights, the
optimizer, the scheduler and every random state, so `resume=True` continues bit-identically.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from fedpoint.shared.clicks import Click
from fedpoint.shared.config import ModelConfig
from fedpoint.shared.fileio import write_atomic_via
from fedpoint.shared.inputs import build_inputs
from fedpoint.shared.losses import interaction_loss
from fedpoint.shared.metrics import click_metrics, dice
from fedpoint.shared.model import build_model, save_base
from fedpoint.shared.simulated_user import SimulatedUser, simulate, tight_box
from fedpoint.simulations.objects import ObjectSampler, SamplerConfig
from fedpoint.simulations.pretrain_config import BASE3D_MODEL_FIELDS, BASE_MODEL_FIELDS, METRIC_KEYS, PretrainConfig

BASE_MODEL = ModelConfig(**BASE_MODEL_FIELDS)
BASE3D_MODEL = ModelConfig(**BASE3D_MODEL_FIELDS)


def base_model_for(spatial_dims: int) -> ModelConfig:
    return BASE3D_MODEL if spatial_dims == 3 else BASE_MODEL


def sampler_config(cfg: PretrainConfig, model_cfg: ModelConfig, **overrides) -> SamplerConfig:
    fields = dict(size=model_cfg.input_size, synthetic=cfg.synthetic, spatial_dims=model_cfg.spatial_dims,
                  context_range=tuple(cfg.context_range), min_pixels=cfg.min_voxels, spacing_mm=cfg.spacing_mm,
                  p_box=cfg.p_box if model_cfg.takes_box else 0.0)
    return SamplerConfig(**(fields | overrides))

def training_images(cfg: PretrainConfig, data_dir: Path | None = None, split: str = "train"):
    from fedpoint.data.training import load_training

    images = load_training(data_dir, split=split, names=cfg.sources or None)
    if cfg.spatial_dims == 3:
        images = [im for im in images if np.ndim(im.labels) == 3]
    if not images and split == "train":
        raise ValueError(f"no {cfg.spatial_dims}D training images: run `fedpoint data prepare --training` first")
    return images


def _batch_loss(logits, target, clicks, cfg: PretrainConfig) -> torch.Tensor:
    return sum(interaction_loss(logits[i:i + 1], target[i:i + 1], clicks[i], cfg.ccg_beta, cfg.ccg_sigma)
               for i in range(len(clicks))) / len(clicks)


def extra_clicks(cfg: PretrainConfig, rng: np.random.Generator) -> int:
    p = cfg.click_decay ** np.arange(cfg.max_clicks)
    return int(rng.choice(cfg.max_clicks, p=p / p.sum()))


def train_step(net, optimizer, sampler: ObjectSampler, cfg: PretrainConfig, model_cfg: ModelConfig,
               rng: np.random.Generator) -> float:
    draws = sampler.batch(cfg.batch)
    images = torch.from_numpy(np.stack([d.image for d in draws]))
    target = torch.from_numpy(np.stack([d.mask for d in draws])[:, None].astype(np.float32))
    # Half the simulated users click the deepest point of an error, half anywhere in it. A draw's
    # first interaction is its box (the box stays an input for the whole interaction) or the
    # sampler's click. The batch is predicted at once: the users answer in lockstep.
    users = [SimulatedUser(d.mask, "deepest" if rng.random() < 0.5 else "random",
                           first=None if d.box is not None else Click(d.click, True), rng=rng) for d in draws]
    boxes = [d.box for d in draws]
    for user, box in zip(users, boxes):
        if box is None:
            user.respond()
    clicks = [user.clicks for user in users]

    def inputs(prev):
        return build_inputs(images, clicks, prev, model_cfg, boxes)

    logits = net(inputs(None))
    loss = _batch_loss(logits, target, clicks, cfg)
    k = extra_clicks(cfg, rng)
    if k:
        prev = (logits.detach() > 0).float()
        for j in range(k):
            for i, user in enumerate(users):
                user.respond(prev[i, 0].numpy().astype(bool))
            if j < k - 1:
                with torch.no_grad():
                    prev = (net(inputs(prev)) > 0).float()
        logits = net(inputs(prev))
        loss = loss + _batch_loss(logits, target, clicks, cfg)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(net.parameters(), 5.0)
    optimizer.step()
    return float(loss.detach())


def validation_objects(images, size: int, count: int, seed: int = 12345, sampler_cfg: SamplerConfig | None = None):
    """A fixed set of objects from images never trained on (the dev split), both crop regimes."""
    if not images:
        return []
    base = sampler_cfg or SamplerConfig(size=size)
    cfg = SamplerConfig(**(asdict(base) | dict(size=size, synthetic=0.0, p_invert=0, p_bias=0, p_noise=0, p_blur=0)))
    return ObjectSampler(images, cfg, seed=seed).batch(count)


def warm_start(net, model_cfg: ModelConfig, spec: str) -> dict:
    """Load a base's weights into `net` where names and shapes match. The input convolution is
    mapped by role (`ModelConfig.inputs`): a role both networks take keeps its weights, a role the
    old base lacked (a new prompt channel) starts at zero, so the warm-started network predicts
    exactly what the old base did until that channel is used. Returns the old base's card."""
    from fedpoint.shared.model import load_base

    old, old_cfg, card = load_base(spec)
    if old_cfg.spatial_dims != model_cfg.spatial_dims or old_cfg.arch != model_cfg.arch:
        raise ValueError(f"--init {spec}: a {old_cfg.spatial_dims}D {old_cfg.arch} cannot start a "
                         f"{model_cfg.spatial_dims}D {model_cfg.arch}")
    old_state, new_state = old.state_dict(), net.state_dict()
    channels = {cfg: [r for r in cfg.inputs for _ in range(cfg.image_channels if r == "image" else 1)]
                for cfg in (old_cfg, model_cfg)}
    for name, weight in new_state.items():
        src = old_state.get(name)
        if src is None:
            continue
        if src.shape == weight.shape:
            weight.copy_(src)
        elif src.ndim >= 2 and src.shape[1] == old_cfg.in_channels and weight.shape[1] == model_cfg.in_channels \
                and src.shape[0] == weight.shape[0]:
            weight.zero_()
            old_roles = channels[old_cfg]
            for j, role in enumerate(channels[model_cfg]):
                if role in old_roles:
                    k = old_roles.index(role) + (j - channels[model_cfg].index(role))  # image channels keep their order
                    weight[:, j] = src[:, k]
    return card


def validate(net, objects, model_cfg: ModelConfig, clicks: int = 20, prompt: str = "click") -> dict[str, float]:
    """Frozen evaluation with the deterministic simulated user on working-size crops. `prompt`
    "box": a tight box first (counted as the first interaction), then clicks at the largest error."""
    rows = []
    net.eval()
    for obj in objects:
        image = torch.from_numpy(obj.image)[None]
        prev = None
        box = tight_box(obj.mask) if prompt == "box" else None

        def predict(chosen):
            nonlocal prev
            with torch.no_grad():
                prev = (net(build_inputs(image, [chosen], prev, model_cfg, [box])) > 0).float()
            return prev[0, 0].numpy().astype(bool)

        if box is None:
            dices = [step.dice for step in simulate(predict, obj.mask, clicks, first=Click(obj.click, True), fill=True)]
        else:
            first = predict([])
            dices = [dice(first, obj.mask)] + [step.dice for step in simulate(predict, obj.mask, clicks - 1, fill=True, start=first)]
        rows.append(click_metrics(dices))
    if not rows:
        return {}
    return {k: round(float(np.mean([r[k] for r in rows])), 4) for k in METRIC_KEYS} | {"objects": len(rows)}


# ------------------------------------------------------------------------------- checkpoints
def checkpoint_path(out: Path) -> Path:
    return Path(out).with_suffix(".ckpt")


def _save_checkpoint(path: Path, state: dict) -> None:
    write_atomic_via(path, lambda f: torch.save(state, f))


def _state(step, net, optimizer, scheduler, rng, sampler, losses, seconds, cfg) -> dict:
    return {
        "step": step, "net": net.state_dict(), "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(), "rng": rng.bit_generator.state,
        "sampler_rng": sampler.rng.bit_generator.state, "torch_rng": torch.get_rng_state(),
        "losses": list(losses), "seconds": seconds, "config": asdict(cfg),
    }


def pretrain(cfg: PretrainConfig, out: Path, model_cfg: ModelConfig | None = None, data_dir: Path | None = None,
             on_step: Callable[[int, float], None] | None = None, resume: bool = False,
             images: Sequence | None = None, dev_images: Sequence | None = None) -> dict:
    """Train and write `<out>.safetensors` + `<out>.json` (the card); returns the card."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    model_cfg = model_cfg or base_model_for(cfg.spatial_dims)
    if model_cfg.spatial_dims != cfg.spatial_dims:
        raise ValueError(f"the network is {model_cfg.spatial_dims}D but the training config asks for {cfg.spatial_dims}D")
    images = list(images) if images is not None else training_images(cfg, data_dir)
    dev_images = list(dev_images) if dev_images is not None else training_images(cfg, data_dir, split="dev")
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    sampler = ObjectSampler(images, sampler_config(cfg, model_cfg), seed=cfg.seed + 1)
    net = build_model(model_cfg).train()
    init_card = warm_start(net, model_cfg, cfg.init) if cfg.init else None
    optimizer = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    warmup = max(1, cfg.steps // 50)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * (0.02 + 0.98 * 0.5 * (1 + np.cos(np.pi * min(s, cfg.steps) / cfg.steps))))
    start, losses, seconds = 1, [], 0.0
    ckpt = checkpoint_path(out)
    if resume and ckpt.exists():
        state = torch.load(ckpt, weights_only=False)
        net.load_state_dict(state["net"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        rng.bit_generator.state = state["rng"]
        sampler.rng.bit_generator.state = state["sampler_rng"]
        torch.set_rng_state(state["torch_rng"])
        start, losses, seconds = state["step"] + 1, state["losses"], state["seconds"]
    t0, last_save = time.perf_counter(), time.perf_counter()
    step = start - 1

    def snapshot() -> dict:
        return _state(step, net, optimizer, scheduler, rng, sampler, losses, seconds + time.perf_counter() - t0, cfg)

    try:
        for step in range(start, cfg.steps + 1):
            losses.append(train_step(net, optimizer, sampler, cfg, model_cfg, rng))
            scheduler.step()
            due = (cfg.checkpoint_steps and step % cfg.checkpoint_steps == 0) or \
                  time.perf_counter() - last_save > 60 * cfg.checkpoint_minutes
            if due:
                _save_checkpoint(ckpt, snapshot())
                last_save = time.perf_counter()
            if on_step is not None:
                on_step(step, float(np.mean(losses[-50:])))
    except KeyboardInterrupt:
        _save_checkpoint(ckpt, snapshot())  # the steps done so far are kept; `--resume` continues
        raise
    _save_checkpoint(ckpt, snapshot())
    train_seconds = seconds + time.perf_counter() - t0
    val = validation_objects(dev_images, model_cfg.input_size, cfg.val_objects, sampler_cfg=sampler_config(cfg, model_cfg))
    card = {
        "provenance": _provenance(images, dev_images) | (
            {"initialised_from": {"base": cfg.init, "fingerprint": init_card.get("fingerprint")}} if init_card else {}),
        "training": {**asdict(cfg), "seconds": round(train_seconds, 1), "threads_used": torch.get_num_threads(),
                     "final_loss": round(float(np.mean(losses[-100:])), 4)},
        "validation": _validation(net, val, model_cfg, cfg),
        "reproduce": "fedpoint data prepare --training && fedpoint pretrain"
                     + (" --spatial-dims 3" if cfg.spatial_dims == 3 else "") + f" --steps {cfg.steps} --batch {cfg.batch} "
                     f"--lr {cfg.lr} --seed {cfg.seed}" + (f" --threads {cfg.threads}" if cfg.threads else "")
                     + (f" --init {cfg.init}" if cfg.init else "") + f" --out {out.name}",
    }
    save_base(net.eval(), model_cfg, out, card)
    return card


def _validation(net, objects, model_cfg: ModelConfig, cfg: PretrainConfig) -> dict:
    out = {"dev_split_crops": validate(net, objects, model_cfg, cfg.val_clicks)}
    if model_cfg.takes_box:  # box then clicks, on the zoom-regime crops (a box's window is the zoom window)
        zoom = [o for o in objects if o.regime == "zoom"]
        out["dev_split_crops_box"] = validate(net, zoom, model_cfg, cfg.val_clicks, prompt="box")
    return out


def _provenance(images, dev_images) -> dict:
    try:
        from fedpoint.data.training import TRAINING_SOURCES
        licences = {name: {"origin": s.origin, "licence": s.licence} for name, s in TRAINING_SOURCES.items()}
    except (ImportError, AttributeError):
        licences = {}
    return {
        "train_images": sorted({im.name for im in images}),
        "dev_images": sorted({im.name for im in dev_images}),
        "families": sorted({im.source for im in images}),
        "sources": licences,
        "excluded": "pyradiomics and stardist are evaluation data and never enter pre-training",
        "note": "objects: atlas regions, threshold masks and superpixel pseudo-objects of the listed images, "
                "2D slices along all three axes of volumes, plus synthetic shapes; validation on the dev split "
                "(images never trained on).",
    }
