"""`fedpoint bank ...`: inspect and export the coordinator's adapter banks."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(no_args_is_help=True)

STORE_HELP = "The coordinator's bank store folder."


def _fail(message: str) -> None:
    from rich.console import Console
    from rich.markup import escape

    Console(stderr=True, soft_wrap=True).print(f"[bold red]error:[/] {escape(message)}", highlight=False)
    raise typer.Exit(2)


def _console():
    from rich.console import Console

    # Piped output (no terminal to measure) gets a width the tables fit in, not rich's 80.
    return Console() if sys.stdout.isatty() else Console(width=140)


def _open(store: Path):
    from fedpoint.server.banks import BankStore

    from fedpoint.server.banks import BankStoreError

    try:
        return BankStore(store, create=False)
    except (FileNotFoundError, BankStoreError) as err:
        _fail(str(err))


def _history(store, bank: str) -> list[dict]:
    try:
        history = store.history(bank)
    except ValueError as err:  # a bank name that cannot exist
        _fail(str(err))
    if not history:
        _fail(f"no bank {bank!r} in {store.root} (banks: {', '.join(store.banks()) or 'none'})")
    return history


def _summary(manifest: dict) -> dict:
    counts = manifest.get("counts") or {}
    return {
        "bank": manifest.get("bank"),
        "version": manifest.get("version"),
        "round": manifest.get("round"),
        "kind": manifest.get("kind"),
        "sites": len(manifest.get("sites") or []),
        "accepted_cases": counts.get("accepted_cases", 0),
        # central DP: epsilon (at the manifest's delta) after the round that wrote this version
        "epsilon": (manifest.get("dp") or {}).get("epsilon"),
        "updated": manifest.get("created"),
    }


def _health(banks, name: str) -> str:
    bad = [r for r in banks.verify() if r["bank"] == name and not r["healthy"]]
    return "ok" if not bad else f"{len(bad)} bad version(s): " + ", ".join(f"v{r['version']}" for r in bad)


@app.command("list")
def list_(
    store: Path = typer.Option(..., "--store", help=STORE_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Each bank: latest version, round, adapter kind, contributing sites, accepted cases, last update."""
    banks = _open(store)
    rows = [_summary(_history(banks, name)[-1]) | {"health": _health(banks, name)} for name in banks.banks()]
    if as_json:
        typer.echo(json.dumps(rows, indent=1))
        return
    from rich.table import Table

    table = Table(title=f"adapter banks in {store}")
    for column in ("bank", "version", "round", "kind", "sites", "accepted cases", "updated", "health"):
        table.add_column(column, justify="right" if column in ("version", "round", "sites", "accepted cases") else "left")
    for row in rows:
        table.add_row(*(str(v) for v in row.values()))
    console = _console()
    console.print(table if rows else f"no banks in {store} yet")


