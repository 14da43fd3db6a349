"""The federation's run config, split by who reads it, parsed in one place.

The run config is `[tool.flwr.app.config]` in pyproject.toml plus `--run-config` overrides
(kebab-case keys). `flwr.simulation.run_simulation` hands the apps an empty run config, so the
apps are built with defaults that the run config goes on top of.

Who reads what:
- `CoordinatorConfig`: the ServerApp (rounds, sampling, screening, aggregation, DP, the bank store,
  and the settings every instruction carries to the sites);
- `SiteRoundConfig`: a site's ClientApp in a round (its base, the simulated sites and their stores);
- `SimulationConfig`: the simulation runner (where the results land).
Keys several of them read (`_Shared`) are defined once. `FederationConfig` is the whole run config
(every key typed; an unknown key is refused), and `parse_run_config` is the one parse: it checks the
whole config and hands back the part one reader needs.

Light: pydantic and fedpoint.shared.config only.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fedpoint.shared.config import AdaptationMode, AdapterConfig
from fedpoint.shared.validation_errors import describe_validation_error


class _RunConfigModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True,
                              alias_generator=lambda name: name.replace("_", "-"))

    def to_run_config(self) -> dict:
        """Kebab-case plain values, as Flower's run config holds them."""
        return self.model_dump(by_alias=True)


class _Shared(_RunConfigModel):
    """Keys more than one reader needs."""

    base: str = ""
    sites_config: str = "federation"
    size: int = Field(96, ge=16, description="simulation: sample size in pixels")
    output_dir: str = "~/.cache/fedpoint/federation"
    bank_store: str = ""

    @property
    def output_path(self) -> Path | None:
        return Path(self.output_dir).expanduser() if self.output_dir else None

    @property
    def bank_store_path(self) -> Path:
        if self.bank_store:
            return Path(self.bank_store).expanduser()
        if self.output_path is None:
            raise ValueError("set bank-store (or output-dir, whose banks/ folder is then used)")
        return self.output_path / "banks"


class SiteRoundConfig(_Shared):
    """What a site's ClientApp reads: its base, the simulated sites (partition -> site) and where
    a simulated site keeps its store and records. What to train comes in the instruction."""

    site_streams: str = Field("", description="simulation: a folder of built site streams (<site>.stream.npz, "
                              "written by the experiment runner); empty: each worker builds its sites")
    volume_route: Literal["", "3d", "propagate"] = Field(
        "", description="simulation: each sample is a whole volume annotated by this route ('propagate': the 2D "
        "base carried through the slices; '3d': the 3D base); empty: samples as the base's dimensions say")

    def sample_dims(self, base_dims: int) -> int:
        """The dimensions of a simulated site's samples: whole volumes on a volume route, else the base's."""
        return 3 if self.volume_route else base_dims

    def simulated_site_store(self, site: str) -> Path:
        if self.output_path is None:
            raise ValueError("a simulated site keeps its store under output-dir: set output-dir")
        return self.output_path / "sites" / site


class SimulationConfig(_Shared):
    """What the simulation runner reads: where the coordinator writes the results (output-dir,
    bank store)."""


