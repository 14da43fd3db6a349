"""An experiment: sites, rounds, the simulated user's budget, the adapter kind, seeds and the
strategies to compare, read from TOML and validated by pydantic.

    name = "demo"
    rounds = 3
    images_per_round = 3
    clicks = 10
    size = 96
    adapter = "norm"
    seeds = [0]
    strategies = ["frozen", "local-online", "fed-banks"]   # default: the eight main arms
    lr = 0.01
    full_lr = 0.001       # fed-full tunes every weight: a smaller step
    [adaptation]          # optional episode_* fields of AdaptationConfig
    episode_epochs = 3
    [full]                # optional overrides used by `--full`
    seeds = [0, 1, 2]
    [[sites]]             # fedpoint.data.SiteSpec tables
    name = "ct-a"
    dataset = "pyradiomics-lung"
    shift = "scanner-b"

Every error names the file and the field, e.g. `demo.toml: rounds: Input should be greater than 0`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from fedpoint.data import SiteSpec
from fedpoint.shared.adapter_kinds import adapter_kind
from fedpoint.shared.config import AdaptationConfig, AdapterConfig
from fedpoint.shared.validation_errors import describe_validation_error
from fedpoint.simulations.arms import ABLATIONS, DEFAULT_ARMS, ARM_NAMES
from fedpoint.simulations.source_base import SourceBase

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

# Keys `--full` may override; the sites stay as declared (their stream lengths follow the rounds).
FULL_OVERRIDABLE = ("rounds", "images_per_round", "clicks", "size", "whole_slices", "seeds", "strategies", "adaptation",
                    "lr", "full_lr", "ablations", "companions")


class ExperimentError(ValueError):
    """A config that cannot run; the message names the file and the field."""


class ExperimentConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = "experiment"
    description: str = ""
    rounds: int = Field(3, ge=1, le=100)
    images_per_round: int = Field(3, ge=1, le=1000)
    clicks: int = Field(10, ge=1, le=50, description="simulated clicks per image")
    size: int = Field(96, ge=16, le=1024, description="side of the 2D object crops, in pixels (3D: whole volumes)")
    whole_slices: bool = Field(False, description="2D: every site annotates whole slices (whole images, its box) "
                               "at native resolution through the focus crop, not object crops of `size`")
    spatial_dims: Literal[2, 3] = Field(2, description="3: whole volumes (with a 3D base, base3d, unless `route` "
                                        "says 'propagate')")
    route: Literal["3d", "propagate"] | None = Field(
        None, description="volumes (spatial_dims = 3): '3d' (the 3D base, the 3D simulated user) or 'propagate' "
        "(the 2D base, its mask carried through the slices; default base: the packaged 2D one); none: the 3D base")
    adapter: str = Field("norm", description="adapter kind of the local and banked strategies (fed-full is always full)")
    lr: float | None = Field(None, gt=0, le=1.0, description="learning rate of the online updates; "
                             "default: the adapter kind's (shared.adapter_kinds, AdapterKind.lr)")
    full_lr: float | None = Field(None, gt=0, le=1.0, description="learning rate when every weight is tuned "
                                  "(fed-full, local-full, or adapter = full); default: the full kind's")
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    strategies: list[str] = Field(default_factory=lambda: list(DEFAULT_ARMS), min_length=1,
                                  description="default: every strategy but the ablation arms (ABLATIONS)")
    base: str | None = Field(None, description="base checkpoint name or path; default: the packaged base2d")
    threads: int | None = Field(None, ge=1, le=256, description="torch threads in the runner process")
    lanes: Literal[1, 2] = Field(2, description="2: the local arms run beside the federated ones (the federations "
                                 "in processes of their own); 1: one arm at a time")
    adaptation: dict[str, Any] = Field(default_factory=dict, description="episode_* fields of AdaptationConfig")
    ablations: bool = Field(False, description="also run the ablation arms (mid only, post only, CCG off) "
                            "when `strategies` is not given")
    companions: list[str] = Field(default_factory=list, description="scenarios (packaged names or TOML paths) run "
                                  "after this one, into folders of their own; the report shows their learning curves")
    source_base: SourceBase | None = Field(None, description="change of modality: a base pre-trained on these "
                                           "training sources only, built once by the runner (replaces `base`)")
    sites: list[SiteSpec] = Field(min_length=2)

    @model_validator(mode="before")
    @classmethod
    def _base_of_the_dims(cls, table):
        if (isinstance(table, dict) and table.get("spatial_dims") == 3 and not table.get("base")
                and table.get("route") != "propagate"):
            table = {**table, "base": "base3d"}
        return table

    @model_validator(mode="before")
    @classmethod
    def _with_ablations(cls, table):
        if isinstance(table, dict) and table.get("ablations") and "strategies" not in table:
            table = {**table, "strategies": list(DEFAULT_ARMS) + list(ABLATIONS)}
        return table

    @field_validator("adapter")
    @classmethod
    def _known_adapter(cls, kind: str) -> str:
        AdapterConfig(kind=kind)
        return kind

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, seeds: list[int]) -> list[int]:
        if len(set(seeds)) != len(seeds) or min(seeds) < 0:
            raise ValueError("seeds must be distinct and >= 0")
        return seeds

    @field_validator("strategies")
    @classmethod
    def _known_strategies(cls, names: list[str]) -> list[str]:
        unknown = [n for n in names if n not in ARM_NAMES]
        if unknown:
            raise ValueError(f"unknown {', '.join(unknown)}; known: {', '.join(ARM_NAMES)}")
        if len(set(names)) != len(names):
            raise ValueError("each strategy may appear once")
        return [n for n in ARM_NAMES if n in names]  # the canonical order, for tables and plots

    @field_validator("adaptation")
    @classmethod
    def _valid_adaptation(cls, fields: dict[str, Any]) -> dict[str, Any]:
        # The federated ClientApp adapts with mode, lr and seed only (AdaptationConfig defaults for
        # the rest), so only the episode settings, which it never uses, may differ from the defaults.
        for key in fields:
            if not key.startswith("episode_"):
                raise ValueError(f"{key}: only episode_* settings may be set here (mode, lr and seed come from "
                                 "the strategy, `lr` and `seeds`; the federated sites use the other defaults)")
        try:
            AdaptationConfig(**fields)
        except ValidationError as err:
            raise ValueError(describe_validation_error(err)) from None
        return fields

    @model_validator(mode="after")
    def _route_of_volumes(self) -> "ExperimentConfig":
        if self.route is not None and self.spatial_dims != 3:
            raise ValueError(f"route = {self.route!r} annotates whole volumes: set spatial_dims = 3")
        if self.route == "propagate" and self.whole_slices:
            raise ValueError("route = 'propagate' annotates whole volumes; whole_slices is for 2D images")
        return self

    @property
    def base_dims(self) -> int:
        """2 or 3: the base the sites annotate with (the propagation route carries a 2D base through volumes)."""
        return 2 if self.route == "propagate" else self.spatial_dims

    @model_validator(mode="after")
    def _sites_fit_the_rounds(self) -> "ExperimentConfig":
        names = [s.name for s in self.sites]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"sites: names must be unique; repeated: {', '.join(repeated)}")
        for i, site in enumerate(self.sites):
            if site.join_round >= self.rounds:
                raise ValueError(f"sites.{i}.join_round: a site that misses {site.join_round} of {self.rounds} "
                                 "rounds never annotates; use fewer than `rounds`")
        if sum(s.join_round == 0 for s in self.sites) < 2:
            raise ValueError("sites: at least two sites must take part from the first round (join_round = 0)")
        check_sites_disjoint(self.sites)
        return self

    # -------------------------------------------------------------------------------- derived
    def lr_for(self, kind: str) -> float:
        """An explicit override (`full_lr` for a kind that tunes every weight, which wants a smaller
        step than tuning a few norm affines), else the kind's one default."""
        rules = adapter_kind(kind)
        return rules.lr_for(self.full_lr if rules.every_weight else self.lr)

    def adaptation_config(self, mode: str, seed: int, kind: str | None = None) -> AdaptationConfig:
        lr = self.lr_for(kind or self.adapter)
        return AdaptationConfig(**{**self.adaptation, "mode": mode, "lr": lr, "seed": seed})

    def site_rounds(self, site: SiteSpec) -> int:
        """Rounds a site takes part in: `join_round = j` misses the first j of them."""
        return self.rounds - site.join_round

    def stream_length(self, site: SiteSpec) -> int:
        """Images a site annotates over the experiment: its rounds times images per round, or fewer
        if the site caps its stream."""
        wanted = self.site_rounds(site) * self.images_per_round
        return wanted if site.stream_length is None else min(wanted, site.stream_length)

    def sites_for_seed(self, seed: int) -> list[SiteSpec]:
        """The sites of one experiment seed: stream order and shift realisation follow the seed, the
        stream is cut to what the rounds use. Every strategy of that seed sees exactly these."""
        update = {"whole_slices": True} if self.whole_slices else {}
        return [s.model_copy(update={**update, "seed": site_seed(s.seed, seed), "stream_length": self.stream_length(s)})
                for s in self.sites]

    @property
    def late_sites(self) -> list[SiteSpec]:
        return [s for s in self.sites if s.join_round > 0]


