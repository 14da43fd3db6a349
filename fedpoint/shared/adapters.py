"""Adapter kinds: which parameters of the frozen base a site tunes and shares.

A registry, not flags (like nnU-Net's trainer variants), keyed by the names of
`fedpoint.shared.adapter_kinds`, which holds each kind's rules (default learning rate, aggregation,
secure-aggregation exactness, save format); this module is the torch side. Each kind freezes every
base parameter, then opens its own set:

- ``norm``       instance-norm affine weights and biases only (CLoPA's IN group; FedBN-like). No new
                 parameters; a plain weighted average of deltas is exact.
- ``norm+stem``  plus the input stem and the output head (CLoPA's IN+Conv group).
- ``lora``       peft LoRA on the convolutions (ConvTranspose is not supported by peft). With
                 ``lora_freeze_a`` (the default) A is drawn from a fixed seed and never trained, so
                 only B is shared and averaging B is exactly averaging B·A (FFA-LoRA).
- ``full``       every parameter: the baseline that full-model FedAvg sends.

Every adapter knows the fingerprint of the base it was made on, writes it next to its weights,
and refuses to load weights made on another base.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn

from fedpoint.shared.adapter_kinds import AdapterKind, adapter_kind
from fedpoint.shared.config import AdapterConfig
from fedpoint.shared.fileio import write_json_atomic
from fedpoint.shared.model import architecture_of, base_fingerprint, stem_and_head
from fedpoint.shared.payload import state_schema

MANIFEST = "fedpoint_adapter.json"
State = dict[str, torch.Tensor]


class AdapterMismatchError(ValueError):
    """Adapter weights that do not fit this base or this adapter (fingerprint, keys or shapes)."""


class Adapter:
    """A base model with one kind of trainable parameters opened; `net` is what you call."""

    kind: ClassVar[str] = ""

    @property
    def rules(self) -> AdapterKind:
        """The kind's rules (`fedpoint.shared.adapter_kinds`)."""
        return adapter_kind(self.kind)

    def __init__(self, base: nn.Module, cfg: AdapterConfig | None = None, fingerprint: str | None = None):
        self.cfg = cfg or AdapterConfig(kind=self.kind)
        self.base_fingerprint = fingerprint or base_fingerprint(base)
        net = copy.deepcopy(base)
        net.requires_grad_(False)
        self.net = self._open(net)
        self.names = [n for n, p in self.net.named_parameters() if p.requires_grad]
        if not self.names:
            raise ValueError(f"adapter kind {self.kind!r} found no parameters to train in this model")

    # --- what a kind defines ------------------------------------------------------------------
    def _open(self, net: nn.Module) -> nn.Module:
        """Enable gradients on this kind's parameters (or wrap the net) and return the net to call."""
        raise NotImplementedError

    # --- the shared contract ------------------------------------------------------------------
    def trainable_parameters(self) -> list[nn.Parameter]:
        params = dict(self.net.named_parameters())
        return [params[n] for n in self.names]

    def state(self) -> State:
        """The trainable parameters, detached copies on the CPU, keyed by parameter name."""
        params = dict(self.net.named_parameters())
        return {n: params[n].detach().to("cpu", copy=True) for n in self.names}

    def schema(self) -> dict[str, tuple[tuple[int, ...], str]]:
        params = dict(self.net.named_parameters())
        return state_schema({n: params[n] for n in self.names})

    def load_state(self, state: State) -> None:
        self.check_state(state)
        params = dict(self.net.named_parameters())
        with torch.no_grad():
            for name, value in state.items():
                params[name].copy_(torch.as_tensor(value, dtype=params[name].dtype))

    def check_state(self, state: State) -> None:
        expected = self.schema()
        missing, extra = set(expected) - set(state), set(state) - set(expected)
        if missing or extra:
            raise AdapterMismatchError(
                f"{self.kind} adapter state does not match: missing {sorted(missing)[:3]}, unexpected {sorted(extra)[:3]}"
            )
        for name, value in state.items():
            if tuple(value.shape) != expected[name][0]:
                raise AdapterMismatchError(f"{name}: shape {tuple(value.shape)}, expected {expected[name][0]}")

    def delta(self, reference: State) -> State:
        """This adapter's state minus a reference state of the same kind (what a site sends)."""
        self.check_state(reference)
        return {n: v - reference[n].to(v.dtype) for n, v in self.state().items()}

    def apply_delta(self, delta: State) -> None:
        current = self.state()
        self.load_state({n: current[n] + torch.as_tensor(delta[n]).to(current[n].dtype) for n in current})

    def num_trainable(self) -> int:
        return sum(p.numel() for p in self.trainable_parameters())

    def nbytes(self) -> int:
        return sum(p.numel() * p.element_size() for p in self.trainable_parameters())

    # --- disk ---------------------------------------------------------------------------------
    def manifest(self) -> dict:
        return {
            "kind": self.kind,
            "config": self.cfg.model_dump(mode="json"),
            "base_fingerprint": self.base_fingerprint,
            "parameters": self.num_trainable(),
        }

    def save(self, directory: str | Path, extra: dict | None = None) -> Path:
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.state().items()}, str(directory / "adapter.safetensors"))
        _write_manifest(directory, {**self.manifest(), **(extra or {})})
        return directory

    def load(self, directory: str | Path) -> dict:
        from safetensors.torch import load_file

        manifest = self.check_compatible(directory)
        self.load_state(load_file(str(Path(directory) / "adapter.safetensors")))
        return manifest

    def check_compatible(self, directory: str | Path) -> dict:
        manifest = read_manifest(directory)
        if manifest.get("base_fingerprint") != self.base_fingerprint:
            raise AdapterMismatchError(
                f"adapter in {directory} was made for base {manifest.get('base_fingerprint')}, "
                f"but this model's base is {self.base_fingerprint}: refusing to load it"
            )
        if manifest.get("kind") != self.kind:
            raise AdapterMismatchError(f"adapter in {directory} is of kind {manifest.get('kind')!r}, not {self.kind!r}")
        return manifest


