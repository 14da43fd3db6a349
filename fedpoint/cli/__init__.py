"""The `fedpoint` command. Thin: each group lives in its own module and imports heavy libraries
(torch, monai, peft, flwr) only inside the command that needs them, so `fedpoint --help` is fast."""

from __future__ import annotations

import typer

from fedpoint.cli import bank, bench, data, engine, simulate, site

app = typer.Typer(
    name="fedpoint",
    help="Federated, continual adaptation of interactive medical image segmentation.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)
engine.register(app)
app.add_typer(data.app, name="data", help="Built-in real datasets, your own datasets, and sites.")
app.add_typer(bank.app, name="bank", help="Inspect and export the coordinator's adapter banks.")
app.add_typer(site.app, name="site", help="Run a site's annotation service.")
app.add_typer(bench.app, name="bench", help="Benchmarks that print measured ratios.")
simulate.register(app)


def main() -> None:
    app()
