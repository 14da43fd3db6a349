"""`fedpoint pretrain` and `fedpoint evaluate`."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Optional

import typer


def _fail(message: str) -> None:
    from rich.console import Console

    Console(stderr=True).print(f"[bold red]error:[/] {message}")
    raise typer.Exit(2)


def pretrain(
    out: Path = typer.Option(Path("base2d"), help="Checkpoint path without suffix (.safetensors and .json are written)."),
    datasets: str = typer.Option("mni152", help="Built-in datasets to train on, comma-separated (e.g. mni152,colin27-aal)."),
    steps: int = typer.Option(1500, min=1, help="Optimizer steps."),
    size: int = typer.Option(128, min=32, help="Side of the 2D training crops."),
    batch: int = typer.Option(8, min=1),
    lr: float = typer.Option(1e-3, min=0.0),
    seed: int = typer.Option(0),
    threads: Optional[int] = typer.Option(None, min=1, help="CPU threads (the packaged base used 1)."),
    data_dir: Optional[Path] = typer.Option(None, envvar="FEDPOINT_DATA", help="Built-in data folder."),
) -> None:
    """Train the base interactive model on the MNI152 template's tissue masks with simulated clicks."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from fedpoint.simulations.pretrain import PretrainConfig, pretrain as run

    cfg = PretrainConfig(datasets=tuple(d.strip() for d in datasets.split(",") if d.strip()), steps=steps, size=size, batch=batch, lr=lr, seed=seed, threads=threads)
    with Progress(TextColumn("pretrain"), BarColumn(), TextColumn("{task.completed}/{task.total} loss {task.fields[loss]:.3f}"),
                  TimeRemainingColumn()) as bar:
        task = bar.add_task("train", total=steps, loss=float("nan"))
        card = run(cfg, out, data_dir=data_dir, on_step=lambda s, loss: bar.update(task, completed=s, loss=loss))
    Console().print_json(json.dumps({"checkpoint": str(out), "validation": card["validation"]}))


def evaluate(
    data: str = typer.Option("pyradiomics-brain", help="Built-in dataset name or a dataset folder (MSD, nnU-Net v2, image/label pairs)."),
    mode: str = typer.Option("mid+post", help="frozen | mid | post | mid+post | episodes | mid+post+episodes"),
    adapter: str = typer.Option("norm", help="Adapter kind: norm | norm+stem | lora | full"),
    adapter_dir: Optional[Path] = typer.Option(None, help="Start from a saved adapter (e.g. an exported bank)."),
    base: Optional[str] = typer.Option(None, help="Base checkpoint (default: the packaged 2D base)."),
    clicks: int = typer.Option(10, min=1, max=50, help="Clicks per image."),
    images: Optional[int] = typer.Option(None, min=1, help="Stop after this many images."),
    shift: str = typer.Option("none", help="Acquisition shift applied to every image (see `fedpoint data sites`)."),
    size: int = typer.Option(128, min=16, help="Side of the 2D crops around each object."),
    lr: Optional[float] = typer.Option(None, min=0.0, help="Adapter learning rate (default: the adapter kind's)."),
    seed: int = typer.Option(0),
    out: Optional[Path] = typer.Option(None, help="Write per-image results and the summary as JSON."),
    store: Optional[Path] = typer.Option(None, help="Site store for the annotation cache (default: a temporary folder)."),
    data_dir: Optional[Path] = typer.Option(None, envvar="FEDPOINT_DATA"),
    strict: bool = typer.Option(False, help="Fail on the first bad file instead of skipping it."),
) -> None:
    """Annotate a stream of images with the simulated user and report Dice@k, NoC and timings."""
    from rich.console import Console

    from fedpoint.simulations.evaluation import EvaluationSpec, run_evaluation, summary_table

    try:
        spec = EvaluationSpec(data=data, mode=mode, adapter=adapter, base=base, clicks=clicks, images=images, shift=shift,
                              size=size, lr=lr, seed=seed, strict=strict)
    except ValueError as err:
        _fail(str(err))
    with tempfile.TemporaryDirectory(prefix="fedpoint-eval-") as tmp:
        try:
            result = run_evaluation(spec, store or Path(tmp), data_dir=data_dir, adapter_dir=adapter_dir, progress=True)
        except (ValueError, FileNotFoundError) as err:
            _fail(str(err))
    console = Console()
    console.print(summary_table({mode: result["summary"]}, title=f"{spec.data}: {len(result['images'])} images, {clicks} clicks"))
    for name, reason in result.get("skipped", []):
        console.print(f"[yellow]skipped[/] {name}: {reason}")
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2))
        console.print(f"results: {out}")


def register(app: typer.Typer) -> None:
    """Add the engine commands to the main app."""
    app.command()(pretrain)
    app.command()(evaluate)
