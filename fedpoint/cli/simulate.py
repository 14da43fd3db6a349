"""`fedpoint simulate`: simulated federation experiments."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def simulate(
    config: str = typer.Option("demo", "--config", "-c", help="A packaged experiment (demo, tiny, ...) or a TOML file."),
    out: Path = typer.Option(Path("results/demo"), "--out", "-o", help="Output folder: results.json, report.md, plots."),
    full: bool = typer.Option(False, "--full", help="Use the config's [full] table: more seeds, longer streams."),
    strategies: Optional[str] = typer.Option(None, help="Comma-separated subset of the strategies, e.g. frozen,fed-banks."),
    seeds: Optional[int] = typer.Option(None, min=1, help="Run seeds 0..N-1 instead of the config's seeds."),
    base: Optional[str] = typer.Option(None, help="Base checkpoint (default: the config's, else the packaged base2d)."),
    data_dir: Optional[Path] = typer.Option(None, envvar="FEDPOINT_DATA", help="Built-in data folder."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    """Run every strategy on the same site streams and write results.json, report.md and plots."""
    import sys

    from rich.console import Console

    from fedpoint.simulations.experiment import ExperimentError, load_experiment

    # Piped or logged output has no terminal width to measure: give the table room.
    console = Console() if sys.stdout.isatty() else Console(width=120)
    try:
        experiment = load_experiment(
            config, full=full, base=base, seeds=list(range(seeds)) if seeds else None,
            strategies=[s.strip() for s in strategies.split(",") if s.strip()] if strategies else None)
    except (ExperimentError, FileNotFoundError) as err:
        Console(stderr=True).print(f"[bold red]error:[/] {err}")
        raise typer.Exit(2) from err

    from fedpoint.simulations.runner import run_experiment

    console.print(f"experiment [bold]{experiment.name}[/]: {len(experiment.sites)} sites, {experiment.rounds} rounds x "
                  f"{experiment.images_per_round} images, seeds {experiment.seeds}, {len(experiment.strategies)} strategies")
    try:
        results = run_experiment(experiment, out, progress=not quiet, data_dir=data_dir)
    except (ExperimentError, FileNotFoundError) as err:
        Console(stderr=True).print(f"[bold red]error:[/] {err}")
        raise typer.Exit(2) from err
    console.print(headline_table(results))
    for target in results["targets"]:
        mark = {True: "[green]held[/]", False: "[red]missed[/]", None: "[yellow]not measured[/]"}[target["held"]]
        console.print(f"  {mark}  {target['text']}")
    console.print(f"report: {Path(out) / 'report.md'}   results: {Path(out) / 'results.json'}   "
                  f"({results['seconds']:.0f} s)")


def headline_table(results: dict):
    from rich.table import Table

    from fedpoint.simulations.report import HEADLINE_COLUMNS, headline_rows

    scope = next(iter(results["headline"].values()), {}).get("scope", "shifted")
    table = Table(title=f"headline ({scope} sites; late joiners' first round)")
    table.add_column("strategy")
    for _, label, _ in HEADLINE_COLUMNS:
        table.add_column(label, justify="right")
    for row in headline_rows(results["headline"]):
        table.add_row(*row, style="bold" if row[0] == "fed-banks" else None)
    return table


def register(app: typer.Typer) -> None:
    """Add the `simulate` command to the main app."""
    app.command("simulate")(simulate)