class CoordinatorConfig(_Shared):
    """What the ServerApp reads, with typed defaults."""

    num_server_rounds: int = Field(2, ge=1)
    fraction_train: float = Field(1.0, gt=0, le=1.0)
    min_train_nodes: int = Field(2, ge=1)
    adapter_kind: str = "norm"
    lora_rank: int = Field(4, ge=1, le=64)
    lora_freeze_a: bool = True
    images_per_round: int = Field(3, ge=1, description="simulation: images each site annotates per round")
    local_epochs: int = Field(4, ge=1, le=100, description="deployment: epochs of the episode a site runs per round")
    clicks: int = Field(5, ge=1, le=50)
    mode: AdaptationMode = "mid+post"
    lr: float = Field(0.0, ge=0, le=1.0, description="0: the adapter kind's default (shared.adapter_kinds, AdapterKind.lr)")
    bank_routing: Literal["banks", "general"] = Field(
        "banks", description="which bank a site receives (fedpoint.server.routing); old name: bank-strategy")
    clip_norm: float = Field(0.0, ge=0, description="> 0: the coordinator clips each delta to this L2 norm")
    dp_noise_multiplier: float = Field(0.0, ge=0, description="> 0: Flower's central DP, client-side fixed clipping")
    dp_clipping_norm: float = Field(1.0, gt=0)
    dp_delta: float = Field(1e-5, gt=0, lt=1, description="central DP: the delta epsilon is reported at")
    dp_epsilon_budget: float = Field(0.0, ge=0, description="central DP: > 0 stops the federation before the "
                                     "round that would take epsilon past it")
    norm_factor: float = Field(5.0, gt=1)
    aggregation_rule: Literal["weighted-mean", "trimmed-mean", "median"] = "weighted-mean"
    trim_fraction: float = Field(0.2, ge=0, lt=0.5, description="trimmed-mean: fraction cut at each end per coordinate")
    weight_cap_factor: float = Field(4.0, ge=1, description="a weight is clipped to this x the median of the others")
    norm_cap_rms: float = Field(0.0, ge=0, description="absolute bound on a delta's RMS per value; 0: the kind's default")
    history_factor: float = Field(10.0, gt=1, description="a delta may be at most this x the largest one a bank took")
    drift_window: int = Field(3, ge=0, description="two peers: rounds of outsized, opposed updates before a site is a suspect; 0: off")
    drift_ratio: float = Field(2.0, gt=1)
    clip_factor: float = Field(3.0, gt=1, description="a delta over this x its peer group's reference norm is clipped to it")
    outlier_factor: float = Field(2.0, gt=0, description="suspect: farther than this x the reference from the peers' median")
    pull_ratio: float = Field(1.5, gt=0, description="suspect: a recent mean pull from the peers' median over this x the reference")
    readmit_after: int = Field(3, ge=1, description="a suspect rejected this many rounds in a row is re-admitted, clipped")
    max_share: float = Field(0.5, gt=0, le=1, description="from 3 replies on, one site's largest share of a bank's weight")
    silent_rounds: int = Field(2, ge=0, description="timeouts in a row before a site gets only a short probe; 0: never")
    site_registry: str = Field("", description="deployment: JSON registry node -> site id, modality (register-sites.sh)")
    round_timeout: float = Field(600.0, gt=0)
    evaluate_banks: bool = Field(True, description="after each aggregation the sites score the new bank versions "
                                                   "on their held-out cached cases (only the scores come back)")
    seed: int = 0

    def screen_settings(self):
        """The peer screens' factors (`fedpoint.server.checks.ScreenSettings` takes them by name)."""
        return {"norm_factor": self.norm_factor, "clip_factor": self.clip_factor, "outlier_factor": self.outlier_factor,
                "pull_ratio": self.pull_ratio, "readmit_after": self.readmit_after,
                "drift_window": self.drift_window, "drift_ratio": self.drift_ratio}

    def adapter_config(self) -> AdapterConfig:
        return AdapterConfig(kind=self.adapter_kind, lora_rank=self.lora_rank, lora_freeze_a=self.lora_freeze_a)

    @property
    def dp(self) -> bool:
        return self.dp_noise_multiplier > 0

    @property
    def privacy(self) -> str:
        """The coordinator's privacy variant by name (`fedpoint.server.strategy.PRIVACY`)."""
        return "central-dp" if self.dp else "none"


class FederationConfig(CoordinatorConfig, SiteRoundConfig, SimulationConfig):
    """The whole run config: every reader's keys (and nothing else)."""


Reader = TypeVar("Reader", bound=_Shared)

# Keys renamed, old name -> new name. An old name is still accepted; within one layer (the defaults,
# or the run config: pyproject.toml with `--run-config` on top) it wins over the new name, which
# pyproject.toml holds, because only a user's override can still say it.
RENAMED_KEYS = {"bank-strategy": "bank-routing"}


def _current_names(layer: Mapping | None) -> dict:
    out = dict(layer or {})
    for old, new in RENAMED_KEYS.items():
        if old in out:
            out[new] = out.pop(old)
    return out


def parse_run_config(run_config: Mapping | None, defaults: Mapping | None = None,
                     reader: type[Reader] = FederationConfig) -> Reader:
    """Defaults, then the run config on top, checked as a whole (errors name the run-config key;
    a key no reader knows is refused); returns the part `reader` reads."""
    merged = {**_current_names(defaults), **_current_names(run_config)}
    try:
        whole = FederationConfig(**merged)
    except ValidationError as err:
        raise ValueError(f"bad federation run config: {describe_validation_error(err)}") from None
    if reader is FederationConfig:
        return whole
    return reader(**whole.model_dump(include=set(reader.model_fields)))
