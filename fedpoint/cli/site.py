"""`fedpoint site ...`: run a site's annotation service, or set up a site folder to try it."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

app = typer.Typer(no_args_is_help=True)

INIT_DATASETS = ("pyradiomics-lung", "mni152")  # the first that can be prepared is used


@app.command()
def serve(
    config: Path = typer.Option(..., "--config", "-c", help="The site's site.toml."),
    host: str = typer.Option(None, help="Bind address (overrides the config; default 127.0.0.1)."),
    port: int = typer.Option(None, help="Port (overrides the config)."),
) -> None:
    """Start the annotation service: the web page, its API and the MONAI Label-compatible API."""
    from fedpoint.client.service.config import ServiceConfigError, load_service_config

    try:
        cfg = load_service_config(config, host=host, port=port)
        token = cfg.resolve_token()
    except ServiceConfigError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None
    from fedpoint.client.service import create_app
    from fedpoint.client.service import serve as run_service

    try:
        app_ = create_app(cfg)
    except (FileNotFoundError, ValueError) as err:  # missing base checkpoint, images folder, bad adapter...
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None
    shown = "127.0.0.1" if cfg.host in ("0.0.0.0", "::") else cfg.host
    # The token only on a terminal: a service's output usually ends in the system log.
    secret = token if sys.stdout.isatty() else "<token>"
    typer.echo(f"fedpoint site {cfg.site}: open http://{shown}:{cfg.port}/#token={secret}")
    if secret != token:
        typer.echo(f"(the token is not printed because the output is not a terminal; it is the one {_token_source(cfg)})")
    typer.echo(f"MONAI Label clients (3D Slicer, OHIF): server http://{shown}:{cfg.port}"
               + (f"/t/{secret}" if cfg.token_in_path else " with header 'Authorization: Bearer <token>'"))
    run_service(cfg, app_)


def _token_source(cfg) -> str:
    if cfg.token_file:
        return f"in {cfg.token_file}"
    if cfg.token_env:
        return f"in ${cfg.token_env}"
    return "set as `token` in site.toml"


@app.command()
def init(
    folder: Path = typer.Argument(..., help="Folder to create: site.toml, images/, store/ and a token file."),
    site: str = typer.Option("demo-site", help="The site's name."),
    dataset: str = typer.Option(None, help=f"Built-in dataset for the example images (default: {INIT_DATASETS[0]}, "
                                           f"else {INIT_DATASETS[1]})."),
    count: int = typer.Option(6, min=1, max=100, help="2D slices to write (one per object, largest cross-section)."),
    volume: bool = typer.Option(True, help="Also write one small 3D volume (annotated slice by slice)."),
    force: bool = typer.Option(False, help="Write into a folder that already holds a site.toml."),
) -> None:
    """Write an example site: real images to annotate, a site.toml and a random token."""
    from fedpoint.client.service.example import write_example_site

    if (folder / "site.toml").exists() and not force:
        typer.echo(f"error: {folder / 'site.toml'} exists (use --force to overwrite)", err=True)
        raise typer.Exit(2)
    names = (dataset,) if dataset else INIT_DATASETS
    try:
        summary = write_example_site(folder, site, names, count, volume)
    except ValueError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"wrote {summary['images']} images from {summary['dataset']} ({summary['modality']}) into {folder / 'images'}")
    typer.echo(f"start it with: fedpoint site serve --config {folder / 'site.toml'}")


@app.command()
def check(
    config: Path = typer.Option(None, "--config", "-c", help="The site's site.toml (checks its store and images)."),
    store: Path = typer.Option(None, "--store", help="A site store folder to check (instead of --config)."),
    images: bool = typer.Option(True, help="Also decode every file in the images folder (slower)."),
    quarantine: bool = typer.Option(False, help="Move corrupt cases aside into quarantine/, as the service does at start."),
) -> None:
    """Verify a site store (cases, adapter versions, banks, splits, log) and report every bad file.

    Exit status 0: nothing the service cannot use; 1: bad files found (listed); 2: usage error."""
    from fedpoint.client.service.check import CheckReport, check_images, check_store

    if (config is None) == (store is None):
        typer.echo("error: give exactly one of --config or --store", err=True)
        raise typer.Exit(2)
    images_folder = None
    if config is not None:
        from fedpoint.client.service.config import ServiceConfigError, load_service_config

        try:
            cfg = load_service_config(config)
        except ServiceConfigError as err:
            typer.echo(f"error: {err}", err=True)
            raise typer.Exit(2) from None
        store, images_folder = cfg.store, cfg.images
    report: CheckReport = check_store(store, quarantine=quarantine)
    if images_folder is not None:
        check_images(images_folder, report, decode=images)
    counts = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in report.counts.items())
    typer.echo(f"checked {counts}; adapter in use: {report.adapter_in_use or 'none saved yet'}")
    for finding in report.findings:
        typer.echo(f"{finding.severity.upper():7s} {finding.file}: {finding.reason}")
    for name, reason in report.quarantined:
        typer.echo(f"QUARANTINED quarantine/{name}: {reason}")
    errors = len(report.errors)
    typer.echo(f"{errors} bad file(s), {len(report.findings) - errors} warning(s), {len(report.quarantined)} quarantined case(s)")
    raise typer.Exit(1 if errors else 0)
