"""Validated configuration for the model, the adapter and online adaptation.

pydantic names the offending field in every error, so a bad TOML value reads as
"adaptation.lr: Input should be greater than 0" rather than a stack trace from deep in torch.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

from fedpoint.shared.adapter_kinds import AdapterKind, adapter_kind


ADAPTATION_MODES = ("frozen", "mid", "post", "mid+post", "episodes", "mid+post+episodes")
ADAPTATION_STAGES = ("mid", "post", "episodes")
# A mode names the stages it runs, joined by "+" ("frozen": none); parsed here once.
MODE_STAGES: dict[str, frozenset[str]] = {
    mode: frozenset() if mode == "frozen" else frozenset(mode.split("+")) for mode in ADAPTATION_MODES
}


def check_mode(mode: str) -> str:
    if mode not in ADAPTATION_MODES:
        raise ValueError(f"unknown mode {mode!r}; known: {', '.join(ADAPTATION_MODES)}")
    return mode


def mode_stages(mode: str) -> frozenset[str]:
    """The stages (`ADAPTATION_STAGES`) an adaptation mode runs."""
    return MODE_STAGES[check_mode(mode)]


# An adaptation mode, validated wherever a schema takes one (config, run config, CLI spec).
AdaptationMode = Annotated[str, AfterValidator(check_mode)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# The network's input channels by role, in order (`fedpoint.shared.inputs` builds them): the image
# channel(s), the positive and negative click maps, the previous mask and, for a base trained for it,
# the box prompt. A card without `inputs` is a click-only base.
INPUT_ROLES = ("image", "pos", "neg", "prev", "box")
CLICK_INPUTS = ("image", "pos", "neg", "prev")
BOX_INPUTS = ("image", "pos", "neg", "prev", "box")


class ModelConfig(_Strict):
    """The interactive network and its input contract: `inputs` names its input channels by role, in
    order (`INPUT_ROLES`; "image" stands for `image_channels` channels).

    `arch` names the network (see `fedpoint.shared.model.ARCHITECTURES`): ``dynunet`` (MONAI's
    DynUNet: a full-resolution first level, plain 1x1 output convolution) is what the packaged base
    uses; ``unet`` (MONAI's UNet, whose first convolution strides) is kept for small test nets and
    checkpoints made before it. A card without `arch` is a ``unet`` card.
    """

    arch: Literal["unet", "dynunet"] = "unet"
    spatial_dims: Literal[2, 3] = 2
    image_channels: int = Field(1, ge=1, le=8)
    channels: tuple[int, ...] = (16, 32, 64, 128)
    strides: tuple[int, ...] = (2, 2, 2)
    num_res_units: int = Field(1, ge=0, le=4)
    click_sigma: float = Field(3.0, gt=0, description="Gaussian click-map sigma, in voxels")
    input_size: int = Field(96, ge=16, le=1024, description="working size (voxels a side) of the focus crop the model predicts on")
    inputs: tuple[str, ...] = Field(CLICK_INPUTS, description="input channels by role, in order (INPUT_ROLES)")

    @field_validator("inputs")
    @classmethod
    def _known_roles(cls, inputs: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [r for r in inputs if r not in INPUT_ROLES]
        if unknown or len(set(inputs)) != len(inputs):
            raise ValueError(f"inputs must be distinct roles of {INPUT_ROLES}, got {inputs}")
        missing = [r for r in CLICK_INPUTS if r not in inputs]
        if missing:
            raise ValueError(f"inputs must hold {', '.join(missing)}")
        return inputs

    @field_validator("strides")
    @classmethod
    def _one_stride_per_level(cls, strides: tuple[int, ...], info) -> tuple[int, ...]:
        channels = info.data.get("channels", ())
        if channels and len(strides) != len(channels) - 1:
            raise ValueError(f"needs len(channels) - 1 = {len(channels) - 1} strides, got {len(strides)}")
        return strides

    @property
    def in_channels(self) -> int:
        return self.image_channels + len(self.inputs) - 1

    @property
    def takes_box(self) -> bool:
        """Was this network trained with a box prompt channel?"""
        return "box" in self.inputs

    @property
    def size_multiple(self) -> int:
        """Spatial sizes must be multiples of this for the encoder/decoder to line up."""
        m = 1
        for s in self.strides:
            m *= s
        return m


class AdapterConfig(_Strict):
    """Which parameters a site tunes: the kind (`fedpoint.shared.adapter_kinds`) and its LoRA settings."""

    kind: str = "norm"
    lora_rank: int = Field(4, ge=1, le=64)
    lora_alpha: float = Field(8.0, gt=0)
    lora_freeze_a: bool = Field(True, description="Keep LoRA A fixed (seeded) so federated averages of B are exact")
    lora_seed: int = 0

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, kind: str) -> str:
        return adapter_kind(kind).name

    @property
    def rules(self) -> AdapterKind:
        """The kind's rules (`fedpoint.shared.adapter_kinds`)."""
        return adapter_kind(self.kind)


class AdaptationConfig(_Strict):
    """Online adaptation at a site: mid- and post-interaction updates and CLoPA-style episodes.

    The online guard (`guard`) keeps an update only when it does not hurt: a mid-interaction step
    is rolled back when the updated model no longer gives (Dice >= `guard_consistency`) the mask it
    just showed for the same clicks, or drops a click; a post-interaction update is rolled back when
    it lowers the one-click Dice on the last `guard_replay` accepted cases (or, before there are
    any, the Dice of the accepted image with its own clicks) by more than `guard_tolerance`.
    """

    mode: AdaptationMode = "mid+post"
    lr: float | None = Field(None, gt=0, le=1.0, description="None: the adapter kind's default (adapter_kinds: AdapterKind.lr)")
    guard: bool = Field(True, description="keep an online update only when it passes the online guard")
    guard_consistency: float = Field(0.95, ge=0, le=1.0)  # chosen on the dev split (docs/engine.md)
    guard_replay: int = Field(4, ge=0, le=64)
    guard_tolerance: float = Field(0.02, ge=0, le=1.0)
    guard_radius: float = Field(0.02, ge=0, description="trust region around the last validated adapter (RMS per value); 0: off")
    # the replay judge (fedpoint.client.replay_judge): clicks counted on held-back accepted cases
    judge: bool = Field(False, description="roll an update back when the simulated user, replayed on held-back "
                        "accepted cases, needs more clicks with it (off: the online guard alone)")
    judge_cases: int = Field(3, ge=1, le=32, description="held-back cases the judge replays (the newest)")
    judge_clicks: int = Field(5, ge=1, le=20, description="clicks the judge's simulated user makes on each")
    judge_every: int = Field(4, ge=1, le=100, description="every n-th accepted case is held back (the first included)")
    judge_tolerance: float = Field(0.01, ge=0, le=1.0, description="Dice-AUC fall allowed at equal NoC@90")
    repredict: bool = Field(False, description="after a mid update, show the updated model's mask (You Point, I "
                            "Learn) instead of the one it learnt from")
    mid_steps: int = Field(1, ge=0, le=20)
    post_steps: int = Field(1, ge=0, le=20)
    post_clicks: int = Field(10, ge=0, le=100, description="artificial clicks in stage 2, largest error components")
    ccg_beta: float = Field(200.0, ge=0)
    ccg_sigma: float = Field(3.0, gt=0)
    # CLoPA episodes on the annotation cache
    episode_fraction: float = Field(0.25, gt=0, le=1.0)
    episode_min_cases: int = Field(5, ge=2)
    episode_epochs: int = Field(4, ge=1)
    episode_iters: int = Field(10, ge=1)
    episode_max_edits: int = Field(5, ge=0)
    episode_val_clicks: int = Field(5, ge=1)
    episode_max: int | None = Field(None, ge=1, description="at most this many episodes in a campaign (none: no limit)")
    episode_lr: float | None = Field(None, gt=0, description="defaults to lr")
    seed: int = 0

    @property
    def stages(self) -> frozenset[str]:
        return MODE_STAGES[self.mode]

    @property
    def uses_mid(self) -> bool:
        return "mid" in self.stages

    @property
    def uses_post(self) -> bool:
        return "post" in self.stages

    @property
    def uses_episodes(self) -> bool:
        return "episodes" in self.stages
