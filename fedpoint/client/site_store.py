"""The site store: the truth on disk for one site.

    <root>/cache/<case_id>/{image.npy, mask.npy, meta.json}   accepted annotations (the cache)
    <root>/adapters/v0001/...                                 adapter versions (+ current.json)
    <root>/banks/<bank>/v0001/...                             adapters received from the federation
    <root>/splits.json                                        cumulative episode train/val split
    <root>/log.jsonl                                          one line per update, episode, bank
    <root>/tasks/<task>/...                                   the same layout, one per structure (task)

The root holds the default task: a store written before tasks existed is the default task's
store, read as it always was. Each other task (a structure the site labels, normalised by
`fedpoint.shared.tasks`) keeps its own cache, adapter versions, optimizer state, splits, banks
and log under `tasks/<task>/` (`for_task`), so its episodes train on its own cases only.

Every write goes to a temporary name in the same folder and is renamed into place, so a crash
mid-write leaves either the old state or the new one, never half a case. The annotation service
and the Flower ClientApp may share one store; a lock file serialises writers across processes.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from fedpoint.shared.fileio import (
    TEMP_PREFIX,
    ProcessLock,
    append_line,
    commit_folder,
    fsync_tree,
    next_version,
    staged_folder,
    version_name,
    version_numbers,
    write_atomic_via,
    write_json_atomic,
)
from fedpoint.shared.protocol import is_safe_id

OPTIMIZER_FILE = "optimizer.pt"
TASKS_DIR = "tasks"
_log = logging.getLogger("fedpoint.store")


class StoreDamage(ValueError):
    """A store file the site needs is damaged; the message names it (relative to the store)."""


def check_id(value: str, what: str = "id") -> str:
    """Ids become folder names: refuse anything that could escape the store (`protocol.is_safe_id`)."""
    if not is_safe_id(value):
        raise ValueError(f"invalid {what} {value!r}: use letters, digits, '.', '_' or '-' (at most 128)")
    return value


def _write_json(path: Path, data) -> None:
    write_json_atomic(path, data, indent=2)


def _torch_save(obj, path: Path) -> None:
    import torch

    write_atomic_via(path, lambda f: torch.save(obj, f))


def check_npy(path: Path) -> str | None:
    """Why a .npy file cannot be read (a bad header, or shorter than its header declares), or None."""
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _, dtype = reader(f)
            if dtype.hasobject:
                return "holds Python objects"
            need = f.tell() + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        size = path.stat().st_size
    except (OSError, ValueError, SyntaxError, TypeError) as err:
        return f"{type(err).__name__}: {err}"
    return None if size >= need else f"truncated ({size} bytes, its header declares {need})"


def check_safetensors(path: Path) -> str | None:
    """Why a .safetensors file cannot be read (header, offsets, size), or None; reads the header only."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                return f"truncated ({size} bytes)"
            length = int.from_bytes(head, "little")
            if length > min(size - 8, 100 << 20):
                return f"truncated or not safetensors (header of {length} bytes, file of {size})"
            header = json.loads(f.read(length))
        end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
    except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError) as err:
        return f"{type(err).__name__}: {err}"
    return None if size >= 8 + length + end else f"truncated ({size} bytes, its header declares {8 + length + end})"


def adapter_folder_problem(folder: Path, rel: str) -> str | None:
    """Why the saved adapter in `folder` cannot be loaded, naming the file by `rel`, or None."""
    try:
        manifest = json.loads((folder / "fedpoint_adapter.json").read_text())
        if not isinstance(manifest, dict) or "config" not in manifest:
            return f"{rel}/fedpoint_adapter.json: no adapter config in it"
    except (OSError, ValueError) as err:
        return f"{rel}/fedpoint_adapter.json: {type(err).__name__}: {err}"
    tensors = sorted(folder.glob("*.safetensors"))
    if not tensors:
        return f"{rel}: no .safetensors file"
    for path in tensors:
        reason = check_safetensors(path)
        if reason:
            return f"{rel}/{path.name}: {reason}"
    return None


