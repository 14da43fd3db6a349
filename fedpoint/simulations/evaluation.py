"""`fedpoint evaluate`: one dataset stream, one adapter kind, one adaptation mode.

Samples are object crops of `size` (the default) or, with `full_slice`, whole slices at native
resolution (the same objects and slices), where the session's focus crop does the zooming. A 3D
base (`--base base3d`) takes whole volumes at native resolution with their voxel spacing: the
clicks, the focus crop and Dice are 3D.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator

from fedpoint.shared.config import AdaptationConfig, AdaptationMode, AdapterConfig
from fedpoint.shared.metrics import BOX_METRICS, DICE_AUC, HEADERS, SUMMARY_COLUMNS, is_fraction


class EvaluationSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    data: str
    mode: AdaptationMode = "mid+post"
    adapter: str = "norm"
    base: Optional[str] = None
    clicks: int = Field(10, ge=1, le=50)
    images: Optional[int] = Field(None, ge=1)
    shift: str = "none"
    size: int = Field(128, ge=16)
    lr: Optional[float] = Field(None, gt=0)
    seed: int = 0
    strict: bool = False
    full_slice: bool = Field(False, description="whole slices at native resolution instead of object crops")
    split_components: bool = Field(False, description="each connected component of an object is its own target")
    context: Optional[int] = Field(None, ge=16, description="first-click window side in voxels (default: the focus crop's)")
    context_mm: Optional[float] = Field(None, gt=0, description="3D: first-click cube side in mm (default CONTEXT_MM_3D; choosing it only)")
    prompt: Literal["click", "box"] = Field("click", description="first interaction: a click, or a tight box (then clicks)")
    scales: Optional[tuple[float, ...]] = Field(None, description="first click: window sides tried, x context (default: the focus crop's)")
    scale_rule: Optional[str] = Field(None, description="first click: how a window is chosen among `scales` (default: the focus crop's)")
    guard: bool = Field(True, description="the online guard (off only to measure what it prevents)")
    guard_consistency: Optional[float] = Field(None, ge=0, le=1, description="override the guard's mid threshold (tuning only)")
    guard_tolerance: Optional[float] = Field(None, ge=0, le=1, description="override the guard's post tolerance (tuning only)")
    tune: dict = Field(default_factory=dict, description="other AdaptationConfig fields to override (tuning and "
                       "ablations on the dev split only), e.g. {'judge': True, 'mid_steps': 3}")
    route: Optional[Literal["propagate", "3d"]] = Field(None, description="volumes: 'propagate' (the 2D base "
                                                         "through the slices) or '3d' (the 3D base); clicks are interactions on the volume")

    @field_validator("tune")
    @classmethod
    def _tune(cls, fields: dict) -> dict:
        fixed = sorted(set(fields) & {"mode", "lr", "seed", "guard", "guard_consistency", "guard_tolerance"})
        if fixed:
            raise ValueError(f"{', '.join(fixed)}: a field of the spec itself, not of `tune`")
        AdaptationConfig(**fields)  # unknown fields and bad values refused here, by name
        return fields

    @field_validator("adapter")
    @classmethod
    def _adapter(cls, kind: str) -> str:
        AdapterConfig(kind=kind)
        return kind


def load_stream(spec: EvaluationSpec, data_dir: Path | None = None):
    """Samples of a dataset in a fixed shuffled order, shifted if asked; plus what was skipped."""
    import numpy as np

    from fedpoint.data import apply_shift, full_slice_samples, load_dataset, make_samples
    from fedpoint.data.samples import LazyVolumes, volume_refs

    dataset = load_dataset(spec.data, data_dir=data_dir, strict=spec.strict)

    def shifted(sample, i: int):  # the stream's i-th sample, under the spec's shift (seeded by position)
        if spec.shift != "none":
            sample.image = apply_shift(sample.image, spec.shift, spec.seed * 100003 + i)
        return sample

    route = volume_route(spec)
    if route is not None:  # whole volumes: the 3D focus crop, or propagation through the slices
        volumes = [c for c in dataset.cases if c.ndim == 3]
        if not volumes and route == "propagate":
            raise ValueError(f"{spec.data}: route 'propagate' needs volumes; the dataset has no volumes (drop --route for 2D images)")
        if not volumes:
            raise ValueError(f"{spec.data}: the base is 3D but the dataset has no volumes (use a 2D base for 2D images)")
        for case in volumes:
            _check_spacing(case)
        # Built one at a time as the stream reaches them (same order and shifts as a list would get).
        samples = LazyVolumes(volume_refs(volumes, split_components=spec.split_components))
    elif spec.full_slice:  # the same objects and slices, not cropped: the session's focus crop does the zooming
        samples = full_slice_samples(dataset, spatial_dims=2, split_components=spec.split_components)
    else:
        samples = make_samples(dataset, spatial_dims=2, size=(spec.size, spec.size), seed=spec.seed,
                               split_components=spec.split_components)
    if not len(samples):
        raise ValueError(f"{spec.data}: no object large enough to annotate")
    order = np.random.default_rng(spec.seed).permutation(len(samples))[: spec.images]
    if isinstance(samples, LazyVolumes):
        return LazyVolumes([samples.refs[i] for i in order], shifted), dataset.skipped
    return [shifted(samples[i], k) for k, i in enumerate(order)], dataset.skipped


def volume_route(spec: EvaluationSpec) -> str | None:
    """How the stream's volumes are annotated: the spec's route, "3d" for a 3D base without one,
    None for 2D work. A route and a base that do not fit are refused."""
    from fedpoint.shared.bases import base_config, locate_base

    dims = base_config(locate_base(route_base(spec))).spatial_dims
    if spec.route == "propagate" and dims != 2:
        raise ValueError("route: 'propagate' carries the 2D base through the slices; give a 2D base (or none)")
    if spec.route == "3d" and dims != 3:
        raise ValueError("route: '3d' needs a 3D base such as base3d (or none)")
    return spec.route or ("3d" if dims == 3 else None)


def route_base(spec: EvaluationSpec) -> str | None:
    """The base a route runs on when none is given: base3d for '3d', the packaged 2D base otherwise."""
    return spec.base if spec.base is not None or spec.route != "3d" else "base3d"


def _check_spacing(case) -> None:
    from fedpoint.shared.clicks import check_spacing

    try:
        check_spacing(tuple(case.spacing or ()), 3)
    except ValueError as err:
        raise ValueError(f"{case.case_id}: {err}; the 3D base measures clicks and windows in mm") from None


def run_evaluation(spec: EvaluationSpec, store: Path, data_dir: Path | None = None, adapter_dir: Path | None = None,
                   progress: bool = False) -> dict:
    from fedpoint.client.engine import SiteEngine
    from fedpoint.client.stream import run_stream, summarize_stream

    samples, skipped = load_stream(spec, data_dir)
    overrides = {k: v for k in ("guard_consistency", "guard_tolerance") if (v := getattr(spec, k)) is not None}
    adaptation = AdaptationConfig(mode=spec.mode, lr=spec.lr, seed=spec.seed, guard=spec.guard, **overrides, **spec.tune)
    engine = SiteEngine.create(route_base(spec), AdapterConfig(kind=spec.adapter), adaptation, store,
                               campaign_size=len(samples), background_episodes=False, adapter_dir=adapter_dir,
                               focus=focus_config(spec))
    t0 = time.perf_counter()
    if progress:
        from rich.progress import BarColumn, Progress, TextColumn

        with Progress(TextColumn(f"{spec.mode}"), BarColumn(), TextColumn("{task.completed}/{task.total} Dice@3 {task.fields[d3]:.3f}")) as bar:
            task = bar.add_task("images", total=len(samples), d3=0.0)
            done: list[float] = []

            def tick(i: int, rec: dict) -> None:
                done.append(rec["dice3"])
                bar.update(task, completed=i + 1, d3=sum(done) / len(done))

            records = run_stream(engine, samples, spec.clicks, on_image=tick, prompt=spec.prompt, route=spec.route)
    else:
        records = run_stream(engine, samples, spec.clicks, prompt=spec.prompt, route=spec.route)
    episodes = [r.as_dict() for r in engine.scheduler.results] if engine.scheduler else []
    return {
        "spec": spec.model_dump(),
        "summary": summarize_stream(records),
        "images": records,
        "episodes": episodes,
        "skipped": [list(s) for s in skipped],
        "seconds": round(time.perf_counter() - t0, 2),
    }


def focus_config(spec: EvaluationSpec):
    """The focus crop a spec asks for: the defaults, with what the spec overrides (tuning only)."""
    from fedpoint.shared.focus import FocusConfig

    given = {k: v for k, v in (("scales", spec.scales), ("rule", spec.scale_rule)) if v is not None}
    return FocusConfig(context=spec.context, context_mm=spec.context_mm, **given)


def summary_table(summaries: dict[str, dict], title: str = ""):
    from rich.table import Table

    from fedpoint.shared.volume_user import INTERACTION_P95

    columns = SUMMARY_COLUMNS
    if all(INTERACTION_P95 in s for s in summaries.values()):  # volumes by a route: Dice-AUC and p95 s per interaction
        columns = (*SUMMARY_COLUMNS[:-2], DICE_AUC, INTERACTION_P95)
    table = Table(title=title)
    table.add_column("mode", no_wrap=True)
    columns = columns + tuple(k for k in BOX_METRICS if all(k in s for s in summaries.values()))
    for col in columns:
        table.add_column(HEADERS.get(col, "p95 ms/interaction"), justify="right", no_wrap=True)
    for name, s in summaries.items():
        table.add_row(name, *(f"{s[c]:.3f}" if is_fraction(c) else f"{s[c]:.1f}" for c in columns))
    return table
