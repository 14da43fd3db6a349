"""The `fedpoint` command. Thin: each group lives in its own module and imports heavy libraries
(torch, monai, peft, flwr) only inside the command that needs them, so `fedpoint --help` is fast.

User errors print `error: ...` and exit 2 (`fedpoint.cli.errors`); a feature whose optional extra is
not installed is a user error too, and its message names the extra to install."""

from __future__ import annotations

from typing import Optional

import typer

from fedpoint.cli import bank, bench, data, evaluate, simulate, site

app = typer.Typer(
    name="fedpoint",
    help="Federated, continual adaptation of interactive medical image segmentation. "
         "Research software, not a medical device.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)


def _version(value: bool) -> None:
    if value:
        from fedpoint import __version__

        typer.echo(f"fedpoint {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Optional[bool] = typer.Option(None, "--version", callback=_version, is_eager=True,
                                           help="Print fedpoint's version and exit."),
) -> None:
    """Federated, continual adaptation of interactive medical image segmentation.
    Research software, not a medical device."""


evaluate.register(app)
app.add_typer(data.app, name="data", help="Built-in real datasets, your own datasets, shifts and sites.")
app.add_typer(bank.app, name="bank", help="Inspect and export the coordinator's adapter banks.")
app.add_typer(site.app, name="site", help="Run a site's annotation service.")
app.add_typer(bench.app, name="bench", help="Benchmarks that print measured ratios.")
simulate.register(app)


def main() -> None:
    """Entry point of `fedpoint` and `python -m fedpoint`."""
    import sys

    from fedpoint.cli.errors import USER_ERROR
    from fedpoint.extras import explain

    try:
        app(prog_name="fedpoint")
    except ImportError as err:  # a feature of an optional extra that is not installed
        message = explain(err)
        if message is None:
            raise
        typer.echo(f"error: {message}", err=True)
        sys.exit(USER_ERROR)
