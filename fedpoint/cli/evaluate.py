"""`fedpoint pretrain` and `fedpoint evaluate`."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Optional

import typer

from fedpoint.cli.choices import ADAPTER_KINDS, MODES, SHIFTS, VOLUME_ROUTES, choice
from fedpoint.shared.adapter_kinds import adapter_kind
from fedpoint.simulations.pretrain_config import PRETRAIN3D_DEFAULTS, PRETRAIN_DEFAULTS


def _fail(message: str) -> None:
    from rich.console import Console

    Console(stderr=True).print(f"[bold red]error:[/] {message}")
    raise typer.Exit(2)


def _plain_progress(console, steps: int):
    """Where there is no terminal (a background run writing to a log), a line every 100 steps
    with the rate and the ETA; rich's bar draws nothing there."""
    every = 100
    import time

    start = {"t": None, "step": 0}

    def line(step: int, loss: float) -> None:
        if console.is_terminal:
            return
        if start["t"] is None:
            start.update(t=time.perf_counter(), step=step)
            return
        if step % every == 0 or step == steps:
            rate = (time.perf_counter() - start["t"]) / max(step - start["step"], 1)
            print(f"pretrain step {step}/{steps} loss {loss:.4f} {rate:.2f} s/step ETA {(steps - step) * rate / 60:.1f} min",
                  flush=True)

    return line


def _stop_on_sigterm() -> None:
    import signal

    def stop(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)  # a background job starts with SIGINT ignored


def pretrain(
    out: Optional[Path] = typer.Option(None, help="Checkpoint path without suffix (.safetensors, .json card and .ckpt are written); default base2d / base3d."),
    spatial_dims: int = typer.Option(2, min=2, max=3, help="2: the 2D base on slices and images; 3: the 3D base on volumes."),
    sources: str = typer.Option("", help="Training images by name, comma-separated (default: every prepared image of the train split)."),
    steps: Optional[int] = typer.Option(None, min=1, help=f"Optimizer steps (default {PRETRAIN_DEFAULTS.steps} in 2D, {PRETRAIN3D_DEFAULTS.steps} in 3D)."),
    batch: Optional[int] = typer.Option(None, min=1, help=f"Objects a step (default {PRETRAIN_DEFAULTS.batch} in 2D, {PRETRAIN3D_DEFAULTS.batch} in 3D)."),
    lr: Optional[float] = typer.Option(None, min=0.0, help=f"Peak learning rate (default {PRETRAIN_DEFAULTS.lr})."),
    max_clicks: Optional[int] = typer.Option(None, min=1, max=50, help="Clicks of the longest simulated interaction."),
    seed: int = typer.Option(0),
    threads: Optional[int] = typer.Option(None, min=1, help="CPU threads (default: torch's choice)."),
    resume: bool = typer.Option(False, help="Continue from <out>.ckpt (written every few minutes and on Ctrl-C)."),
    init: Optional[str] = typer.Option(None, help="Start from this base's weights (a packaged name such as base2d, or a path); input roles it lacks start at zero."),
    checkpoint_minutes: float = typer.Option(PRETRAIN_DEFAULTS.checkpoint_minutes, min=0.1),
    data_dir: Optional[Path] = typer.Option(None, envvar="FEDPOINT_DATA", help="Data folder (prepared with `fedpoint data prepare --training`)."),
) -> None:
    """Train a base interactive model (2D, or 3D on volumes) with iterative simulated clicks on the training sources."""
    from dataclasses import replace

    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from fedpoint.simulations.pretrain import checkpoint_path, pretrain as run
    from fedpoint.simulations.pretrain_config import defaults_for

    given = dict(steps=steps, batch=batch, lr=lr, max_clicks=max_clicks, init=init)
    cfg = replace(defaults_for(spatial_dims), sources=tuple(d.strip() for d in sources.split(",") if d.strip()), seed=seed,
                  threads=threads, checkpoint_minutes=checkpoint_minutes, **{k: v for k, v in given.items() if v is not None})
    steps = cfg.steps
    out = out or Path("base3d" if spatial_dims == 3 else "base2d")
    console = Console()
    _stop_on_sigterm()  # `kill <pid>` of a background run saves its checkpoint, like Ctrl-C
    if resume and not checkpoint_path(out).exists():
        console.print(f"[yellow]no checkpoint at {checkpoint_path(out).name}: starting from step 1[/]")
    try:
        with Progress(TextColumn("pretrain"), BarColumn(), TextColumn("{task.completed}/{task.total} loss {task.fields[loss]:.3f}"),
                      TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn()) as bar:
            task = bar.add_task("train", total=steps, loss=float("nan"))
            log_line = _plain_progress(console, steps)

            def on_step(step: int, loss: float) -> None:
                bar.update(task, completed=step, loss=loss)
                log_line(step, loss)

            card = run(cfg, out, data_dir=data_dir, resume=resume, on_step=on_step)
    except KeyboardInterrupt:
        console.print(f"[yellow]interrupted: progress saved in {checkpoint_path(out)}; continue with --resume[/]")
        raise typer.Exit(130)
    except ValueError as err:
        _fail(str(err))
    console.print_json(json.dumps({"checkpoint": str(out), "validation": card["validation"], "seconds": card["training"]["seconds"]}))


