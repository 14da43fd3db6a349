"""`fedpoint site ...`: run a site's annotation service, or set up a site folder to try it."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

app = typer.Typer(no_args_is_help=True)
users_app = typer.Typer(no_args_is_help=True, help="Named users: one token per clinician (stored hashed), revocable.")
app.add_typer(users_app, name="user")

INIT_DATASETS = ("pyradiomics-lung", "mni152")  # the first that can be prepared is used


@app.command()
def serve(
    config: Path = typer.Option(..., "--config", "-c", help="The site's site.toml."),
    host: str = typer.Option(None, help="Bind address (overrides the config; default 127.0.0.1)."),
    port: int = typer.Option(None, help="Port (overrides the config)."),
) -> None:
    """Start the annotation service: the web page, its API and the MONAI Label-compatible API."""
    from fedpoint.client.service.site_config import ServiceConfigError, load_service_config

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
    typer.echo(f"fedpoint site {cfg.site}: open {cfg.scheme}://{shown}:{cfg.port}/#token={secret}")
    if secret != token:
        typer.echo(f"(the token is not printed because the output is not a terminal; it is the one {_token_source(cfg)})")
    typer.echo(f"MONAI Label clients (3D Slicer, OHIF): server {cfg.scheme}://{shown}:{cfg.port}"
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
    images_folder, users_path, max_bytes = None, None, 1 << 30
    if config is not None:
        from fedpoint.client.service.site_config import ServiceConfigError, load_service_config

        try:
            cfg = load_service_config(config)
        except ServiceConfigError as err:
            typer.echo(f"error: {err}", err=True)
            raise typer.Exit(2) from None
        store, images_folder, users_path, max_bytes = cfg.store, cfg.images, cfg.users_path, cfg.max_decoded_bytes
    try:
        report: CheckReport = check_store(store, quarantine=quarantine, users=users_path)
        if images_folder is not None:
            check_images(images_folder, report, decode=images, max_bytes=max_bytes)
    except Exception as err:  # noqa: BLE001 - a check reports, it never ends in a traceback
        typer.echo(f"ERROR   the check stopped: {type(err).__name__}: {err}")
        raise typer.Exit(1) from None
    counts = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in report.counts.items())
    tasks = "".join(f"; {task}: {used or 'none saved yet'}" for task, used in report.task_adapters.items())
    typer.echo(f"checked {counts}; adapter in use: {report.adapter_in_use or 'none saved yet'}{tasks}")
    for finding in report.findings:
        typer.echo(f"{finding.severity.upper():7s} {finding.file}: {finding.reason}")
    for name, reason in report.quarantined:
        typer.echo(f"QUARANTINED quarantine/{name}: {reason}")
    errors = len(report.errors)
    typer.echo(f"{errors} bad file(s), {len(report.findings) - errors} warning(s), {len(report.quarantined)} quarantined case(s)")
    raise typer.Exit(1 if errors else 0)


# ---------------------------------------------------------------------------------- named users
def _registry(config: Path):
    from fedpoint.client.service.site_config import ServiceConfigError, load_service_config
    from fedpoint.client.service.users import AuditLog, UserRegistry

    try:
        cfg = load_service_config(config)
    except ServiceConfigError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None
    return UserRegistry(cfg.users_path), AuditLog(cfg.audit_path)


@users_app.command("add")
def user_add(
    name: str = typer.Argument(..., help="The clinician's user name (letters, digits, '.', '_', '-')."),
    config: Path = typer.Option(..., "--config", "-c", help="The site's site.toml."),
    days: float = typer.Option(None, min=0.001, help="The token expires after this many days (default: never)."),
    replace: bool = typer.Option(False, help="Issue a new token to an existing user (the old one stops working)."),
    token_out: Path = typer.Option(None, "--token-out", help="Write the token to this new file (mode 600) instead of printing it."),
) -> None:
    """Add a user and show their token once: only its hash is kept. Printed only on a terminal;
    otherwise give --token-out."""
    from fedpoint.client.service.users import UserError

    if token_out is None and not sys.stdout.isatty():
        typer.echo("error: the output is not a terminal, so the token is not printed; give --token-out FILE", err=True)
        raise typer.Exit(2)
    if token_out is not None and token_out.exists():
        typer.echo(f"error: {token_out} exists; the token file must be new", err=True)
        raise typer.Exit(2)
    registry, audit = _registry(config)
    try:
        token = registry.add(name, days, replace)
    except (UserError, ValueError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None
    audit.record("admin", "user_add", user_name=name, expires_days=days, replaced=replace)
    if token_out is not None:
        import os

        fd = os.open(token_out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(token + "\n")
        typer.echo(f"user {name}: token written to {token_out}" + (f", valid {days:g} days" if days else ""))
    else:
        typer.echo(f"user {name}: token (shown once, keep it safe): {token}")
    typer.echo("the user logs in with it: the page asks for it; 3D Slicer takes the user name and the token as password")


@users_app.command("list")
def user_list(config: Path = typer.Option(..., "--config", "-c", help="The site's site.toml.")) -> None:
    """Every user with status (active, expired, revoked), creation and expiry; never a token."""
    import time

    from fedpoint.client.service.users import UserError

    registry, _ = _registry(config)
    try:
        users = registry.users()
    except UserError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None
    if not users:
        typer.echo("no named users (the site token is the only one)")
    for user in users:
        row = user.public(time.time())
        typer.echo(f"{row['name']:20s} {row['status']:8s} created {row['created']}"
                   + (f", expires {row['expires']}" if row["expires"] else "")
                   + (f", revoked {row['revoked']}" if row["revoked"] else ""))


@users_app.command("revoke")
def user_revoke(
    name: str = typer.Argument(..., help="The user whose token stops working now."),
    config: Path = typer.Option(..., "--config", "-c", help="The site's site.toml."),
) -> None:
    """Revoke a user's token; a running service refuses it from its next request."""
    from fedpoint.client.service.users import UserError

    registry, audit = _registry(config)
    try:
        registry.revoke(name)
    except UserError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None
    audit.record("admin", "user_revoke", user_name=name)
    typer.echo(f"user {name}: token revoked")
