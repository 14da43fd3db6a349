"""`fedpoint simulate`: simulated federation experiments."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def simulate(
    config: str = typer.Option("demo", "--config", "-c",
                               help="A packaged experiment (`fedpoint simulate --list`) or an experiment TOML file."),
    out: Path = typer.Option(Path("results/demo"), "--out", "-o", help="Output folder: results.json, report.md, plots."),
    full: bool = typer.Option(False, "--full", help="Apply the config's 'full' table: more seeds, longer streams."),
    strategies: Optional[str] = typer.Option(None, help="Comma-separated subset of the strategies, e.g. frozen,fed-banks."),
    seeds: Optional[int] = typer.Option(None, min=1, help="Run seeds 0..N-1 instead of the config's seeds."),
    base: Optional[str] = typer.Option(None, help="Base checkpoint (default: the config's, else the packaged base2d)."),
    data_dir: Optional[Path] = typer.Option(None, envvar="FEDPOINT_DATA", help="Built-in data folder."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
    list_: bool = typer.Option(False, "--list", help="List the packaged experiments and exit."),
) -> None:
    """Run every strategy on the same site streams and write results.json, report.md and plots.

    Needs the 'simulation' extra: pip install 'fedpoint[simulation]'."""
    import sys

    from rich.console import Console

    from fedpoint.cli.errors import fail
    from fedpoint.extras import MissingExtraError, check_installed

    if list_:
        for name, description in packaged_experiments().items():
            typer.echo(f"{name}\t{description}")
        return
    if not config.endswith(".toml") and config not in packaged_experiments():
        fail(f"--config: {config!r} is not an experiment; packaged experiments: "
             f"{', '.join(packaged_experiments())}, or give the path of an experiment TOML file")
    if config.endswith(".toml") and not Path(config).is_file():
        fail(f"--config: no file {config}")
    try:
        check_installed("flwr", "ray", "matplotlib", feature="fedpoint simulate", extra="simulation")
    except MissingExtraError as err:
        fail(str(err))

    from fedpoint.simulations.experiment import ExperimentError, load_experiment

    # Piped or logged output has no terminal width to measure: give the table room.
    console = Console() if sys.stdout.isatty() else Console(width=120)
    try:
        experiment = load_experiment(
            config, full=full, base=base, seeds=list(range(seeds)) if seeds else None,
            strategies=[s.strip() for s in strategies.split(",") if s.strip()] if strategies else None)
    except (ExperimentError, FileNotFoundError) as err:
        fail(f"--config: {err}")

    from fedpoint.simulations.runner import run_experiment

    console.print(f"experiment [bold]{experiment.name}[/]: {len(experiment.sites)} sites, {experiment.rounds} rounds x "
                  f"{experiment.images_per_round} images, seeds {experiment.seeds}, {len(experiment.strategies)} strategies")
    try:
        results = run_experiment(experiment, out, progress=not quiet, data_dir=data_dir, full=full)
    except (ExperimentError, FileNotFoundError) as err:
        fail(str(err))
    console.print(headline_table(results))
    for target in results["targets"]:
        mark = {True: "[green]held[/]", False: "[red]missed[/]", None: "[yellow]not measured[/]"}[target["held"]]
        console.print(f"  {mark}  {target['text']}")
    for companion in results.get("companions", []):
        console.print(f"companion [bold]{companion['name']}[/]: {Path(out) / companion['folder'] / 'report.md'}")
        for row in companion["second_half"]:
            if "reduction" in row:
                console.print(f"  {row['strategy']} {row['metric']} second half: {100 * row['reduction']:+.0f}% fewer "
                              f"clicks than frozen [{100 * row['reduction_low']:+.0f}, {100 * row['reduction_high']:+.0f}]")
    console.print(f"report: {Path(out) / 'report.md'}   results: {Path(out) / 'results.json'}   "
                  f"({results['seconds']:.0f} s)")


def packaged_experiments() -> dict[str, str]:
    """Packaged configs that are experiments (`name` + `rounds`), not plain `[[sites]]` files, with
    their descriptions."""
    import tomllib

    from fedpoint.configs import HERE

    found = {}
    for path in sorted(HERE.glob("*.toml")):
        try:
            table = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError:
            continue
        if "rounds" in table or "strategies" in table:
            found[path.stem] = str(table.get("description", "")).strip().splitlines()[0] if table.get("description") else ""
    return found


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
