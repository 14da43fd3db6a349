"""A bank version as a standalone adapter folder, outside the bank store.

`export_bank` writes a folder that `fedpoint.shared.adapters.load_adapter(base, dir)` and
`fedpoint evaluate --adapter-dir DIR` load. Banks other than LoRA are already in that format and
are copied; LoRA banks are rebuilt on a base (torch and peft are imported only then) and saved in
peft's format. The bank store only stores and reads versions; this is the one place that turns a
version back into an adapter on a base.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from fedpoint.server.banks import MANIFEST, WEIGHTS, BankNotFoundError, BankStore, BankVersion
from fedpoint.shared.adapter_kinds import adapter_kind
from fedpoint.shared.config import AdapterConfig


def export_bank(store: BankStore, bank: str, version: int | None, out_dir: str | Path, base=None,
                overwrite: bool = False) -> Path:
    """Write a version (None: the latest valid one) of `bank` as a standalone adapter folder.

    `base` is a `load_base` spec (path or packaged name) or a loaded model. LoRA banks are
    rebuilt on that base and saved in peft's format, so they need it (default: the packaged
    base); other kinds are copied as they are unless a base is given, which is then checked.
    A base with another fingerprint than the bank's is refused.
    """
    found = store.latest(bank) if version is None else store.get(bank, version)
    if found is None:
        raise BankNotFoundError(f"no bank {bank!r} in {store.root} (banks: {', '.join(store.banks()) or 'none'})")
    out = _empty_output(Path(out_dir), overwrite)
    provenance = {k: v for k, v in found.manifest.items() if k not in ("kind", "config", "base_fingerprint", "parameters")}
    if not adapter_kind(found.manifest["kind"]).export_needs_base and base is None:
        shutil.copyfile(found.path / WEIGHTS, out / WEIGHTS)
        shutil.copyfile(found.path / MANIFEST, out / MANIFEST)
        return out
    adapter = _rebuild(found, base)
    return adapter.save(out, extra=provenance)


def _rebuild(found: BankVersion, base):
    """The bank's adapter rebuilt on a base model, refusing a base with another fingerprint."""
    from fedpoint.shared.adapters import AdapterMismatchError, make_adapter
    from fedpoint.shared.model import base_fingerprint, load_base
    from fedpoint.shared.payload import from_numpy

    model = base if hasattr(base, "state_dict") else load_base(base)[0]
    fingerprint = base_fingerprint(model)
    if fingerprint != found.manifest["base_fingerprint"]:
        raise AdapterMismatchError(
            f"bank {found.bank!r} v{found.version} was made for base {found.manifest['base_fingerprint']}, "
            f"but the given base is {fingerprint}: refusing to export it onto another base"
        )
    adapter = make_adapter(model, AdapterConfig(**found.manifest["config"]), fingerprint)
    adapter.load_state(from_numpy(found.state))
    return adapter


def _empty_output(out: Path, overwrite: bool) -> Path:
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{out} is not empty; choose another folder or overwrite it")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    return out
