"""Where a base checkpoint is and what its card says, without torch.

A base is `<path>.safetensors` (its weights, loaded by `fedpoint.shared.model.load_base`) beside
`<path>.json` (its card: the network config, fingerprint and provenance). A spec is a path, with
or without suffix, or the name of a checkpoint packaged in `fedpoint/checkpoints`.
"""

from __future__ import annotations

import json
from pathlib import Path

from fedpoint.shared.config import ModelConfig

PACKAGED_CHECKPOINTS = Path(__file__).resolve().parent.parent / "checkpoints"
DEFAULT_BASE = "base2d"


def resolve_base(spec: str | Path | None) -> Path:
    """A packaged checkpoint name (default `base2d`) or a path, without suffix or with one."""
    spec = spec or DEFAULT_BASE
    candidate = Path(spec)
    if candidate.suffix in {".safetensors", ".json"}:
        candidate = candidate.with_suffix("")
    if candidate.with_suffix(".safetensors").exists():
        return candidate
    packaged = PACKAGED_CHECKPOINTS / str(spec)
    if packaged.with_suffix(".safetensors").exists():
        return packaged
    raise FileNotFoundError(
        f"no base checkpoint {spec!r}: expected {candidate}.safetensors or a packaged name "
        f"({', '.join(sorted(p.stem for p in PACKAGED_CHECKPOINTS.glob('*.safetensors'))) or 'none'})"
    )


def locate_base(spec: str | Path | None) -> Path:
    """`resolve_base`, which also works from a Flower app bundle.

    `flwr run` ships the code as a FAB that holds no weight files, and its copy of fedpoint comes
    first on sys.path; a packaged checkpoint name is then looked up in the installed fedpoint.
    """
    try:
        return resolve_base(spec or None)
    except FileNotFoundError:
        name = str(spec or DEFAULT_BASE)
        for folder in _installed_checkpoint_dirs():
            if (folder / f"{name}.safetensors").exists():
                return folder / name
        raise


def _installed_checkpoint_dirs() -> list[Path]:
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        dist = distribution("fedpoint")
    except PackageNotFoundError:
        return []
    folders = [Path(str(dist.locate_file("fedpoint/checkpoints")))]
    direct = json.loads(dist.read_text("direct_url.json") or "{}")  # an editable install points at its source
    if str(direct.get("url", "")).startswith("file://"):
        folders.append(Path(direct["url"][len("file://"):]) / "fedpoint" / "checkpoints")
    return folders


def read_card(spec: str | Path | None) -> tuple[Path, dict]:
    """(the base's path without suffix, its card)."""
    path = resolve_base(spec)
    return path, json.loads(path.with_suffix(".json").read_text())


def base_config(spec: str | Path | None = None) -> ModelConfig:
    """The network config on a base's card, without building it (e.g. to know its spatial dims)."""
    return ModelConfig(**read_card(spec)[1]["model"])
