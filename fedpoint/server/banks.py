"""The coordinator's bank store: numbered, immutable adapter versions per bank, on disk.

Layout (see docs/federation.md, "Bank store layout")::

    root/salt                       random salt for hashing site ids (created once)
    root/<bank>/v0001/              one complete version: the `Adapter.save` file format
        adapter.safetensors         the bank's adapter parameters (float32, keyed by parameter name)
        fedpoint_adapter.json       adapter manifest + provenance (round, hashed sites, counts, ...)
    root/<bank>/latest.json         {"version": N}: a pointer for tools, rewritten atomically
    root/<bank>/.staging-*          a version being written (ignored; removed by the next writer)

A version is staged in a temporary folder beside its final place and renamed into place in one
`os.rename`, which is the commit: a version folder either exists complete or not at all, so a
coordinator killed at any moment resumes from the last complete version.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from fedpoint.server.aggregate import EXACT_UNDER_SECAGG, aggregation_rule, kind_variant
from fedpoint.server.routing import check_bank_name
from fedpoint.shared.config import AdapterConfig
from fedpoint.shared.payload import payload_nbytes, state_schema, to_numpy

# The `Adapter.save` file names; repeated here so that reading banks (`fedpoint bank list`) does not
# import torch. tests/server/test_banks.py pins them to fedpoint.shared.adapters.
MANIFEST = "fedpoint_adapter.json"
WEIGHTS = "adapter.safetensors"
LATEST = "latest.json"
SALT = "salt"
_VERSION_DIR = re.compile(r"^v(\d{4,})$")


class BankNotFoundError(LookupError):
    """No such bank, or no such version of a bank."""


@dataclass(frozen=True)
class BankVersion:
    bank: str
    version: int
    state: dict[str, np.ndarray]
    manifest: dict
    path: Path


class BankStore:
    """Adapter banks under `root`; `create=False` refuses a folder that is not a bank store yet."""

    def __init__(self, root: str | Path, create: bool = True):
        self.root = Path(root)
        if not create and not (self.root / SALT).is_file():
            raise FileNotFoundError(f"{self.root} is not a bank store (no {SALT} file); has the coordinator run?")
        self.root.mkdir(parents=True, exist_ok=True)
        self._salt = self._load_or_create_salt()

    # --- reading -------------------------------------------------------------------------------
    def banks(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".") and self.versions(p.name))

    def versions(self, bank: str) -> list[int]:
        """Complete versions of a bank, oldest first."""
        folder = self.root / check_bank_name(bank)
        if not folder.is_dir():
            return []
        found = []
        for entry in folder.iterdir():
            match = _VERSION_DIR.match(entry.name)
            if match and (entry / MANIFEST).is_file() and (entry / WEIGHTS).is_file():
                found.append(int(match.group(1)))
        return sorted(found)

    def latest(self, bank: str) -> BankVersion | None:
        versions = self.versions(bank)
        return self.get(bank, versions[-1]) if versions else None

    def get(self, bank: str, version: int) -> BankVersion:
        from safetensors.numpy import load_file

        path = self._version_dir(bank, version)
        if not (path / MANIFEST).is_file():
            known = self.versions(bank)
            if not known:
                raise BankNotFoundError(f"no bank {bank!r} in {self.root} (banks: {', '.join(self.banks()) or 'none'})")
            raise BankNotFoundError(f"bank {bank!r} has no version {version} (versions {known[0]}..{known[-1]})")
        manifest = json.loads((path / MANIFEST).read_text())
        return BankVersion(bank, int(version), load_file(str(path / WEIGHTS)), manifest, path)

    def history(self, bank: str) -> list[dict]:
        """Every complete version's manifest, oldest first."""
        return [json.loads((self._version_dir(bank, v) / MANIFEST).read_text()) for v in self.versions(bank)]

    def site_hash(self, site_id: str) -> str:
        """A salted hash of a site id: stable within this store, meaningless outside it."""
        return hashlib.sha256(self._salt + str(site_id).encode()).hexdigest()[:16]

    # --- writing -------------------------------------------------------------------------------
    def init_bank(
        self,
        bank: str,
        state: Mapping,
        base_fingerprint: str,
        kind: str,
        adapter_cfg: AdapterConfig | Mapping | None = None,
        manifest_fields: Mapping | None = None,
    ) -> int:
        """Create version 1 of a new bank (the starting adapter, parent None)."""
        if self.versions(bank):
            raise FileExistsError(f"bank {bank!r} already exists in {self.root} (latest v{self.versions(bank)[-1]})")
        cfg = _config(kind, adapter_cfg)
        identity = {"kind": cfg.kind, "config": cfg.model_dump(mode="json"), "base_fingerprint": base_fingerprint}
        return self._commit(bank, to_numpy(state), identity, {"round": 0, **(manifest_fields or {})}, parent=None)

    def write(self, bank: str, state: Mapping, manifest_fields: Mapping | None = None) -> int:
        """Write the next version of an existing bank; returns its version number.

        `manifest_fields` usually comes from `fedpoint.server.aggregate.round_record`: round,
        sites (raw ids; stored as salted hashes), counts, metrics, plus any extra fields.
        """
        parent = self.latest(bank)
        if parent is None:
            raise BankNotFoundError(f"bank {bank!r} does not exist yet: create it with init_bank")
        identity = {k: parent.manifest[k] for k in ("kind", "config", "base_fingerprint")}
        for key, value in (manifest_fields or {}).items():
            if key in identity and value != identity[key]:
                raise ValueError(f"bank {bank!r}: {key} cannot change between versions ({identity[key]!r} -> {value!r})")
        state = to_numpy(state)
        expected = state_schema(parent.state)
        if state_schema({k: np.asarray(v, dtype=np.float32) for k, v in state.items()}) != expected:
            from fedpoint.shared.adapters import AdapterMismatchError

            raise AdapterMismatchError(f"bank {bank!r}: new state's names or shapes differ from version {parent.version}")
        return self._commit(bank, state, identity, dict(manifest_fields or {}), parent=parent.version)

    def _commit(self, bank: str, state: dict, identity: dict, fields: dict, parent: int | None) -> int:
        from safetensors.numpy import save_file

        state = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in state.items()}
        bad = [k for k, v in state.items() if not np.isfinite(v).all()]
        if bad:
            raise ValueError(f"bank {bank!r}: refusing to write non-finite values ({bad[0]})")
        folder = self.root / check_bank_name(bank)
        folder.mkdir(exist_ok=True)
        with _locked(folder / ".lock"):
            _remove_stale_staging(folder)
            version = max(self.versions(bank), default=0) + 1
            staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=folder))
            save_file(state, str(staging / WEIGHTS))
            manifest = self._manifest(bank, version, state, identity, fields, parent)
            (staging / MANIFEST).write_text(json.dumps(manifest, indent=2, default=_plain))
            _fsync_tree(staging)
            os.rename(staging, folder / f"v{version:04d}")  # the commit
            _fsync_dir(folder)
            _write_json_atomic(folder / LATEST, {"version": version, "path": f"v{version:04d}"})
        return version

    def _manifest(self, bank: str, version: int, state: dict, identity: dict, fields: dict, parent: int | None) -> dict:
        extra = dict(fields)
        round_, sites, counts, metrics = (extra.pop(k, d) for k, d in (("round", None), ("sites", []), ("counts", {}), ("metrics", {})))
        return {
            **extra,  # extra fields first: the store's own fields below always win
            **identity,
            "parameters": int(sum(v.size for v in state.values())),
            "nbytes": payload_nbytes(state),
            "bank": bank,
            "version": version,
            "parent": parent,
            "round": round_,
            "sites": sorted({self.site_hash(s) for s in sites}),
            "counts": counts,
            "metrics": metrics,
            "aggregation": aggregation_rule(identity["kind"], identity["config"]),
            "exact_under_secure_aggregation": EXACT_UNDER_SECAGG[kind_variant(identity["kind"], identity["config"])],
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }

    # --- export --------------------------------------------------------------------------------
    def export(self, bank: str, version: int | None, out_dir: str | Path, base=None, overwrite: bool = False) -> Path:
        """Write a standalone adapter folder that `load_adapter(base, dir)` and
        `fedpoint evaluate --adapter-dir DIR` load.

        `base` is a `load_base` spec (path or packaged name) or a loaded model. LoRA banks are
        rebuilt on that base and saved in peft's format, so they need it (default: the packaged
        base); other kinds are copied as they are unless a base is given, which is then checked.
        A base with another fingerprint than the bank's is refused.
        """
        found = self.latest(bank) if version is None else self.get(bank, version)
        if found is None:
            raise BankNotFoundError(f"no bank {bank!r} in {self.root} (banks: {', '.join(self.banks()) or 'none'})")
        out = _empty_output(Path(out_dir), overwrite)
        provenance = {k: v for k, v in found.manifest.items() if k not in ("kind", "config", "base_fingerprint", "parameters")}
        if found.manifest["kind"] != "lora" and base is None:
            shutil.copyfile(found.path / WEIGHTS, out / WEIGHTS)
            shutil.copyfile(found.path / MANIFEST, out / MANIFEST)
            return out
        adapter = _rebuild(found, base)
        return adapter.save(out, extra=provenance)

    def _version_dir(self, bank: str, version: int) -> Path:
        return self.root / check_bank_name(bank) / f"v{int(version):04d}"

    def _load_or_create_salt(self) -> bytes:
        path = self.root / SALT
        if not path.is_file():
            tmp = self.root / f".salt-{secrets.token_hex(4)}"
            tmp.write_text(secrets.token_hex(32))
            with contextlib.suppress(FileExistsError):
                os.link(tmp, path)  # fails if another process created it first: keep theirs
            tmp.unlink()
        return bytes.fromhex(path.read_text().strip())


