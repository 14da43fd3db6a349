"""Named configurations shipped with fedpoint (`demo`, ...): TOML files in this folder."""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent


def named_configs() -> list[str]:
    return sorted(p.stem for p in HERE.glob("*.toml"))


def resolve_config(name_or_path: str | Path) -> Path:
    """A packaged config name (e.g. `demo`) or a path to a TOML file."""
    path = Path(name_or_path)
    if path.suffix == ".toml" and path.exists():
        return path
    packaged = HERE / f"{name_or_path}.toml"
    if packaged.exists():
        return packaged
    raise FileNotFoundError(f"no config {name_or_path!r}: not a TOML file, nor one of {', '.join(named_configs()) or 'none'}")