def evaluate(
    data: str = typer.Option("pyradiomics-brain", help="Built-in dataset name or a dataset folder (MSD, nnU-Net v2, image/label pairs)."),
    mode: str = typer.Option("mid+post", click_type=choice(MODES), help="Adaptation mode."),
    adapter: str = typer.Option("norm", click_type=choice(ADAPTER_KINDS),
                                help="Adapter kind (lora needs the 'lora' extra)."),
    adapter_dir: Optional[Path] = typer.Option(None, help="Start from a saved adapter (e.g. an exported bank)."),
    base: Optional[str] = typer.Option(None, help="Base checkpoint (default: the packaged 2D base)."),
    clicks: int = typer.Option(10, min=1, max=50, help="Clicks per image."),
    images: Optional[int] = typer.Option(None, min=1, help="Stop after this many images."),
    shift: str = typer.Option("none", click_type=choice(SHIFTS),
                              help="Acquisition shift applied to every image (described by `fedpoint data shifts`)."),
    size: int = typer.Option(128, min=16, help="Side of the 2D crops around each object."),
    lr: Optional[float] = typer.Option(None, min=0.0, help="Adapter learning rate (default: the adapter kind's)."),
    seed: int = typer.Option(0),
    out: Optional[Path] = typer.Option(None, help="Write per-image results and the summary as JSON."),
    as_json: bool = typer.Option(False, "--json", help="Print the results as JSON on stdout (no table, no progress bar)."),
    store: Optional[Path] = typer.Option(None, help="Site store for the annotation cache (default: a temporary folder)."),
    data_dir: Optional[Path] = typer.Option(None, envvar="FEDPOINT_DATA"),
    strict: bool = typer.Option(False, help="Fail on the first bad file instead of skipping it."),
    full_slice: bool = typer.Option(False, "--full-slice", help="Whole slices at native resolution (one per object "
                                    "and slice) instead of crops around each object; the focus crop zooms."),
    split_components: bool = typer.Option(False, help="Each connected component of an object is its own target."),
    prompt: str = typer.Option("click", click_type=choice(("click", "box")),
                               help="The first interaction: a click at the object's deepest point, or a tight box "
                                    "around it (then clicks at the largest error, the CVPR 2025 challenge's protocol)."),
    route: Optional[str] = typer.Option(None, click_type=choice(VOLUME_ROUTES),
                                        help="Volumes: 'propagate' (the 2D base, its mask carried through the slices) or "
                                             "'3d' (the 3D base, default base3d); --clicks counts interactions on the volume."),
) -> None:
    """Annotate a stream of images with the simulated user and report Dice@k, NoC and timings."""
    from rich.console import Console

    from fedpoint.cli.errors import describe, fail

    needs = adapter_kind(adapter).requires
    if needs:
        from fedpoint.extras import MissingExtraError, check_installed

        try:
            check_installed(*needs, feature=f"--adapter {adapter}")
        except MissingExtraError as err:
            fail(str(err))
    from fedpoint.simulations.evaluation import EvaluationSpec, run_evaluation, summary_table

    try:
        spec = EvaluationSpec(data=data, mode=mode, adapter=adapter, base=base, clicks=clicks, images=images, shift=shift,
                              size=size, lr=lr, seed=seed, strict=strict, full_slice=full_slice,
                              split_components=split_components, prompt=prompt, route=route)
    except ValueError as err:
        fail(describe(err))
    with tempfile.TemporaryDirectory(prefix="fedpoint-eval-") as tmp:
        try:
            result = run_evaluation(spec, store or Path(tmp), data_dir=data_dir, adapter_dir=adapter_dir,
                                    progress=not as_json)
        except (ValueError, FileNotFoundError) as err:
            fail(describe(err))
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2))
    if as_json:
        typer.echo(json.dumps(result, indent=1))
        return
    console = Console()
    console.print(summary_table({mode: result["summary"]}, title=f"{spec.data}: {len(result['images'])} "
                                f"{'volumes, route ' + route if route else 'full slices' if full_slice else 'images'}, {clicks} "
                                f"{'interactions (a box, then clicks)' if prompt == 'box' else 'clicks'}"))
    for name, reason in result.get("skipped", []):
        console.print(f"[yellow]skipped[/] {name}: {reason}")
    if out:
        console.print(f"results: {out}")


def register(app: typer.Typer) -> None:
    """Add the engine commands to the main app."""
    app.command()(pretrain)
    app.command()(evaluate)
