"""The interactive segmentation network and the fingerprint that pins its frozen weights.

A MONAI network (2D or 3D) with affine instance norm. Its input channels are the config's
`inputs` (`fedpoint.shared.inputs` builds them); output: one logit map for the object. Each
architecture is one `Architecture` record: how it is built and the roles the adapter kinds open
(norm layers, stem and head, LoRA targets), so another backbone is one record here.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from fedpoint.shared.bases import read_card
from fedpoint.shared.config import ModelConfig
from fedpoint.shared.device import DEFAULT_DEVICE
from fedpoint.shared.monai_import import load_monai


def build_model(cfg: ModelConfig) -> nn.Module:
    net = ARCHITECTURES[cfg.arch].build(cfg)
    net.fedpoint_arch = cfg.arch  # a plain attribute: the adapters ask `architecture_of(net)` for its roles
    return net


def _dynunet(cfg: ModelConfig) -> nn.Module:
    """MONAI DynUNet: level 0 at full resolution (stride 1), `strides` between the levels, two
    3x3 convolutions with affine instance norm per level, and a bare 1x1 output convolution (no
    normalisation on the logits, so a click can push them anywhere)."""
    load_monai()
    from monai.networks.nets import DynUNet

    strides = (1, *cfg.strides)
    net = DynUNet(
        spatial_dims=cfg.spatial_dims,
        in_channels=cfg.in_channels,
        out_channels=1,
        kernel_size=[3] * len(strides),
        strides=list(strides),
        upsample_kernel_size=list(strides[1:]),
        filters=list(cfg.channels),
        norm_name=("instance", {"affine": True}),
        act_name=("leakyrelu", {"inplace": True, "negative_slope": 0.01}),
        res_block=cfg.num_res_units > 0,
    )
    # DynUNet registers every block twice (by level and again inside its `skip_layers` chain), so
    # its state dict names each weight twice. Keep the chain as a plain attribute: one name per
    # weight for checkpoints, fingerprints and adapters; forward still runs through it.
    skips = net._modules.pop("skip_layers")
    object.__setattr__(net, "skip_layers", skips)
    return net


def _unet(cfg: ModelConfig) -> nn.Module:
    load_monai()  # seconds to import: only when a model is built
    from monai.networks.nets import UNet

    return UNet(
        spatial_dims=cfg.spatial_dims,
        in_channels=cfg.in_channels,
        out_channels=1,
        channels=cfg.channels,
        strides=cfg.strides,
        num_res_units=cfg.num_res_units,
        # MONAI's "instance" norm has no parameters; CLoPA-style adaptation needs the affine ones.
        norm=("instance", {"affine": True}),
        act="PRELU",
    )


def _dynunet_stem_head(net: nn.Module) -> list[nn.Module]:
    return [net.input_block, net.upsamples[-1], net.output_block]


def _unet_stem_head(net: nn.Module) -> list[nn.Module]:
    body = net.model  # MONAI UNet: model.0 (down), model.1 (skip), model.2 (up)
    return [body[0], body[-1]]


@dataclass(frozen=True)
class Architecture:
    """A backbone and its roles: how it is built, and which parts each adapter kind opens."""

    name: str
    build: Callable[[ModelConfig], nn.Module]
    stem_head: Callable[[nn.Module], list[nn.Module]]  # `norm+stem`: the input stem and the output head

    @staticmethod
    def norm_layers(net: nn.Module) -> list[nn.Module]:
        """`norm` (CLoPA's IN group): the instance norms with affine weights."""
        return [m for m in net.modules() if isinstance(m, nn.modules.instancenorm._InstanceNorm) and m.affine]

    @staticmethod
    def lora_targets(net: nn.Module) -> list[str]:
        """`lora`: the plain convolutions by name (peft LoRA rejects ConvTranspose)."""
        return [n for n, m in net.named_modules() if type(m) in (nn.Conv1d, nn.Conv2d, nn.Conv3d)]


ARCHITECTURES = {
    "unet": Architecture("unet", _unet, _unet_stem_head),
    "dynunet": Architecture("dynunet", _dynunet, _dynunet_stem_head),
}


def architecture_of(net: nn.Module) -> Architecture:
    """The record of a network `build_model` made (one built elsewhere: recognised by its blocks)."""
    name = getattr(net, "fedpoint_arch", None) or ("dynunet" if hasattr(net, "input_block") else "unet")
    return ARCHITECTURES[name]


def stem_and_head(net: nn.Module) -> list[nn.Module]:
    """The blocks the `norm+stem` adapter opens: the input stem and the output head."""
    try:
        return architecture_of(net).stem_head(net)
    except (AttributeError, IndexError, TypeError):
        raise ValueError("norm+stem needs a MONAI DynUNet or UNet") from None


def base_fingerprint(model: nn.Module) -> str:
    """sha256 over the names, shapes and bytes of every base weight, in name order."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        digest.update(name.encode())
        digest.update(str(tuple(t.shape)).encode())
        digest.update(t.numpy().tobytes())
    return digest.hexdigest()[:32]


def save_base(model: nn.Module, cfg: ModelConfig, path: Path, meta: dict | None = None) -> Path:
    """Write `<path>.safetensors` and `<path>.json` (config, fingerprint, provenance, metrics)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path.with_suffix(".safetensors")))
    card = {"model": cfg.model_dump(mode="json"), "fingerprint": base_fingerprint(model), **(meta or {})}
    path.with_suffix(".json").write_text(json.dumps(card, indent=2))
    return path


def load_base(spec: str | Path | None = None, device: str | torch.device = DEFAULT_DEVICE) -> tuple[nn.Module, ModelConfig, dict]:
    """Load a frozen base model; returns (model, config, model card)."""
    from safetensors.torch import load_file

    path, card = read_card(spec)
    cfg = ModelConfig(**card["model"])
    model = build_model(cfg)
    model.load_state_dict(load_file(str(path.with_suffix(".safetensors"))))
    model.to(device).eval()
    return model, cfg, card
