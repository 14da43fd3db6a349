"""`fedpoint data ...` commands."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import typer

from fedpoint.cli.errors import fail

app = typer.Typer(no_args_is_help=True)

DATA_DIR_HELP = "Data folder (default: $FEDPOINT_DATA, else ~/.cache/fedpoint/data)."


@app.command()
def prepare(
    data_dir: Path = typer.Option(None, "--data-dir", help=DATA_DIR_HELP),
    training: bool = typer.Option(
        False, "--training",
        help="Build the pre-training images instead (<data folder>/training; never the evaluation datasets).",
    ),
    source: list[str] = typer.Option(None, "--source", help="With --training: only these training sources."),
) -> None:
    """Build the built-in real datasets once; reruns verify checksums and rebuild what changed."""
    from rich.console import Console

    if training:
        _prepare_training(data_dir, source or None)
        return

    from fedpoint.data import DataError
    from fedpoint.data import prepare as prepare_data
    from fedpoint.data.builtin import resolve_data_dir

    console = Console()
    folder = resolve_data_dir(data_dir)
    console.print(f"data folder: {folder}")
    started = time.perf_counter()
    try:
        infos = prepare_data(folder, progress=True)
    except DataError as err:
        fail(str(err))
    elapsed = time.perf_counter() - started
    console.print(f"{len(infos)} datasets ready in {elapsed:.1f} s; see them with `fedpoint data list`")


def _prepare_training(data_dir: Path | None, sources: list[str] | None) -> None:
    from fedpoint.data import DataError
    from fedpoint.data.builtin import resolve_data_dir
    from fedpoint.data.training import TRAINING_DIR, prepare_training

    console = _console()
    folder = resolve_data_dir(data_dir)
    console.print(f"training folder: {folder / TRAINING_DIR}")
    started = time.perf_counter()
    try:
        with console.status("preparing training sources") as status:
            def progress(message: str) -> None:
                status.update(message)
                if not message.startswith("  "):
                    console.print(message, soft_wrap=True, markup=False)

            summaries = prepare_training(folder, names=sources, progress=progress)
    except DataError as err:
        fail(str(err))
    elapsed = time.perf_counter() - started
    images = [s for s in summaries if s["status"] != "skipped"]
    _training_table(console, images, f"training images ({elapsed:.1f} s)")
    for s in summaries:
        if s["status"] == "skipped":
            console.print(f"[yellow]skipped[/yellow] {s['name']}: {s['reason']}", soft_wrap=True)
    size = sum(s.get("bytes", 0) for s in images)
    console.print(f"{len(images)} training images ready ({size / 2**20:.1f} MiB) in {elapsed:.1f} s; "
                  "list them with `fedpoint data list --training`")


def _training_table(console, metas: list[dict], title: str) -> None:
    from rich import box
    from rich.table import Table

    table = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False)
    for column in ("name", "source", "modality", "kind", "split", "shape", "regions", "status"):
        table.add_column(column)
    for m in metas:
        table.add_row(m["name"], m["source"], m["modality"], m["kind"], m["split"],
                      "×".join(map(str, m["shape"])), str(m["regions"]), m.get("status", ""))
    console.print(table)


@app.command("list")
def list_(
    data_dir: Path = typer.Option(None, "--data-dir", help=DATA_DIR_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON list of objects instead of a table."),
    training: bool = typer.Option(False, "--training", help="List the prepared pre-training images instead."),
) -> None:
    """Show each prepared dataset: modality, cases, objects, shapes, spacing, source, licence, labels."""
    from fedpoint.data import BUILTIN_DATASETS, list_datasets

    if training:
        from fedpoint.data.training import PREPARE_COMMAND, list_training

        metas = list_training(data_dir)
        if as_json:
            typer.echo(json.dumps(metas, indent=1, default=str))
            return
        console = _console()
        if not metas:
            console.print(f"no training images prepared (run `{PREPARE_COMMAND}`)")
            return
        _training_table(console, metas, "fedpoint training images (pre-training only)")
        return

    infos = list_datasets(data_dir)
    if as_json:
        typer.echo(json.dumps([i.model_dump() for i in infos], indent=1))
        return
    from rich import box
    from rich.table import Table

    from fedpoint.data.sources import COLIN27_HINT, colin27_available

    console = _console()
    table = Table(title="fedpoint built-in datasets", box=box.SIMPLE_HEAD, pad_edge=False)
    for column in ("name", "modality", "subj.", "cases", "objects", "shape", "spacing (mm)", "labels"):
        table.add_column(column, overflow="fold")
    for info in infos:
        table.add_row(
            info.name,
            info.modality,
            str(info.subjects),
            str(info.cases),
            str(info.objects),
            "\n".join("×".join(map(str, s)) for s in info.shapes),
            "\n".join("×".join(f"{v:.3g}" for v in s) for s in info.spacing),
            info.labels,
        )
    console.print(table)
    for info in infos:
        console.print(
            f"[bold]{info.name}[/bold] objects: {', '.join(info.object_names)}. {info.notes}\n"
            f"  [dim]source:[/dim] {info.source}\n  [dim]licence:[/dim] {info.licence}"
        )
    missing = [n for n in BUILTIN_DATASETS if n not in {i.name for i in infos}]
    if "colin27-aal" in missing and not colin27_available():
        missing.remove("colin27-aal")
        console.print(COLIN27_HINT, soft_wrap=True)
    if missing:
        console.print(f"not prepared: {', '.join(missing)} (run `fedpoint data prepare`)")


@app.command()
def shifts(
    as_json: bool = typer.Option(False, "--json", help="Print a JSON object name -> description instead."),
) -> None:
    """List the named acquisition shifts (`evaluate --shift`, `shift` in a sites config)."""
    from fedpoint.data.shifts import SHIFTS

    if as_json:
        typer.echo(json.dumps(SHIFTS, indent=1))
        return
    width = max(map(len, SHIFTS))
    for name, description in SHIFTS.items():
        typer.echo(f"{name:<{width}}  {description}")


@app.command()
def sites(
    config: Path = typer.Option(..., "--config", exists=True, dir_okay=False, help="TOML file with [[sites]] tables."),
    out: Path = typer.Option(None, "--out", help="Contact sheet PNG (default: <config name>-sites.png here)."),
    data_dir: Path = typer.Option(None, "--data-dir", help=DATA_DIR_HELP),
    per_site: int = typer.Option(4, "--per-site", min=1, help="Samples shown per site."),
    strict: bool = typer.Option(False, "--strict", help="Fail on the first bad file instead of skipping it."),
) -> None:
    """Print the sites a config defines, with counts, and write a PNG contact sheet of them."""
    from rich import box
    from rich.table import Table

    from fedpoint.data import DataError, build_sites, contact_sheet, load_site_specs

    console = _console()
    try:
        specs = load_site_specs(config)
        with console.status(f"building {len(specs)} sites"):
            built = build_sites(specs, data_dir=data_dir, strict=strict)
    except (DataError, ValueError) as err:
        fail(str(err))
    table = Table(title=f"sites in {config.name}", box=box.SIMPLE_HEAD, pad_edge=False)
    for column in ("site", "dataset", "modality", "shift", "cases", "objects", "samples", "order", "joins at round"):
        table.add_column(column)
    for site in built:
        objects = {(s.case_id, s.object_name) for s in site.samples}
        table.add_row(
            site.name, site.spec.dataset, site.modality, site.shift, str(len(site.case_ids)),
            str(len(objects)), str(len(site.samples)), site.spec.order, str(site.spec.join_round),
        )
    console.print(table)
    for file, reason in sorted({item for site in built for item in site.skipped}):
        console.print(f"[yellow]skipped[/yellow] {file}: {reason}", soft_wrap=True)
    path = contact_sheet(built, out or Path(f"{config.stem}-sites.png"), per_site=per_site)
    console.print(f"contact sheet: {path}")


def _console():
    """Piped output (no terminal to measure) gets a width the tables fit in, not rich's 80."""
    from rich.console import Console

    return Console() if sys.stdout.isatty() else Console(width=120)
