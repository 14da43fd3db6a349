"""`fedpoint bench ...`: benchmarks that print measured ratios (implementations in fedpoint.benchmarks)."""

from __future__ import annotations

import json

import typer

app = typer.Typer(no_args_is_help=True)


def _emit(result: dict, as_json: bool) -> None:
    from rich.console import Console

    if as_json:
        print(json.dumps(result, indent=2))
    else:
        Console().print_json(json.dumps(result))


@app.command()
def engine(
    as_json: bool = typer.Option(False, "--json", help="Print JSON only."),
    size: int = typer.Option(256, help="Side of the 2D input."),
    repeats: int = typer.Option(30, min=5, help="Timed repetitions per measurement."),
    spatial_dims: int = typer.Option(2, min=2, max=3, help="3 measures a 3D model on a size^3 volume."),
    device: str = typer.Option("cpu", help="cpu or cuda"),
    volumes: bool = typer.Option(True, help="Also time 3D click-to-mask with the 3D base (96^3 crop, 128^3 volume)."),
) -> None:
    """Forward and click-to-mask latency, adapter step times and sizes against the full model."""
    from fedpoint.benchmarks.engine import run

    _emit(run(size=size, repeats=repeats, spatial_dims=spatial_dims, device=device, volumes=volumes), as_json)


@app.command()
def federation(as_json: bool = typer.Option(False, "--json", help="Print JSON only.")) -> None:
    """Bytes per round per adapter kind against full FedAvg, and aggregation time/memory by reply count."""
    from fedpoint.benchmarks.federation import run

    _emit(run(), as_json)


@app.command()
def robustness(
    as_json: bool = typer.Option(False, "--json", help="Print JSON only."),
    rounds: int = typer.Option(30, min=1, help="Rounds per federation."),
    seeds: int = typer.Option(3, min=1, help="Seeds per scenario (the worst displacement is reported)."),
) -> None:
    """Honest site-rounds rejected, and each attack's bank displacement against its honest twin."""
    import logging

    from fedpoint.extras import MissingExtraError, check_installed

    try:
        check_installed("flwr", feature="fedpoint bench robustness (the coordinator's strategy)")
    except MissingExtraError as err:
        from fedpoint.cli.errors import fail

        fail(str(err))
    from fedpoint.benchmarks.robustness import run

    logging.getLogger("flwr").setLevel(logging.ERROR)  # after flwr's import: one line per rejection and version otherwise
    _emit(run(rounds=rounds, seeds=tuple(range(seeds))), as_json)


@app.command()
def service(as_json: bool = typer.Option(False, "--json", help="Print JSON only.")) -> None:
    """Click round trip over HTTP against the in-process click latency."""
    from fedpoint.benchmarks.service import run

    _emit(run(), as_json)
