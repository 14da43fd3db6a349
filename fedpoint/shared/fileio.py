"""How fedpoint puts files and folders in place, and how writers in several processes take turns.

A reader never sees half a file or half a folder, and a crash at any moment leaves the old state or
the new one:

- `write_bytes_atomic`, `write_text_atomic`, `write_json_atomic`: the content goes to a temporary
  file with a unique name in the target's folder, is fsynced, and `os.replace` puts it in place;
  the folder is then fsynced (where the platform can) so that the rename survives a power cut.
- `replace_file`: rename a finished file over another (a commit by rename), durably;
  `append_line`: one line onto a log, fsynced unless asked not to.
- `write_atomic_via(path, writer)`: the same for libraries that write a file themselves
  (`np.savez`, `torch.save`): `writer(handle)` writes the temporary file's binary handle.
- `staged_folder` + `commit_folder`: a folder is built under a temporary name and renamed into
  place once every file in it is fsynced (the rename is the commit).
- `write_new_file_atomic`: create a file unless it exists (the first of racing writers wins).
- `version_name`, `version_of`, `version_numbers`, `next_version`: numbered folders `v0001`, ...
- `ProcessLock`: an exclusive lock on a file, held by one thread of one process at a time and
  re-entrant within the holding thread; built on `filelock`, so it works on every OS.

Temporary names are `TEMP_PREFIX` + the target's name + a random tail: a store can sweep what a
crash left, and a reader listing `*.npz` or `*.json` never picks up a file being written.

Light: the standard library only (`filelock` is imported when a lock is first taken).
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
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

TEMP_PREFIX = ".tmp-"
_VERSION_DIR = re.compile(r"^v(\d{4,})$")


# ------------------------------------------------------------------------------------ fsync
def fsync_file(path: str | Path) -> None:
    """Flush a written file's data to the disk."""
    # Windows only commits a handle opened for writing.
    fd = os.open(path, os.O_RDWR if os.name == "nt" else os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(folder: str | Path) -> None:
    """Flush a folder's entries (a rename or a new file in it); a no-op where folders cannot be
    fsynced (Windows, some network file systems)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def fsync_tree(folder: str | Path) -> None:
    """Flush every file under `folder`, then every folder in it (deepest first)."""
    for parent, dirs, files in os.walk(folder, topdown=False):
        for name in files:
            fsync_file(os.path.join(parent, name))
        fsync_dir(parent)


# ------------------------------------------------------------------------------------ files
def _create_temp(path: Path, mode: int) -> tuple[int, Path]:
    """A new, empty file with a unique name beside `path` (open for writing), and its path."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(64):
        tmp = path.with_name(f"{TEMP_PREFIX}{path.name}.{secrets.token_hex(6)}")
        try:
            return os.open(tmp, flags, mode), tmp  # `mode` goes through the umask, as with open()
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name beside {path}")


def _replace(tmp: Path, path: Path) -> None:
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_bytes_atomic(path: str | Path, data: bytes, *, mode: int = 0o666) -> Path:
    """Write `data` to `path` atomically and durably (see the module's docstring); `mode` as in
    `os.open` (0o600: only the owner may read it)."""
    path = Path(path)
    _replace(_durable_temp(path, data, mode), path)
    return path


def _durable_temp(path: Path, data: bytes, mode: int) -> Path:
    """`data` in a fresh, fsynced temporary file beside `path` (removed again if writing fails)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temp(path, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def write_text_atomic(path: str | Path, text: str, *, mode: int = 0o666, encoding: str = "utf-8") -> Path:
    return write_bytes_atomic(path, text.encode(encoding), mode=mode)


def write_json_atomic(path: str | Path, data: Any, *, mode: int = 0o666, **dumps: Any) -> Path:
    """`data` as JSON (`dumps` go to `json.dumps`: indent, sort_keys, default)."""
    return write_text_atomic(path, json.dumps(data, **dumps), mode=mode)


def write_new_file_atomic(path: str | Path, data: bytes, *, mode: int = 0o666) -> bool:
    """Create `path` holding `data` unless it exists: of several writers racing, the first wins and
    the others keep its file (False). Never leaves a partial file at `path`."""
    path = Path(path)
    tmp = _durable_temp(path, data, mode)
    try:
        try:
            os.link(tmp, path)  # unlike a rename, never replaces what another writer put there
        except FileExistsError:
            return False
        fsync_dir(path.parent)
        return True
    finally:
        tmp.unlink(missing_ok=True)


def write_atomic_via(path: str | Path, writer: Callable[[BinaryIO], object], *, mode: int = 0o666) -> Path:
    """Let `writer(handle)` write the file through a binary handle on the temporary file (given a
    handle, `np.savez` adds no suffix of its own), then put it in place as the other atomic
    writes do."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temp(path, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            writer(handle)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _replace(tmp, path)
    return path


def replace_file(src: str | Path, dst: str | Path) -> Path:
    """Rename the finished file `src` over `dst` in one step (a commit by rename), durably."""
    src, dst = Path(src), Path(dst)
    os.replace(src, dst)
    fsync_dir(dst.parent)
    return dst


def append_line(path: str | Path, line: str, *, durable: bool = True) -> None:
    """Append one line to a log; `durable`: fsynced before returning, else only flushed. A crash
    can cut the last line only (readers skip a line that does not parse)."""
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(line + "\n")
        handle.flush()
        if durable:
            os.fsync(handle.fileno())


# ------------------------------------------------------------------------------------ folders
@contextlib.contextmanager
def staged_folder(parent: str | Path, prefix: str = TEMP_PREFIX) -> Iterator[Path]:
    """A new, empty folder with a unique name in `parent` (make it, then `commit_folder` it); if it
    is still there when the block ends (an error, or never committed), it is removed."""
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=parent, prefix=prefix))
    try:
        yield staging
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def commit_folder(staging: str | Path, target: str | Path) -> Path:
    """Put a fully written staging folder in place as `target` in one rename (the commit), after
    fsyncing everything in it; `target` must not exist (or be an empty folder, as `os.rename`)."""
    staging, target = Path(staging), Path(target)
    fsync_tree(staging)
    os.rename(staging, target)
    fsync_dir(target.parent)
    return target


