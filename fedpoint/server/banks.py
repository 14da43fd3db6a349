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

Integrity: each manifest holds the sha256 of its weights file and of the bank's identity (kind,
config, base fingerprint). Every read verifies them (and that the weights load, are finite and
match the manifest's parameters); a version that fails is skipped with a logged reason naming the
file, and `latest` falls back to the previous valid version. `verify()` reports every version.

A round's writes commit together (`commit_round`): a journal entry `journal/round-NNNN.pending.json`
names the versions about to be written, then they are written, then the entry is renamed to
`round-NNNN.json` (the round's commit). Versions named by a pending entry are not read, and
`recover()` (run by the coordinator under its lock) removes them, so a round is in every bank or in
none. `lock()` holds `root/.coordinator.lock` for a coordinator's lifetime (and names its process
in `root/.coordinator.holder`); a second is refused.

The store stores and reads versions only: exporting one as an adapter folder is
`fedpoint.server.export`, the round ledger (federation.json) is `fedpoint.server.ledger`. Writes,
staging, version numbers and locks are `fedpoint.shared.fileio`'s.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from fedpoint.server.aggregate import aggregation_rule, exact_under_secure_aggregation
from fedpoint.server.crashpoints import crash_point
from fedpoint.server.routing import check_bank_name
from fedpoint.shared.config import AdapterConfig
from fedpoint.shared.fileio import (
    LockTimeout,
    ProcessLock,
    commit_folder,
    next_version,
    replace_file,
    sha256_file,
    staged_folder,
    version_name,
    version_numbers,
    version_of,
    write_json_atomic,
    write_new_file_atomic,
    write_text_atomic,
)
from fedpoint.shared.payload import adapter_arrays_problem, payload_nbytes, state_schema, to_numpy

# The `Adapter.save` file names; repeated here so that reading banks (`fedpoint bank list`) does not
# import torch. tests/server/test_banks.py pins them to fedpoint.shared.adapters.
MANIFEST = "fedpoint_adapter.json"
WEIGHTS = "adapter.safetensors"
LATEST = "latest.json"
EVALUATION = "evaluation.json"  # the federated evaluation round's scores of a version
SALT = "salt"
KEY_SUFFIX = ".key"  # the signing key lives beside the store folder: <store>.key, never inside it
JOURNAL = "journal"
STORE_LOCK = ".coordinator.lock"
STORE_HOLDER = ".coordinator.holder"  # who holds STORE_LOCK, for the message that refuses a second
STAGING_PREFIX = ".staging-"
_JOURNAL_ENTRY = re.compile(r"^round-(\d{4,})(\.pending)?\.json$")
logger = logging.getLogger("fedpoint.banks")


class BankNotFoundError(LookupError):
    """No such bank, or no such version of a bank."""


class BankIntegrityError(ValueError):
    """A bank version on disk does not match its manifest (or cannot be read); names the file."""


class StoreLockedError(RuntimeError):
    """Another coordinator holds this bank store."""


class BankStoreError(RuntimeError):
    """The store cannot be opened as it is (a missing salt or signing key); the message says what to do."""


def sign_manifest(key: bytes, manifest: Mapping) -> str:
    """HMAC-SHA256 of a manifest (every field but the signature itself), as hex."""
    body = {k: v for k, v in manifest.items() if k != "signature"}
    return hmac.new(key, json.dumps(body, sort_keys=True, separators=(",", ":"), default=_plain).encode(),
                    hashlib.sha256).hexdigest()




def identity_sha256(identity: Mapping) -> str:
    canonical = {k: identity[k] for k in ("kind", "config", "base_fingerprint")}
    return hashlib.sha256(json.dumps(canonical, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


@dataclass(frozen=True)
class BankVersion:
    bank: str
    version: int
    state: dict[str, np.ndarray]
    manifest: dict
    path: Path


class BankStore:
    """Adapter banks under `root`; `create=False` refuses a folder that is not a bank store yet."""

    def __init__(self, root: str | Path, create: bool = True, key_path: str | Path | None = None):
        self.root = Path(root)
        self.key_path = Path(key_path) if key_path else self.root.with_name(self.root.name + KEY_SUFFIX)
        if not create and not (self.root / SALT).is_file():
            if self._holds_banks():
                raise BankStoreError(f"{self.root}: the salt file {SALT} is missing, so the site hashes in its manifests "
                                     "could not be matched again; restore it from a backup (it is never recreated)")
            raise FileNotFoundError(f"{self.root} is not a bank store (no {SALT} file); has the coordinator run?")
        fresh = not (self.root / SALT).is_file() and not self._holds_banks()
        if not fresh and not (self.root / SALT).is_file():
            raise BankStoreError(f"{self.root}: the salt file {SALT} is missing but the store holds banks; the site "
                                 "hashes in its manifests could not be matched again, so it is not recreated: restore it "
                                 "from a backup, or start a new store")
        self.root.mkdir(parents=True, exist_ok=True)
        if fresh and create:
            write_new_file_atomic(self.key_path, secrets.token_hex(32).encode(), mode=0o600)
        self._salt = self._load_or_create_salt()
        self._key = self._load_key()
        self._lock: ProcessLock | None = None
        self.problems: dict[tuple[str, int], str] = {}  # (bank, version) -> why it was skipped

    # --- reading -------------------------------------------------------------------------------
    def banks(self) -> list[str]:
        """Banks with at least one valid version (folders with other names are ignored)."""
        return [bank for bank in self.bank_folders() if self.latest(bank) is not None]

    def bank_folders(self) -> list[str]:
        """The folders named as banks, sorted, whether or not a version of theirs verifies."""
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")
                      and p.name != JOURNAL and _is_bank_name(p.name))

    def versions(self, bank: str) -> list[int]:
        """Complete, committed versions of a bank (folder with manifest and weights, not named by
        a pending round journal entry), oldest first. They are not verified here: see `valid_versions`."""
        folder = self.root / check_bank_name(bank)
        if not folder.is_dir():
            return []
        pending = self._pending_versions().get(bank, set())
        return [v for v in version_numbers(folder, _complete) if v not in pending]

    def valid_versions(self, bank: str) -> list[int]:
        return [v for v in self.versions(bank) if self.check(bank, v) is None]

    def latest(self, bank: str) -> BankVersion | None:
        """The newest version that verifies; newer ones that fail are skipped, with a logged reason."""
        for version in reversed(self.versions(bank)):
            try:
                return self.get(bank, version)
            except BankIntegrityError as err:
                self.report_skipped(bank, version, str(err))
        return None

    def get(self, bank: str, version: int) -> BankVersion:
        """One version, verified against its manifest (BankIntegrityError names the file)."""
        path = self._version_dir(bank, version)
        if not (path / MANIFEST).is_file():
            known = self.versions(bank)
            if not known:
                raise BankNotFoundError(f"no bank {bank!r} in {self.root} (banks: {', '.join(self.banks()) or 'none'})")
            raise BankNotFoundError(f"bank {bank!r} has no version {version} (versions {known[0]}..{known[-1]})")
        return self._load_verified(bank, int(version), path)  # every read: adapters are small, sha256 is cheap

    # --- federated evaluation --------------------------------------------------------------------
    def record_evaluation(self, bank: str, version: int, evaluation: Mapping) -> None:
        """The sites' scores of a version (`evaluation.json` beside its manifest: a report, not part
        of what the manifest's integrity hashes cover, so it can be added after the commit)."""
        path = self._version_dir(bank, version)
        if not (path / MANIFEST).is_file():
            raise BankNotFoundError(f"bank {bank!r} has no version {version}")
        write_json_atomic(path / EVALUATION, dict(evaluation))

    def evaluation(self, bank: str, version: int) -> dict | None:
        path = self._version_dir(bank, version) / EVALUATION
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):  # none yet, or unreadable: a report, never needed to serve a bank
            return None

    def check(self, bank: str, version: int) -> str | None:
        """Why a version fails verification, or None when it is healthy."""
        try:
            self.get(bank, version)
        except (BankIntegrityError, BankNotFoundError) as err:
            return str(err)
        return None

    def verify(self) -> list[dict]:
        """Health of every version of every bank folder (incomplete folders included)."""
        report = []
        for folder in sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".") and p.name != JOURNAL):
            pending = self._pending_versions().get(folder.name, set())
            for entry in sorted(folder.iterdir()):
                version = version_of(entry.name)
                if version is None:
                    continue
                if version in pending:
                    problem = f"{entry}: written by a round that did not commit (pending journal entry)"
                elif not (entry / MANIFEST).is_file() or not (entry / WEIGHTS).is_file():
                    problem = f"{entry}: incomplete (missing {MANIFEST if not (entry / MANIFEST).is_file() else WEIGHTS})"
                else:
                    problem = self.check(folder.name, version)
                manifest = {}
                with contextlib.suppress(Exception):
                    manifest = json.loads((entry / MANIFEST).read_text())
                report.append({"bank": folder.name, "version": version, "round": manifest.get("round"),
                               "checksum": bool((manifest.get("integrity") or {}).get("weights_sha256")),
                               "signed": bool(manifest.get("signature")) and self._key is not None,
                               "healthy": problem is None, "problem": problem})
        return report

    def history(self, bank: str) -> list[dict]:
        """Every valid version's manifest, oldest first."""
        return [self.get(bank, v).manifest for v in self.valid_versions(bank)]

    def _load_verified(self, bank: str, version: int, path: Path) -> BankVersion:
        from safetensors.numpy import load_file

        manifest_path, weights_path = path / MANIFEST, path / WEIGHTS
        try:
            manifest = json.loads(manifest_path.read_text())
        except (OSError, ValueError) as err:
            raise BankIntegrityError(f"{manifest_path}: unreadable manifest ({err})") from None
        if not isinstance(manifest, dict):
            raise BankIntegrityError(f"{manifest_path}: not a manifest")
        if self._key is None and "signature" in manifest:
            raise BankIntegrityError(f"{manifest_path}: signed, but the store's signing key {self.key_path} is missing; "
                                     "restore it (it is never recreated)")
        if self._key is not None and not hmac.compare_digest(str(manifest.get("signature", "")),
                                                             sign_manifest(self._key, manifest)):
            raise BankIntegrityError(f"{manifest_path}: {'no signature' if 'signature' not in manifest else 'signature does not match'}"
                                     " (the manifest or its weights were rewritten without the coordinator's key)")
        integrity = manifest.get("integrity") or {}
        if integrity.get("weights_sha256") and sha256_file(weights_path) != integrity["weights_sha256"]:
            raise BankIntegrityError(f"{weights_path}: sha256 differs from the one in {MANIFEST}")
        try:
            if integrity.get("identity_sha256") and identity_sha256(manifest) != integrity["identity_sha256"]:
                raise BankIntegrityError(f"{manifest_path}: kind, config or base fingerprint were changed after writing")
        except KeyError as err:
            raise BankIntegrityError(f"{manifest_path}: lacks {err}") from None
        try:
            state = load_file(str(weights_path))
        except Exception as err:  # safetensors raises its own error types for truncated files
            raise BankIntegrityError(f"{weights_path}: unreadable weights ({type(err).__name__})") from None
        bad = [k for k, v in state.items() if not np.isfinite(v).all()]
        if bad:
            raise BankIntegrityError(f"{weights_path}: non-finite values in {bad[0]!r}")
        if "parameters" in manifest and int(sum(v.size for v in state.values())) != int(manifest["parameters"]):
            raise BankIntegrityError(f"{weights_path}: {sum(v.size for v in state.values())} values, the manifest says {manifest['parameters']}")
        return BankVersion(bank, version, state, manifest, path)

    def report_skipped(self, bank: str, version: int, reason: str) -> None:
        """Log once (per reason) that a version fails verification and an earlier one is used."""
        if self.problems.get((bank, version)) != reason:
            self.problems[(bank, version)] = reason
            logger.warning("bank %s v%d skipped, falling back to an earlier version: %s", bank, version, reason)

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

    def write(self, bank: str, state: Mapping, manifest_fields: Mapping | None = None,
              parent: BankVersion | None = None) -> int:
        """Write the next version of an existing bank; returns its version number.

        `manifest_fields` usually comes from `fedpoint.server.aggregate.round_record`: round,
        sites (raw ids; stored as salted hashes), counts, metrics, plus any extra fields.
        `parent`: the bank's latest version when the caller has read it already (the coordinator's
        round reads, `fedpoint.server.bank_reads`); otherwise it is read here.
        """
        parent = parent if parent is not None else self.latest(bank)
        if parent is None:
            raise BankNotFoundError(f"bank {bank!r} does not exist yet: create it with init_bank")
        identity = {k: parent.manifest[k] for k in ("kind", "config", "base_fingerprint")}
        for key, value in (manifest_fields or {}).items():
            if key in identity and value != identity[key]:
                raise ValueError(f"bank {bank!r}: {key} cannot change between versions ({identity[key]!r} -> {value!r})")
        state = to_numpy(state)
        problem = adapter_arrays_problem({k: np.asarray(v, dtype=np.float32) for k, v in state.items()},
                                         state_schema(parent.state))
        if problem:
            from fedpoint.shared.adapters import AdapterMismatchError

            raise AdapterMismatchError(f"bank {bank!r}: the new state does not fit version {parent.version}: {problem}")
        return self._commit(bank, state, identity, dict(manifest_fields or {}), parent=parent.version)

    def _commit(self, bank: str, state: dict, identity: dict, fields: dict, parent: int | None) -> int:
        from safetensors.numpy import save_file

        state = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in state.items()}
        bad = [k for k, v in state.items() if not np.isfinite(v).all()]
        if bad:
            raise ValueError(f"bank {bank!r}: refusing to write non-finite values ({bad[0]})")
        folder = self.root / check_bank_name(bank)
        folder.mkdir(exist_ok=True)
        with ProcessLock(folder / ".lock"):  # two coordinator processes never write one bank at once
            _remove_stale_staging(folder)
            version = next_version(folder, _complete)
            target = folder / version_name(version)
            if target.exists():  # an incomplete folder (not from this writer): keep it aside, named
                os.rename(target, folder / f".damaged-{target.name}-{secrets.token_hex(4)}")
            with staged_folder(folder, prefix=STAGING_PREFIX) as staging:
                save_file(state, str(staging / WEIGHTS))
                manifest = self._manifest(bank, version, state, identity, fields, parent)
                manifest["integrity"] = {"weights_sha256": sha256_file(staging / WEIGHTS),
                                         "identity_sha256": identity_sha256(manifest)}
                if self._key is not None:
                    manifest["signature"] = sign_manifest(self._key, manifest)
                (staging / MANIFEST).write_text(json.dumps(manifest, indent=2, default=_plain))
                commit_folder(staging, target)  # the commit
            write_json_atomic(folder / LATEST, {"version": version, "path": target.name})
        return version

    def _manifest(self, bank: str, version: int, state: dict, identity: dict, fields: dict, parent: int | None) -> dict:
        extra = dict(fields)
        round_, sites, counts, metrics = (extra.pop(k, d) for k, d in (("round", None), ("sites", []), ("counts", {}), ("metrics", {})))
        rule, trim = extra.pop("rule", "weighted-mean"), extra.pop("trim_fraction", 0.2)
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
            "aggregation": aggregation_rule(identity["kind"], identity["config"], rule, trim),
            "exact_under_secure_aggregation": exact_under_secure_aggregation(identity["kind"], identity["config"], rule),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }

    # --- rounds: journal, recovery, lock ---------------------------------------------------------
    def commit_round(self, server_round: int, writes: list[tuple], summary: Mapping | None = None) -> dict[str, int]:
        """Write a round's versions so that they commit together. `writes` holds
        ("init", bank, state, base_fingerprint, kind, adapter_cfg, fields) or ("write", bank, state, fields).
        (a "write" may end with the bank's latest version as read by the caller: its parent).
        Returns {bank: version}. A crash before the journal entry is renamed leaves a pending entry,
        whose versions are invisible and removed by `recover()`."""
        journal = self.root / JOURNAL
        journal.mkdir(exist_ok=True)
        pending = journal / f"round-{int(server_round):04d}.pending.json"
        planned = {}
        for item in writes:
            folder = self.root / check_bank_name(item[1])
            planned[item[1]] = next_version(folder, _complete)
        write_json_atomic(pending, {"round": int(server_round), "planned": planned})
        versions = {}
        for item in writes:
            if item[0] == "init":
                _, bank, state, fingerprint, kind, cfg, fields = item
                versions[bank] = self.init_bank(bank, state, fingerprint, kind, cfg, fields)
            else:
                _, bank, state, fields, *parent = item
                versions[bank] = self.write(bank, state, fields, *parent)
            if versions[bank] != planned[bank]:
                raise RuntimeError(f"bank {bank!r}: wrote v{versions[bank]} but the journal planned v{planned[bank]} "
                                   "(is another coordinator writing this store?)")
            if len(versions) == 1:
                crash_point("mid-commit", server_round)  # a test hook (FEDPOINT_CRASH_AT); a no-op otherwise
        write_json_atomic(pending, {"round": int(server_round), "planned": planned, "versions": versions,
                                    "summary": dict(summary or {})})
        replace_file(pending, journal / f"round-{int(server_round):04d}.json")  # the round's commit
        return versions

    def journal(self) -> list[dict]:
        """Committed round entries, oldest first."""
        folder = self.root / JOURNAL
        entries = []
        for path in sorted(folder.glob("round-*.json")) if folder.is_dir() else []:
            match = _JOURNAL_ENTRY.match(path.name)
            if match and not match.group(2):
                with contextlib.suppress(OSError, ValueError):
                    entries.append(json.loads(path.read_text()))
        return entries

    def recover(self) -> list[str]:
        """Roll back rounds that did not commit; returns what was done. Only versions it can prove
        uncommitted are removed (`_pending_versions`); a stale pending entry (its round committed, or
        its versions named by a committed round or written by another round) is dropped, nothing else."""
        done = []
        for bank, versions in self._pending_versions().items():
            for version in sorted(versions):
                path = self._version_dir(bank, version)
                if path.exists():
                    shutil.rmtree(path)
                    done.append(f"removed {path} (its round did not commit)")
            folder = self.root / bank
            valid = self.valid_versions(bank) if folder.is_dir() else []
            if valid:
                write_json_atomic(folder / LATEST, {"version": valid[-1], "path": version_name(valid[-1])})
        for path in (self.root / JOURNAL).glob("round-*.pending.json") if (self.root / JOURNAL).is_dir() else []:
            path.unlink()
            done.append(f"dropped {path}")
        for line in done:
            logger.warning("bank store recovery: %s", line)
        return done

    def lock(self) -> "BankStore":
        """Hold the store for this coordinator until `unlock()` (or the process ends)."""
        if self._lock is not None:
            return self
        lock = ProcessLock(self.root / STORE_LOCK)
        try:
            lock.acquire(timeout=0)
        except LockTimeout:
            holder = ""
            with contextlib.suppress(OSError):
                holder = (self.root / STORE_HOLDER).read_text().strip()
            raise StoreLockedError(f"bank store {self.root} is held by another coordinator ({holder or 'unknown'}); "
                                   "two coordinators on one store would overwrite each other") from None
        write_text_atomic(self.root / STORE_HOLDER, f"pid {os.getpid()}\n")
        self._lock = lock
        return self

    def unlock(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def _pending_versions(self) -> dict[str, set[int]]:
        """Versions provably written by a round that did not commit: named by a pending entry whose
        round has no committed entry, not named by any committed entry, and (when the version's
        manifest is readable) written for that pending round. Anything else is kept and read."""
        folder = self.root / JOURNAL
        out: dict[str, set[int]] = {}
        entries = sorted(folder.glob("round-*.pending.json")) if folder.is_dir() else []
        if not entries:
            return out
        committed_rounds, committed = set(), set()
        for entry in self.journal():
            with contextlib.suppress(TypeError, ValueError, AttributeError):
                committed_rounds.add(int(entry.get("round")))
                committed |= {(bank, int(v)) for bank, v in dict(entry.get("versions") or {}).items()}
        for path in entries:
            with contextlib.suppress(OSError, ValueError, AttributeError, TypeError):
                pending = json.loads(path.read_text())
                round_ = int(pending.get("round"))
                if round_ in committed_rounds:
                    continue  # stale: that round committed
                for bank, version in dict(pending.get("planned", {})).items():
                    if (bank, int(version)) in committed or self._written_for_another_round(bank, int(version), round_):
                        continue
                    out.setdefault(bank, set()).add(int(version))
        return out

    def _written_for_another_round(self, bank: str, version: int, round_: int) -> bool:
        try:
            manifest = json.loads((self._version_dir(bank, version) / MANIFEST).read_text())
        except (OSError, ValueError):
            return False  # absent or unreadable: nothing to keep
        return isinstance(manifest, dict) and manifest.get("round") not in (None, round_)

    def _holds_banks(self) -> bool:
        """Whether the folder holds any bank version or journal entry (it is not a fresh store)."""
        if not self.root.is_dir():
            return False
        for entry in self.root.iterdir():
            if entry.is_dir() and entry.name == JOURNAL and any(entry.glob("round-*.json")):
                return True
            if entry.is_dir() and _is_bank_name(entry.name) and any(version_of(v.name) for v in entry.iterdir()):
                return True
        return False

    def _load_key(self) -> bytes | None:
        """The signing key, or None (a store made before manifests were signed: `fedpoint bank sign`)."""
        try:
            text = self.key_path.read_text().strip()
        except FileNotFoundError:
            return None
        try:
            key = bytes.fromhex(text)
        except ValueError:
            raise BankStoreError(f"{self.key_path}: not a signing key (64 hex digits expected)") from None
        if len(key) < 16:
            raise BankStoreError(f"{self.key_path}: a signing key of {len(key)} bytes is too short")
        return key

    @property
    def signed(self) -> bool:
        return self._key is not None

    def require_key(self) -> "BankStore":
        """A coordinator writes only to a store whose signing key it holds."""
        if self._key is None:
            raise BankStoreError(
                f"bank store {self.root} has no signing key at {self.key_path}. A key is made once, when the store is "
                "created, and never recreated, so that rewritten versions cannot be signed again. Restore the key from a "
                "backup; for a store made before manifests were signed, check it with `fedpoint bank verify` and adopt "
                "it with `fedpoint bank sign`")
        return self

    def sign_all(self) -> list[str]:
        """Adopt a store made before signing: create its key (refused if one exists) and sign every
        version that verifies; returns what was signed. Check the store first (`verify`)."""
        if self._key is not None or self.key_path.exists():
            raise BankStoreError(f"{self.key_path} exists: the store is already signed (a key is never replaced)")
        report = self.verify()
        write_new_file_atomic(self.key_path, secrets.token_hex(32).encode(), mode=0o600)
        self._key = self._load_key()
        signed = []
        for row in report:
            if not row["healthy"]:
                continue
            path = self._version_dir(row["bank"], row["version"]) / MANIFEST
            manifest = json.loads(path.read_text())
            manifest["signature"] = sign_manifest(self._key, manifest)
            write_text_atomic(path, json.dumps(manifest, indent=2, default=_plain))
            signed.append(str(path))
        return signed

    def _version_dir(self, bank: str, version: int) -> Path:
        return self.root / check_bank_name(bank) / version_name(version)

    def _load_or_create_salt(self) -> bytes:
        path = self.root / SALT
        if not path.is_file():  # if another process creates it first, theirs is kept
            write_new_file_atomic(path, secrets.token_hex(32).encode())
        return bytes.fromhex(path.read_text().strip())


# ------------------------------------------------------------------------------------ helpers
def _complete(entry: Path) -> bool:
    """A version folder with both its files. Numbering counts these, valid or not (a damaged version
    keeps its number; an incomplete folder in the way is moved aside by the writer)."""
    return (entry / MANIFEST).is_file() and (entry / WEIGHTS).is_file()


def _is_bank_name(name: str) -> bool:
    try:
        check_bank_name(name)
    except ValueError:
        return False
    return True


def _config(kind: str, adapter_cfg: AdapterConfig | Mapping | None) -> AdapterConfig:
    if adapter_cfg is None:
        return AdapterConfig(kind=kind)
    cfg = AdapterConfig(**adapter_cfg) if isinstance(adapter_cfg, Mapping) else adapter_cfg
    if cfg.kind != kind:
        raise ValueError(f"adapter config is for kind {cfg.kind!r}, not {kind!r}")
    return cfg


def _plain(value):
    """numpy scalars and arrays in manifest fields, as plain JSON values."""
    if isinstance(value, (np.generic, np.ndarray)):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _remove_stale_staging(folder: Path) -> None:
    for entry in folder.glob(f"{STAGING_PREFIX}*"):
        shutil.rmtree(entry, ignore_errors=True)
