"""What `fedpoint pretrain` trains and how: light (no torch), so the CLI can show its defaults."""

from __future__ import annotations

from dataclasses import dataclass, field

# The packaged 2D base's network (see docs/engine.md for the measurement that chose it), as
# ModelConfig fields: `fedpoint.simulations.pretrain.BASE_MODEL` builds it (pydantic stays off
# `fedpoint --help`).
BASE_MODEL_FIELDS = dict(arch="dynunet", channels=(8, 16, 32, 64, 128, 256), strides=(2, 2, 2, 2, 2),
                         num_res_units=0, input_size=96)
METRIC_KEYS = ("dice1", "dice3", "dice5", "dice10", "noc85", "noc90", "nof")


@dataclass
class PretrainConfig:
    sources: tuple[str, ...] = ()    # training images by name; () = every prepared one of the train split
    steps: int = 4500
    batch: int = 8
    lr: float = 2e-3
    weight_decay: float = 1e-5
    max_clicks: int = 20             # clicks of the longest simulated interaction
    click_decay: float = 0.75        # P(extra clicks = k) ~ decay ** k: mean 3, up to max_clicks - 1
    ccg_beta: float = 200.0
    ccg_sigma: float = 3.0
    synthetic: float = 0.12          # share of synthetic shapes among the objects
    val_objects: int = 60
    val_clicks: int = 20
    seed: int = 0
    threads: int | None = None
    checkpoint_minutes: float = 3.0
    checkpoint_steps: int = 0        # > 0: also every n steps (tests)
    extra: dict = field(default_factory=dict)


PRETRAIN_DEFAULTS = PretrainConfig()