def check_sites_disjoint(specs) -> None:
    """Every site's images from disjoint subjects or regions (`fedpoint.data.sites.check_disjoint`):
    a ValueError naming both sites and the overlap otherwise."""
    from fedpoint.data.sites import SiteOverlapError, check_disjoint

    try:
        check_disjoint(list(specs))
    except SiteOverlapError as err:
        raise ValueError(f"sites: {err}") from None


def site_seed(site_seed_value: int, experiment_seed: int) -> int:
    return site_seed_value + 7919 * experiment_seed


def load_experiment(name_or_path: str | Path, full: bool = False, **overrides: Any) -> ExperimentConfig:
    """A packaged config (`demo`, `tiny`) or a TOML path; `full` applies its `[full]` table; keyword
    overrides (e.g. `seeds=[0, 1]`, `strategies=[...]`) win over both."""
    from fedpoint.configs import resolve_config

    path = resolve_config(name_or_path)
    try:
        table = tomllib.loads(Path(path).read_text())
    except tomllib.TOMLDecodeError as err:
        raise ExperimentError(f"{path.name}: not valid TOML ({err})") from err
    return experiment_from_dict(table, full=full, source=path.name, **overrides)


def experiment_from_dict(table: dict[str, Any], full: bool = False, source: str = "config", **overrides: Any) -> ExperimentConfig:
    table = dict(table)
    full_table = table.pop("full", {}) or {}
    if not isinstance(full_table, dict):
        raise ExperimentError(f"{source}: full: must be a table of overrides")
    bad = sorted(set(full_table) - set(FULL_OVERRIDABLE))
    if bad:
        raise ExperimentError(f"{source}: full.{bad[0]}: cannot be overridden; allowed: {', '.join(FULL_OVERRIDABLE)}")
    if full:
        table.update(full_table)
    table.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return ExperimentConfig(**table)
    except ValidationError as err:
        raise ExperimentError(f"{source}: {describe_validation_error(err)}") from err