class SiteStore:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self._lock = ProcessLock(self.root / ".lock")
        self._bank_pointer_problem: str | None = None  # last logged reason banks/latest.json is unusable
        for sub in ("cache", "adapters", "banks"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------------------ tasks
    def for_task(self, task: str | None) -> "SiteStore":
        """The store of one task: this store itself for the default task, else `tasks/<task>/`."""
        from fedpoint.shared.tasks import DEFAULT_TASK, normalise_task

        name = normalise_task(task)
        if name == DEFAULT_TASK:
            return self
        return SiteStore(self.root / TASKS_DIR / check_id(name, "task name"))

    def tasks(self) -> list[str]:
        """The default task and every task that has a folder under `tasks/`."""
        from fedpoint.shared.tasks import DEFAULT_TASK

        folder = self.root / TASKS_DIR
        named = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")) if folder.is_dir() else []
        return [DEFAULT_TASK, *named]

    @contextmanager
    def locked(self) -> Iterator[None]:
        """The store's lock, across processes and threads; re-entrant within a thread (a locked
        method may call another)."""
        with self._lock:
            yield

    # ------------------------------------------------------------------------ annotation cache
    def add_case(self, case_id: str, image: np.ndarray, mask: np.ndarray, meta: dict | None = None) -> Path:
        """Store an accepted annotation; a second accept of the same case keeps both (suffixed)."""
        check_id(case_id, "case id")
        cache = self.root / "cache"
        with staged_folder(cache) as staging:
            np.save(staging / "image.npy", np.asarray(image, dtype=np.float32))
            np.save(staging / "mask.npy", np.asarray(mask, dtype=bool))
            (staging / "meta.json").write_text(json.dumps({"case_id": case_id, "accepted_at": time.time(), **(meta or {})}))
            fsync_tree(staging)  # outside the lock: the commit's own fsync then has nothing left to do
            with self.locked():
                target, n = cache / case_id, 1
                while target.exists():
                    n += 1
                    target = cache / f"{case_id}.{n}"
                commit_folder(staging, target)
        self.log("accept", case=target.name, **{k: v for k, v in (meta or {}).items() if isinstance(v, (int, float, str))})
        return target

    def case_ids(self) -> list[str]:
        """Accepted cases in the order they were accepted (a case whose meta.json cannot be read is
        quarantined, with a logged reason naming the file, and left out)."""
        order = []
        for p in (self.root / "cache").iterdir():
            if not p.is_dir() or p.name.startswith("."):
                continue
            try:
                meta = json.loads((p / "meta.json").read_text())
                order.append((float(meta["accepted_at"]), p.name))
            except (OSError, ValueError, KeyError, TypeError) as err:
                self.quarantine_case(p.name, f"cache/{p.name}/meta.json: {type(err).__name__}: {err}")
        return [name for _, name in sorted(order)]

    def load_case(self, case_id: str) -> tuple[np.ndarray, np.ndarray, dict]:
        """(image, mask, meta); a case that cannot be read is quarantined and KeyError names the file."""
        folder = self.root / "cache" / check_id(case_id, "case id")
        if not folder.is_dir():
            raise KeyError(f"no accepted case {case_id!r} in the site store's cache")
        current = "image.npy"
        try:
            image = np.load(folder / current, allow_pickle=False)
            current = "mask.npy"
            mask = np.load(folder / current, allow_pickle=False)
            current = "meta.json"
            meta = json.loads((folder / current).read_text())
        except (OSError, ValueError, EOFError) as err:
            reason = f"cache/{case_id}/{current}: {type(err).__name__}: {err}"
            self.quarantine_case(case_id, reason)
            raise KeyError(f"case {case_id!r} could not be read ({reason}); it was quarantined") from None
        return image, mask, meta

    # ------------------------------------------------------------------------ checks (read side)
    def check_case(self, case_id: str) -> str | None:
        """Why a cached case cannot be used (naming the file), or None; reads headers, not voxels."""
        folder = self.root / "cache" / case_id
        for name in ("image.npy", "mask.npy"):
            reason = check_npy(folder / name)
            if reason:
                return f"cache/{case_id}/{name}: {reason}"
        try:
            meta = json.loads((folder / "meta.json").read_text())
            float(meta["accepted_at"])
        except (OSError, ValueError, KeyError, TypeError) as err:
            return f"cache/{case_id}/meta.json: {type(err).__name__}: {err}"
        return None

    def quarantine_case(self, case_id: str, reason: str) -> Path | None:
        """Move a case that cannot be read out of the cache into `quarantine/` (kept, not deleted)."""
        folder = self.root / "cache" / case_id
        if not folder.is_dir():
            return None
        with self.locked():
            target_root = self.root / "quarantine"
            target_root.mkdir(exist_ok=True)
            target, n = target_root / case_id, 1
            while target.exists():
                n += 1
                target = target_root / f"{case_id}.{n}"
            os.rename(folder, target)
            (target / "QUARANTINED.txt").write_text(reason + "\n")
        self.log("quarantine", case=case_id, moved_to=f"quarantine/{target.name}", reason=reason)
        _log.warning("site store: quarantined case %s: %s", case_id, reason)
        return target

    def quarantine_corrupt_cases(self) -> list[tuple[str, str]]:
        """Check every cached case's files (headers and sizes) and quarantine those that fail."""
        bad = []
        for case_id in self.case_ids():
            reason = self.check_case(case_id)
            if reason:
                self.quarantine_case(case_id, reason)
                bad.append((case_id, reason))
        return bad

    def quarantined(self) -> list[tuple[str, str]]:
        """(folder name, reason) of every quarantined case."""
        folder = self.root / "quarantine"
        if not folder.is_dir():
            return []
        out = []
        for p in sorted(folder.iterdir()):
            try:
                out.append((p.name, (p / "QUARANTINED.txt").read_text().strip()))
            except OSError:
                out.append((p.name, "(no reason recorded)"))
        return out

    # ------------------------------------------------------------------------ adapter versions
    def save_adapter(self, adapter, meta: dict | None = None, make_current: bool = True,
                     optimizer: dict | None = None) -> int:
        """Write a new adapter version (with its optimizer state, when given); returns its number.
        Only the guard's owner (the service, an engine) makes a version current; the ClientApp
        writes with `make_current=False`."""
        folder = self.root / "adapters"
        with self.locked(), staged_folder(folder) as staging:
            version = next_version(folder)
            adapter.save(staging, extra={"version": version, "saved_at": time.time(), **(meta or {})})
            if optimizer is not None:
                _torch_save(optimizer, staging / OPTIMIZER_FILE)
            commit_folder(staging, folder / version_name(version))
            if make_current:
                _write_json(folder / "current.json", {"version": version})
        self.log("adapter", version=version, current=bool(make_current),
                 **{k: v for k, v in (meta or {}).items() if isinstance(v, (int, float, str))})
        return version

    def set_current(self, version: int, reason: str) -> None:
        """Make an existing version current (the guard decided); logged with the reason."""
        with self.locked():
            if not (self.root / "adapters" / version_name(version)).is_dir():
                raise KeyError(f"no adapter version {version} in {self.root.name}")
            _write_json(self.root / "adapters" / "current.json", {"version": version})
        self.log("adapter-current", version=version, reason=reason)

    def latest_optimizer_state(self, kind: str) -> dict | None:
        """The Adam state saved with the newest adapter version of `kind` that has one."""
        folder = self.root / "adapters"
        for version in reversed(version_numbers(folder)):
            path = folder / version_name(version)
            try:
                manifest = json.loads((path / "fedpoint_adapter.json").read_text())
            except (OSError, json.JSONDecodeError):
                continue
            if manifest.get("kind") == kind and (path / OPTIMIZER_FILE).is_file():
                import torch

                try:
                    return torch.load(path / OPTIMIZER_FILE, weights_only=True)
                except Exception:  # a truncated file: look further back
                    continue
        return None

    def current_adapter(self) -> Path | None:
        """The version `adapters/current.json` names; None without the file. A pointer that names no
        positive integer version (damaged, negative, a folder in its place) raises ValueError/OSError."""
        pointer = self.root / "adapters" / "current.json"
        if not pointer.exists():
            return None
        version = json.loads(pointer.read_text())["version"]
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise ValueError(f"names version {version!r}, not a positive integer")
        return self.root / "adapters" / version_name(version)

    def adapter_versions(self) -> list[int]:
        return version_numbers(self.root / "adapters")

    def check_adapter(self, version: int) -> str | None:
        """Why an adapter version cannot be loaded (naming the file), or None; no torch needed."""
        folder = self.root / "adapters" / version_name(version)
        return adapter_folder_problem(folder, f"adapters/{folder.name}")

    def adapter_choice(self, skip: tuple[int, ...] = ()) -> tuple[Path | None, list[tuple[str, str]]]:
        """(the adapter version to load, or None; the (file, reason) of each problem met on the way),
        read-only. The current version if it loads, else the newest older one that does. A
        `current.json` that is missing while versions exist, unreadable, or names a version the store
        does not hold falls back to the newest version the log records as made current, else the
        newest on disk: never to a fresh adapter while a valid version is there."""
        versions = self.adapter_versions()
        notes: list[tuple[str, str]] = []
        if not versions:
            return None, notes
        pointer = "adapters/current.json"
        try:
            current = self.current_adapter()
            start = None if current is None else int(current.name[1:])
            if start is None:
                notes.append((pointer, f"missing while {len(versions)} version(s) are stored"))
            elif start not in versions:
                notes.append((pointer, f"names version {start}, which is not in the store"))
                start = None
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
            notes.append((pointer, f"cannot be read ({type(err).__name__}: {err})"))
            start = None
        if start is None:
            recorded = [v for v in self._versions_made_current() if v in versions]
            start = recorded[-1] if recorded else versions[-1]
        for version in reversed([v for v in versions if v <= start]):
            reason = "skipped by the caller" if version in skip else self.check_adapter(version)
            if reason is None:
                return self.root / "adapters" / version_name(version), notes
            notes.append((f"adapters/{version_name(version)}", reason))
        return None, notes

    def _versions_made_current(self) -> list[int]:
        """Adapter versions the log records as made current, in order (for a lost current.json)."""
        made = []
        for event in self.read_log():
            if event.get("event") == "adapter-current" or (event.get("event") == "adapter" and event.get("current")):
                version = event.get("version")
                if isinstance(version, int) and not isinstance(version, bool):
                    made.append(version)
        return made

    def usable_adapter(self, skip: tuple[int, ...] = ()) -> Path | None:
        """`adapter_choice`, with each problem logged (naming its file); None if no version loads."""
        chosen, notes = self.adapter_choice(skip)
        for file, reason in notes:
            version = file.removeprefix("adapters/v")
            where = {"version": int(version)} if version.isdigit() else {"file": file}
            self.log("adapter-skipped", **where, reason=reason)
            _log.warning("site store: %s: %s", file, reason)
        if chosen is not None and notes:
            _log.warning("site store: using adapter version %s", chosen.name)
        return chosen

    # ------------------------------------------------------------------------ received banks
    def receive_bank(self, bank: str, version: int, adapter, meta: dict | None = None) -> Path:
        """Keep a bank adapter the federation delivered, for the annotation service to pick up."""
        folder = self.root / "banks" / check_id(bank, "bank name")
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / version_name(version)
        with self.locked():
            if not target.exists():
                with staged_folder(folder) as staging:
                    adapter.save(staging, extra={"bank": bank, "version": version, "received_at": time.time(), **(meta or {})})
                    commit_folder(staging, target)
            _write_json(self.root / "banks" / "latest.json", {"bank": bank, "version": version, "path": str(target.relative_to(self.root))})
        self.log("bank", bank=bank, version=version)
        return target

    def latest_bank(self) -> Path | None:
        """The newest delivered bank's folder; None when there is none or `banks/latest.json` is
        unreadable or points outside `banks/` (logged, naming the file: the service keeps serving)."""
        pointer = self.root / "banks" / "latest.json"
        if not pointer.exists():
            return None
        try:
            target = (self.root / str(json.loads(pointer.read_text())["path"])).resolve()
            target.relative_to((self.root / "banks").resolve())
        except (OSError, ValueError, KeyError, TypeError) as err:
            reason = f"{type(err).__name__}: {err}"
            if reason != self._bank_pointer_problem:  # the watcher asks every few seconds: log it once
                self._bank_pointer_problem = reason
                self.log("bank-skipped", file="banks/latest.json", reason=reason)
                _log.warning("site store: banks/latest.json cannot be used (%s)", err)
            return None
        self._bank_pointer_problem = None
        return target

    # ------------------------------------------------------------------------ splits and log
    def splits(self) -> dict[str, list[str]]:
        """The episode splits; a damaged `splits.json` is a StoreDamage naming it (never rebuilt
        silently: reassigning cases would let a judged case into training)."""
        path = self.root / "splits.json"
        if not path.exists():
            return {"train": [], "val": [], "judge": []}
        try:
            splits = json.loads(path.read_text())
            if not isinstance(splits, dict) or not all(
                    isinstance(ids, list) and all(isinstance(c, str) for c in ids) for ids in splits.values()):
                raise ValueError("not an object of lists of case ids")
        except (OSError, ValueError, RecursionError) as err:
            raise StoreDamage(f"splits.json: {type(err).__name__}: {str(err)[:200]}; episodes wait until it is "
                              "repaired (fedpoint site check)") from None
        return {"train": [], "val": [], "judge": [], **splits}

    def save_splits(self, splits: dict[str, list[str]]) -> None:
        with self.locked():
            _write_json(self.root / "splits.json", splits)

    def assign_new_cases(self, split: Callable[[list[str]], dict[str, list[str]]]) -> dict[str, list[str]]:
        """Read the splits, give the cases no split holds yet to `split` (new ids -> {name: ids}),
        and write the result, all under the store lock: two processes assigning at once never put
        a case in two splits. Returns the updated splits."""
        with self.locked():
            splits = self.splits()
            assigned = {c for ids in splits.values() for c in ids}
            new = [c for c in self.case_ids() if c not in assigned]
            if new:
                for name, ids in split(new).items():
                    splits.setdefault(name, []).extend(ids)
                _write_json(self.root / "splits.json", splits)
            return splits

    def log(self, event: str, **fields) -> None:
        append_line(self.root / "log.jsonl", json.dumps({"time": round(time.time(), 3), "event": event, **fields}))

    def read_log(self) -> list[dict]:
        path = self.root / "log.jsonl"
        if not path.exists():
            return []
        out = []
        for line in path.read_text(errors="replace").splitlines():
            try:
                event = json.loads(line)
            except (json.JSONDecodeError, RecursionError):  # a line cut by a crash: skip it, keep the rest
                continue
            if isinstance(event, dict):  # a line of another shape is not an event (`site check` flags it)
                out.append(event)
        return out

    def wipe_staging(self) -> None:
        """Remove leftovers of writes a crash interrupted (never a finished case)."""
        for tmp in self.root.rglob(f"{TEMP_PREFIX}*"):
            shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)