def version_name(version: int) -> str:
    """The folder name of a numbered version: `v0001`."""
    return f"v{int(version):04d}"


def version_of(name: str) -> int | None:
    """The number in a version folder's name (`v0012` -> 12), or None for any other name."""
    match = _VERSION_DIR.match(name)
    return int(match.group(1)) if match else None


def version_numbers(folder: str | Path, complete: Callable[[Path], bool] | None = None) -> list[int]:
    """The numbers of `folder`'s version folders (`v0001`, ...), ascending; with `complete`, only
    those for which it is true (a folder a writer has not finished is then not counted)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = []
    for entry in folder.iterdir():
        version = version_of(entry.name)
        if version is not None and entry.is_dir() and (complete is None or complete(entry)):
            found.append(version)
    return sorted(found)


def next_version(folder: str | Path, complete: Callable[[Path], bool] | None = None) -> int:
    """One past the highest version folder in `folder` (1 when there is none); call it under the
    lock that serialises the writers of `folder`."""
    return (version_numbers(folder, complete) or [0])[-1] + 1


# ------------------------------------------------------------------------------------ locks
class LockTimeout(TimeoutError):
    """The lock was not free within the time given."""


class ProcessLock:
    """An exclusive lock on the file `path`: held by one thread of one process at a time (other
    processes, other threads and other `ProcessLock`s on the same file wait), re-entrant within
    the thread that holds it. The lock file is left in place."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._threads = threading.RLock()  # other threads of this process wait here
        self._depth = 0  # holds by the owning thread (only it changes this, under `_threads`)
        self._owner: int | None = None
        self._file = None

    def acquire(self, timeout: float | None = None) -> None:
        """Wait for the lock: forever (None), at most `timeout` seconds, or one try (0)."""
        wait = -1 if timeout is None else max(float(timeout), 0.0)
        if not self._threads.acquire(timeout=wait):
            raise LockTimeout(f"{self.path} is held by another thread")
        try:
            if self._depth == 0:
                self._acquire_file(wait)
                self._owner = threading.get_ident()
            self._depth += 1
        except BaseException:
            self._threads.release()
            raise

    def _acquire_file(self, wait: float) -> None:
        if self._file is None:
            from filelock import FileLock

            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = FileLock(str(self.path))
        from filelock import Timeout

        try:
            self._file.acquire(timeout=wait)
        except Timeout:
            raise LockTimeout(f"{self.path} is held by another process") from None

    def release(self) -> None:
        if self._depth <= 0 or self._owner != threading.get_ident():
            raise RuntimeError(f"{self.path}: release of a lock this thread does not hold")
        self._depth -= 1
        try:
            if self._depth == 0:
                self._owner = None
                self._file.release()
        finally:
            self._threads.release()

    @property
    def held(self) -> bool:
        """True while some thread of this process holds it through this object."""
        return self._depth > 0

    def __enter__(self) -> "ProcessLock":
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def sha256_file(path: str | Path) -> str:
    """The sha256 hex digest of a file, read in 1 MiB blocks (manifests and integrity checks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