def read_manifest(directory: str | Path) -> dict:
    path = Path(directory) / MANIFEST
    if not path.exists():
        raise FileNotFoundError(f"{directory} holds no fedpoint adapter ({MANIFEST} is missing)")
    return json.loads(path.read_text())


def _write_manifest(directory: Path, manifest: dict) -> None:
    write_json_atomic(directory / MANIFEST, manifest, indent=2)


# ------------------------------------------------------------------------------------- kinds
ADAPTER_CLASSES: dict[str, type[Adapter]] = {}  # kind name -> the class that opens its parameters


def register(cls: type[Adapter]) -> type[Adapter]:
    adapter_kind(cls.kind)  # every torch kind has its rules
    ADAPTER_CLASSES[cls.kind] = cls
    return cls


@register
class NormAdapter(Adapter):
    kind = "norm"

    def _open(self, net: nn.Module) -> nn.Module:
        for module in architecture_of(net).norm_layers(net):
            module.requires_grad_(True)
        return net


@register
class NormStemAdapter(Adapter):
    kind = "norm+stem"

    def _open(self, net: nn.Module) -> nn.Module:
        NormAdapter._open(self, net)
        for block in stem_and_head(net):
            block.requires_grad_(True)
        return net


@register
class FullAdapter(Adapter):
    kind = "full"

    def _open(self, net: nn.Module) -> nn.Module:
        return net.requires_grad_(True)


def conv_module_names(net: nn.Module) -> list[str]:
    """Names of the plain convolutions (peft LoRA rejects ConvTranspose): the architecture's LoRA targets."""
    return architecture_of(net).lora_targets(net)


def _peft():
    """peft, or MissingExtraError (an ImportError) naming the `lora` extra that installs it."""
    from fedpoint.extras import require

    return require("peft", feature="the 'lora' adapter kind")


@register
class LoraAdapter(Adapter):
    """peft LoRA on every plain convolution; saved in peft's own format."""

    kind = "lora"

    def _open(self, net: nn.Module) -> nn.Module:
        _peft()  # a clear "install fedpoint[lora]" error when peft is missing
        from peft import LoraConfig, get_peft_model

        config = LoraConfig(
            r=self.cfg.lora_rank,
            lora_alpha=self.cfg.lora_alpha,
            target_modules=conv_module_names(net),
            lora_dropout=0.0,
            bias="none",
        )
        # A fixed seed gives every site the same A, which is what makes averaging B exact.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.cfg.lora_seed)
            peft_net = get_peft_model(net, config)
        for name, param in peft_net.named_parameters():
            param.requires_grad_("lora_B" in name or ("lora_A" in name and not self.cfg.lora_freeze_a))
        return peft_net

    def save(self, directory: str | Path, extra: dict | None = None) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.net.save_pretrained(str(directory))  # adapter_model.safetensors + adapter_config.json
        _write_manifest(directory, {**self.manifest(), **(extra or {})})
        return directory

    def load(self, directory: str | Path) -> dict:
        _peft()
        from peft import set_peft_model_state_dict
        from peft.utils import get_peft_model_state_dict
        from safetensors.torch import load_file

        manifest = self.check_compatible(directory)
        saved = load_file(str(Path(directory) / "adapter_model.safetensors"))
        current = get_peft_model_state_dict(self.net)
        if set(saved) != set(current) or any(saved[k].shape != current[k].shape for k in saved):
            raise AdapterMismatchError(f"LoRA weights in {directory} do not fit this model (keys or ranks differ)")
        if self.cfg.lora_freeze_a:
            for key in (k for k in saved if "lora_A" in k):
                if not torch.equal(saved[key], current[key]):
                    raise AdapterMismatchError(f"{directory}: frozen LoRA A differs ({key}); was it made with another lora_seed?")
        set_peft_model_state_dict(self.net, saved)
        return manifest


def make_adapter(base: nn.Module, cfg: AdapterConfig | str = "norm", fingerprint: str | None = None) -> Adapter:
    """An adapter of the configured kind over a copy of `base` (the base itself is not modified)."""
    if isinstance(cfg, str):
        cfg = AdapterConfig(kind=cfg)
    return ADAPTER_CLASSES[cfg.kind](base, cfg, fingerprint)


def load_adapter(base: nn.Module, directory: str | Path, fingerprint: str | None = None) -> Adapter:
    """Rebuild the adapter saved in `directory` on `base`, refusing a foreign base."""
    manifest = read_manifest(directory)
    adapter = make_adapter(base, AdapterConfig(**manifest["config"]), fingerprint)
    adapter.load(directory)
    return adapter

