"""The adapter kinds' rules, one record per kind (standard library only: no torch, no pydantic).

Each kind states what it trains, its default online learning rate, how the coordinator aggregates
it (and whether that is exact under secure aggregation), the cap on a reply's delta, how it is
saved and what it needs installed. Configuration, aggregation, the bank store and the experiments
ask the kind (`adapter_kind(name)`) instead of comparing names; `fedpoint.shared.adapters` holds
the torch side (which parameters each kind opens), keyed by the same names.

A kind's config-dependent rules take the adapter's config (an `AdapterConfig`, or anything with
its `lora_freeze_a` / `lora_rank` attributes), so this module needs nothing from `shared.config`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# How a bank is aggregated, as written into bank manifests.
LINEAR_RULE = "weighted-mean-of-deltas"
PRODUCT_RULE = "weighted-mean-of-lora-products+truncated-svd"

# Save formats: fedpoint's own (adapter.safetensors + fedpoint_adapter.json, which is also what a
# bank version holds) or peft's save_pretrained folder (adapter_model.safetensors + adapter_config.json).
FEDPOINT_FORMAT = "fedpoint"
PEFT_FORMAT = "peft"


@dataclass(frozen=True)
class AdapterKind:
    """One adapter kind's rules. A linear kind's aggregate is the weighted mean of the deltas: exact,
    and computable from their weighted sum alone (so exact under secure aggregation)."""

    name: str
    trainable: str  # which parameters of the frozen base it tunes and shares
    lr: float  # the default online learning rate (Adam, mid_steps/post_steps steps per click/accept)
    delta_rms_cap: float  # absolute cap on a reply delta's RMS per value, before a bank has history
    every_weight: bool = False  # tunes every weight of the base (experiments give it `full_lr`)
    save_format: str = FEDPOINT_FORMAT
    requires: tuple[str, ...] = ()  # packages it needs beyond the core install (fedpoint.extras names their extra)

    def lr_for(self, lr: float | None) -> float:
        """The one learning-rate rule: a rate given, else this kind's default. "Not given" is None in
        Python configs and 0 where a value is required (the run config, the round instruction)."""
        return lr or self.lr

    def variant(self, cfg: Any = None) -> str:
        """The name of the rule set that applies with this config (a key of `EXACT_UNDER_SECAGG`)."""
        return self.name

    def variants(self) -> dict[str, bool]:
        """Every variant of the kind -> whether its aggregate is exact under secure aggregation."""
        return {self.name: True}

    def is_linear(self, cfg: Any = None) -> bool:
        return True

    def exact_under_secure_aggregation(self, cfg: Any = None) -> bool:
        return self.variants()[self.variant(cfg)]

    def aggregation(self, cfg: Any = None) -> str:
        """How a bank of this kind is aggregated with the weighted mean (the manifest's string)."""
        return LINEAR_RULE

    @property
    def export_needs_base(self) -> bool:
        """A bank version is stored in fedpoint's format; another save format is rebuilt on the base."""
        return self.save_format != FEDPOINT_FORMAT


@dataclass(frozen=True)
class LoraKind(AdapterKind):
    """LoRA: linear while A is frozen (seeded alike at every site, only B is shared); with A trained,
    the mean of the products B_i A_i refactorised to rank r, which needs each site's factors."""

    def variant(self, cfg: Any = None) -> str:
        return f"{self.name}-frozen-a" if _freeze_a(cfg) else f"{self.name}-free-a"

    def variants(self) -> dict[str, bool]:
        return {f"{self.name}-frozen-a": True, f"{self.name}-free-a": False}

    def is_linear(self, cfg: Any = None) -> bool:
        return _freeze_a(cfg)

    def aggregation(self, cfg: Any = None) -> str:
        if self.is_linear(cfg):
            return LINEAR_RULE
        return f"{PRODUCT_RULE}-to-rank-{cfg.lora_rank}"


def _freeze_a(cfg: Any) -> bool:
    return True if cfg is None else bool(cfg.lora_freeze_a)  # AdapterConfig's default


# Learning rates chosen on the dev split of the base's training sources with the demo's shifts
# applied, never on an evaluation dataset (docs/engine.md, "Choosing the defaults"). Honest deltas
# of a round have an RMS of 1e-4..1e-2; `full` moves every weight of the base, so its cap is tighter.
ADAPTER_KINDS: dict[str, AdapterKind] = {kind.name: kind for kind in (
    # norm: 1e-4 since the box base (re-chosen on the dev split, 2026-12-07); the others were chosen on
    # the click-only base before it and not re-swept.
    AdapterKind("norm", "instance-norm affine weights and biases (CLoPA's IN group)", lr=1e-4, delta_rms_cap=0.1),
    AdapterKind("norm+stem", "the norm affines plus the input stem and the output head (CLoPA's IN+Conv group)",
                lr=1e-4, delta_rms_cap=0.1),
    AdapterKind("full", "every parameter (the full-model FedAvg baseline)", lr=1e-4, delta_rms_cap=0.05,
                every_weight=True),
    LoraKind("lora", "peft LoRA on every plain convolution (A seeded and frozen by default: only B is shared)",
             lr=1e-3, delta_rms_cap=0.1, save_format=PEFT_FORMAT, requires=("peft",)),
)}

# variant -> is the aggregate computable from the weighted sum alone (secure aggregation)?
EXACT_UNDER_SECAGG: dict[str, bool] = {v: exact for kind in ADAPTER_KINDS.values() for v, exact in kind.variants().items()}


def adapter_kind(name: str) -> AdapterKind:
    """The rules of adapter kind `name`; ValueError naming the known kinds otherwise."""
    try:
        return ADAPTER_KINDS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown adapter kind {name!r}; known: {', '.join(ADAPTER_KINDS)}") from None