@app.command()
def verify(
    store: Path = typer.Option(..., "--store", help=STORE_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Check every version of every bank against its manifest (the coordinator's HMAC signature, sha256
    of weights and identity, readable, finite, parameter count); exits 1 when any version is damaged
    or rewritten (readers skip those versions)."""
    banks = _open(store)
    report = banks.verify()
    if not banks.signed and not as_json:
        _console().print(f"this store has no signing key ({banks.key_path}): its manifests are not checked against "
                         "rewrites; adopt it with `fedpoint bank sign` after this check")
    if as_json:
        typer.echo(json.dumps(report, indent=1))
    else:
        from rich.table import Table

        table = Table(title=f"bank versions in {store}")
        for column in ("bank", "version", "round", "checksum", "health"):
            table.add_column(column)
        for row in report:
            table.add_row(row["bank"], str(row["version"]), str(row["round"]),
                          ("sha256" if row["checksum"] else "none") + ("+hmac" if row["signed"] else ""),
                          "ok" if row["healthy"] else f"BAD: {row['problem']}")
        _console().print(table if report else f"no bank versions in {store}")
    if any(not row["healthy"] for row in report):
        raise typer.Exit(1)


@app.command()
def sign(store: Path = typer.Option(..., "--store", help=STORE_HELP)) -> None:
    """Adopt a store made before bank manifests were signed: create its signing key beside it and sign
    every version that verifies now (check them first with `fedpoint bank verify`). Refused when the
    store already has a key: a key is never replaced."""
    from fedpoint.server.banks import BankStoreError

    banks = _open(store)
    try:
        signed = banks.sign_all()
    except BankStoreError as err:
        _fail(str(err))
    typer.echo(f"signed {len(signed)} version(s); key {banks.key_path} (keep it with the coordinator, back it up)")


@app.command()
def show(
    bank: str = typer.Argument(..., help="Bank name, e.g. general or modality-ct."),
    store: Path = typer.Option(..., "--store", help=STORE_HELP),
    version: Optional[int] = typer.Option(None, "--version", min=1, help="A version (default: the latest)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of tables."),
) -> None:
    """One bank version's manifest (provenance, counts, metrics, parameters, bytes) and the bank's history."""
    banks = _open(store)
    history = _history(banks, bank)
    chosen = history[-1] if version is None else next((m for m in history if m.get("version") == version), None)
    if chosen is None:
        _fail(f"bank {bank!r} has no version {version} (versions {history[0]['version']}..{history[-1]['version']})")
    evaluation = banks.evaluation(bank, int(chosen["version"]))
    result = {"manifest": chosen, "parameters": chosen.get("parameters"), "bytes": chosen.get("nbytes"),
              "evaluation": evaluation, "history": [_summary(m) | _scored(banks, bank, m) for m in history]}
    if as_json:
        typer.echo(json.dumps(result, indent=1))
        return
    _print_show(bank, {**chosen, **({"evaluation": evaluation} if evaluation else {})}, result["history"])


def _scored(banks, bank: str, manifest: dict) -> dict:
    """The federated evaluation round's score of a version, if the sites scored it."""
    found = banks.evaluation(bank, int(manifest.get("version") or 0)) if manifest.get("version") else None
    return {"eval_dice_auc": found.get("dice_auc") if found else None, "eval_cases": found.get("cases") if found else None}


def _print_show(bank: str, manifest: dict, history: list[dict]) -> None:
    from rich.table import Table

    details = Table(title=f"{bank} v{manifest.get('version')}", show_header=False)
    details.add_column("field", style="bold")
    details.add_column("value")
    for key, value in manifest.items():
        if key == "sites":
            value = f"{len(value)} (salted hashes: {', '.join(value)})" if value else "0"
        details.add_row(key, value if isinstance(value, str) else json.dumps(value))
    past = Table(title="history")
    for column in ("version", "round", "sites", "accepted cases", "scored Dice-AUC (cases)", "DP epsilon", "updated"):
        past.add_column(column)
    for row in history:
        scored = "-" if row.get("eval_dice_auc") is None else f"{row['eval_dice_auc']:.3f} ({row['eval_cases']})"
        epsilon = "-" if row.get("epsilon") is None else f"{row['epsilon']:.4g}"
        past.add_row(*(str(row[k]) for k in ("version", "round", "sites", "accepted_cases")), scored, epsilon,
                     str(row["updated"]))
    console = _console()
    console.print(details)
    console.print(past)


@app.command()
def export(
    bank: str = typer.Argument(..., help="Bank name, e.g. general or modality-ct."),
    store: Path = typer.Option(..., "--store", help=STORE_HELP),
    out: Path = typer.Option(..., "--out", help="Folder to write the adapter into (created; must be empty)."),
    version: Optional[int] = typer.Option(None, "--version", min=1, help="A version (default: the latest)."),
    base: Optional[str] = typer.Option(None, "--base", help="Base checkpoint the bank was made on (default: the packaged 2D base; needed for lora)."),
    force: bool = typer.Option(False, "--force", help="Replace what is in --out."),
) -> None:
    """Write a bank version as a standalone adapter folder (load it with `fedpoint evaluate --adapter-dir`)."""
    from fedpoint.server.banks import BankNotFoundError
    from fedpoint.server.export import export_bank

    banks = _open(store)
    try:
        path = export_bank(banks, bank, version, out, base=base, overwrite=force)
    except (BankNotFoundError, FileNotFoundError, FileExistsError, ValueError) as err:  # AdapterMismatchError is a ValueError
        _fail(str(err))
    typer.echo(f"exported {bank} v{version or banks.versions(bank)[-1]} to {path}")
