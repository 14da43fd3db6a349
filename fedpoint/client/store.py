"""The site store: the truth on disk for one site.

    <root>/cache/<case_id>/{image.npy, mask.npy, meta.json}   accepted annotations (the cache)
    <root>/adapters/v0001/...                                 adapter versions (+ current.json)
    <root>/banks/<bank>/v0001/...                             adapters received from the federation
    <root>/splits.json                                        cumulative episode train/val split
    <root>/log.jsonl                                          one line per update, episode, bank

Every write goes to a temporary name in the same folder and is renamed into place, so a crash
mid-write leaves either the old state or the new one, never half a case. The annotation service
and the Flower ClientApp may share one store; a lock file serialises writers across processes.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np

_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def check_id(value: str, what: str = "id") -> str:
    """Ids become folder names: refuse anything that could escape the store."""
    if not isinstance(value, str) or not _SAFE_ID.match(value) or ".." in value:
        raise ValueError(f"invalid {what} {value!r}: use letters, digits, '.', '_' or '-' (at most 128)")
    return value


def write_json_atomic(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class SiteStore:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        for sub in ("cache", "adapters", "banks"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)

    @contextmanager
    def locked(self) -> Iterator[None]:
        with open(self.root / ".lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _staging(self, parent: Path) -> Path:
        return Path(tempfile.mkdtemp(dir=parent, prefix=".tmp-"))

    # ------------------------------------------------------------------------ annotation cache
    def add_case(self, case_id: str, image: np.ndarray, mask: np.ndarray, meta: dict | None = None) -> Path:
        """Store an accepted annotation; a second accept of the same case keeps both (suffixed)."""
        check_id(case_id, "case id")
        cache = self.root / "cache"
        staging = self._staging(cache)
        np.save(staging / "image.npy", np.asarray(image, dtype=np.float32))
        np.save(staging / "mask.npy", np.asarray(mask, dtype=bool))
        (staging / "meta.json").write_text(json.dumps({"case_id": case_id, "accepted_at": time.time(), **(meta or {})}))
        for f in staging.iterdir():
            with open(f, "rb") as handle:
                os.fsync(handle.fileno())
        with self.locked():
            target, n = cache / case_id, 1
            while target.exists():
                n += 1
                target = cache / f"{case_id}.{n}"
            os.rename(staging, target)
        self.log("accept", case=target.name, **{k: v for k, v in (meta or {}).items() if isinstance(v, (int, float, str))})
        return target

    def case_ids(self) -> list[str]:
        """Accepted cases in the order they were accepted."""
        cases = [p for p in (self.root / "cache").iterdir() if p.is_dir() and not p.name.startswith(".")]
        return [p.name for p in sorted(cases, key=lambda p: (json.loads((p / "meta.json").read_text())["accepted_at"], p.name))]

    def load_case(self, case_id: str) -> tuple[np.ndarray, np.ndarray, dict]:
        folder = self.root / "cache" / check_id(case_id, "case id")
        if not folder.is_dir():
            raise KeyError(f"no accepted case {case_id!r} in {self.root}")
        return np.load(folder / "image.npy"), np.load(folder / "mask.npy"), json.loads((folder / "meta.json").read_text())

    # ------------------------------------------------------------------------ adapter versions
    def _versions(self, folder: Path) -> list[int]:
        return sorted(int(p.name[1:]) for p in folder.glob("v[0-9]*") if p.is_dir())

    def save_adapter(self, adapter, meta: dict | None = None, make_current: bool = True) -> int:
        """Write a new adapter version; returns its number."""
        folder = self.root / "adapters"
        with self.locked():
            version = (self._versions(folder) or [0])[-1] + 1
            staging = self._staging(folder)
            adapter.save(staging, extra={"version": version, "saved_at": time.time(), **(meta or {})})
            os.rename(staging, folder / f"v{version:04d}")
            if make_current:
                write_json_atomic(folder / "current.json", {"version": version})
        self.log("adapter", version=version, **{k: v for k, v in (meta or {}).items() if isinstance(v, (int, float, str))})
        return version

    def current_adapter(self) -> Path | None:
        pointer = self.root / "adapters" / "current.json"
        if not pointer.exists():
            return None
        return self.root / "adapters" / f"v{json.loads(pointer.read_text())['version']:04d}"

    def adapter_versions(self) -> list[int]:
        return self._versions(self.root / "adapters")

    # ------------------------------------------------------------------------ received banks
    def receive_bank(self, bank: str, version: int, adapter, meta: dict | None = None) -> Path:
        """Keep a bank adapter the federation delivered, for the annotation service to pick up."""
        folder = self.root / "banks" / check_id(bank, "bank name")
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / f"v{version:04d}"
        with self.locked():
            if not target.exists():
                staging = self._staging(folder)
                adapter.save(staging, extra={"bank": bank, "version": version, "received_at": time.time(), **(meta or {})})
                os.rename(staging, target)
            write_json_atomic(self.root / "banks" / "latest.json", {"bank": bank, "version": version, "path": str(target.relative_to(self.root))})
        self.log("bank", bank=bank, version=version)
        return target

    def latest_bank(self) -> Path | None:
        pointer = self.root / "banks" / "latest.json"
        return self.root / json.loads(pointer.read_text())["path"] if pointer.exists() else None

    # ------------------------------------------------------------------------ splits and log
    def splits(self) -> dict[str, list[str]]:
        path = self.root / "splits.json"
        return json.loads(path.read_text()) if path.exists() else {"train": [], "val": []}

    def save_splits(self, splits: dict[str, list[str]]) -> None:
        write_json_atomic(self.root / "splits.json", splits)

    def log(self, event: str, **fields) -> None:
        line = json.dumps({"time": round(time.time(), 3), "event": event, **fields})
        with open(self.root / "log.jsonl", "a") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())

    def read_log(self) -> list[dict]:
        path = self.root / "log.jsonl"
        if not path.exists():
            return []
        out = []
        for line in path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut by a crash: skip it, keep the rest
                continue
        return out

    def wipe_staging(self) -> None:
        """Remove leftovers of writes a crash interrupted (never a finished case)."""
        for tmp in self.root.rglob(".tmp-*"):
            shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)