# ------------------------------------------------------------------------------------ helpers
def _config(kind: str, adapter_cfg: AdapterConfig | Mapping | None) -> AdapterConfig:
    if adapter_cfg is None:
        return AdapterConfig(kind=kind)
    cfg = AdapterConfig(**adapter_cfg) if isinstance(adapter_cfg, Mapping) else adapter_cfg
    if cfg.kind != kind:
        raise ValueError(f"adapter config is for kind {cfg.kind!r}, not {kind!r}")
    return cfg


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


def _plain(value):
    """numpy scalars and arrays in manifest fields, as plain JSON values."""
    if isinstance(value, (np.generic, np.ndarray)):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _empty_output(out: Path, overwrite: bool) -> Path:
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{out} is not empty; choose another folder or overwrite it")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    return out


def _remove_stale_staging(folder: Path) -> None:
    for entry in folder.glob(".staging-*"):
        shutil.rmtree(entry, ignore_errors=True)


def _write_json_atomic(path: Path, payload: dict) -> None:
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    with open(tmp, "w") as handle:
        json.dump(payload, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def _fsync_tree(folder: Path) -> None:
    for entry in folder.iterdir():
        with open(entry, "rb") as handle:
            os.fsync(handle.fileno())
    _fsync_dir(folder)


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not every platform can fsync a directory
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def _locked(path: Path):
    """An exclusive advisory lock, so two coordinator processes never write one bank at once."""
    try:
        import fcntl
    except ImportError:  # no fcntl (Windows): single-writer use only
        yield
        return
    with open(path, "a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
