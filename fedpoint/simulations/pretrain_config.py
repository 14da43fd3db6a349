"""What `fedpoint pretrain` trains and how: light (no torch), so the CLI can show its defaults."""

from __future__ import annotations

from dataclasses import dataclass, field

from fedpoint.shared.metrics import CLICK_METRICS

# The packaged 2D base's network (see docs/engine.md for the measurement that chose it), as
# ModelConfig fields: `fedpoint.simulations.pretrain.BASE_MODEL` builds it (pydantic stays off
# `fedpoint --help`).
BASE_MODEL_FIELDS = dict(arch="dynunet", channels=(8, 16, 32, 64, 128, 256), strides=(2, 2, 2, 2, 2),
                         num_res_units=0, input_size=96, inputs=("image", "pos", "neg", "prev", "box"))
# The packaged 3D base: MONAI's UNet (its first convolution strides), which on the 2-core CPU trains
# 4-5x faster a step than a 3D DynUNet with a full-resolution level; a 48^3 working size, since a
# correction click at 64^3 (four network passes) cost 667 ms p95 on that CPU (bench: docs/engine.md).
BASE3D_MODEL_FIELDS = dict(arch="unet", spatial_dims=3, channels=(16, 32, 64, 128, 256), strides=(2, 2, 2, 2),
                           num_res_units=1, input_size=48)
METRIC_KEYS = CLICK_METRICS  # the validation's per-object means


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
    spatial_dims: int = 2
    context_range: tuple[float, float] = (1.0, 5.0)  # first-click crop side, in working sizes (log-uniform)
    p_box: float = 0.5               # share of interactions that start with a box (bases with a box input)
    min_voxels: int = 12             # smallest object component drawn
    spacing_mm: float = 1.5          # 3D: volumes resampled to this isotropic spacing
    init: str | None = None          # start from this base's weights (a packaged name or a path); new input roles start at zero
    extra: dict = field(default_factory=dict)


PRETRAIN_DEFAULTS = PretrainConfig()
# 3D: 48^3 crops of volumes at 1.5 mm; a step costs about 1.1 s on the 2-core CPU, so fewer and
# smaller batches; crops up to 2 working sizes (96^3 native voxels). 2000 steps (38 min) matched or
# beat 4000 on the dev volumes (docs/engine.md), so the packaged base3d is the 2000-step run.
PRETRAIN3D_DEFAULTS = PretrainConfig(steps=2000, batch=3, lr=2e-3, click_decay=0.6, max_clicks=12, synthetic=0.15,
                                     val_objects=30, val_clicks=10, spatial_dims=3, context_range=(1.0, 2.0),
                                     min_voxels=100)


def defaults_for(spatial_dims: int) -> PretrainConfig:
    return PRETRAIN3D_DEFAULTS if spatial_dims == 3 else PRETRAIN_DEFAULTS
