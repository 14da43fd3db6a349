"""fedpoint.shared.fileio: atomic writes, staged folders, version numbers and the process lock,
checked across real processes."""

import json
import multiprocessing
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from fedpoint.shared import fileio
from fedpoint.shared.fileio import (
    TEMP_PREFIX,
    LockTimeout,
    ProcessLock,
    append_line,
    commit_folder,
    next_version,
    replace_file,
    staged_folder,
    version_name,
    version_numbers,
    version_of,
    write_atomic_via,
    write_bytes_atomic,
    write_json_atomic,
    write_new_file_atomic,
    write_text_atomic,
)

ROOT = Path(__file__).resolve().parents[2]
_CTX = multiprocessing.get_context("spawn")  # a fresh interpreter: no lock state shared by fork


def _strays(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(TEMP_PREFIX))


# ------------------------------------------------------------------------------------ writes
def test_writes_put_the_content_in_place_and_leave_no_temporary_file(tmp_path):
    write_bytes_atomic(tmp_path / "a.bin", b"\x00\x01")
    write_text_atomic(tmp_path / "sub" / "b.txt", "héllo")  # the folder is made
    write_json_atomic(tmp_path / "c.json", {"b": 1, "a": [2]}, indent=1, sort_keys=True)
    assert (tmp_path / "a.bin").read_bytes() == b"\x00\x01"
    assert (tmp_path / "sub" / "b.txt").read_text(encoding="utf-8") == "héllo"
    assert (tmp_path / "c.json").read_text() == json.dumps({"a": [2], "b": 1}, indent=1)
    write_json_atomic(tmp_path / "c.json", {"b": 2})  # replaces
    assert json.loads((tmp_path / "c.json").read_text()) == {"b": 2}
    assert _strays(tmp_path) == [] and _strays(tmp_path / "sub") == []


@pytest.mark.skipif(os.name == "nt", reason="POSIX permission bits")
def test_a_private_write_is_readable_by_its_owner_only(tmp_path):
    write_text_atomic(tmp_path / "users.json", "{}", mode=0o600)
    assert (tmp_path / "users.json").stat().st_mode & 0o777 == 0o600
    write_text_atomic(tmp_path / "open.json", "{}")
    assert (tmp_path / "open.json").stat().st_mode & 0o044 == 0o044 & ~_umask()


def _umask() -> int:
    old = os.umask(0)
    os.umask(old)
    return old


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary_file(tmp_path):
    path = tmp_path / "state.json"
    write_json_atomic(path, {"v": 1})
    with pytest.raises(TypeError):
        write_json_atomic(path, {"v": object()})  # not JSON: fails before anything is written
    def broken(handle) -> None:
        handle.write(b'{"v": 2')  # half a file, then the writer dies
        raise OSError("disk full")
    with pytest.raises(OSError, match="disk full"):
        write_atomic_via(path, broken)
    assert json.loads(path.read_text()) == {"v": 1}
    assert _strays(tmp_path) == []


def test_a_callback_writer_writes_in_place_and_its_temporary_file_is_never_listed(tmp_path):
    seen = []

    def writer(handle) -> None:
        seen.append(sorted(p.name for p in tmp_path.glob("*.npz")))  # what a reader lists meanwhile
        np.savez_compressed(handle, x=np.arange(3))

    path = write_atomic_via(tmp_path / "case.npz", writer)
    with np.load(path) as npz:
        assert npz["x"].tolist() == [0, 1, 2]
    assert seen == [[]]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["case.npz"]


def test_write_new_file_keeps_the_first_writers_content(tmp_path):
    assert write_new_file_atomic(tmp_path / "salt", b"first") is True
    assert write_new_file_atomic(tmp_path / "salt", b"second") is False
    assert (tmp_path / "salt").read_bytes() == b"first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["salt"]


def test_replace_file_and_append_line(tmp_path):
    write_text_atomic(tmp_path / "round-0001.pending.json", "{}")
    replace_file(tmp_path / "round-0001.pending.json", tmp_path / "round-0001.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["round-0001.json"]
    append_line(tmp_path / "log.jsonl", '{"a": 1}')
    append_line(tmp_path / "log.jsonl", '{"a": 2}', durable=False)
    assert (tmp_path / "log.jsonl").read_text().splitlines() == ['{"a": 1}', '{"a": 2}']


def _hammer(path: str, writer: int, rounds: int) -> None:
    payload = {"writer": writer, "blob": "x" * 200_000}  # big enough that a torn write would show
    for i in range(rounds):
        write_json_atomic(Path(path), {**payload, "i": i})


def test_two_processes_writing_one_file_never_leave_a_torn_file(tmp_path):
    path = tmp_path / "shared.json"
    write_json_atomic(path, {"writer": -1, "blob": "", "i": -1})
    writers = [_CTX.Process(target=_hammer, args=(str(path), w, 150)) for w in (0, 1)]
    for p in writers:
        p.start()
    deadline = time.monotonic() + 120
    while any(p.is_alive() for p in writers) and time.monotonic() < deadline:
        data = json.loads(path.read_text())  # a torn or half-replaced file would raise here
        assert data["writer"] == -1 or len(data["blob"]) == 200_000
    for p in writers:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert json.loads(path.read_text())["i"] == 149
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shared.json"]  # no temporary file left


# ------------------------------------------------------------------------------------ folders
def test_a_committed_folder_appears_whole_and_an_abandoned_one_is_removed(tmp_path):
    with staged_folder(tmp_path) as staging:
        (staging / "a.txt").write_text("a")
        (staging / "deep").mkdir()
        (staging / "deep" / "b.txt").write_text("b")
        assert staging.name.startswith(TEMP_PREFIX)
        commit_folder(staging, tmp_path / version_name(1))
    assert (tmp_path / "v0001" / "deep" / "b.txt").read_text() == "b"
    with pytest.raises(RuntimeError), staged_folder(tmp_path, prefix=".staging-") as staging:
        (staging / "half.txt").write_text("half")
        raise RuntimeError("the writer died")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v0001"]


def test_version_numbers_count_version_folders_only(tmp_path):
    assert next_version(tmp_path / "missing") == 1
    for name in ("v0001", "v0003", "v12345", "v2", "vx", ".staging-v0009"):
        (tmp_path / name).mkdir()
    (tmp_path / "v0004").write_text("a file, not a version")
    assert version_numbers(tmp_path) == [1, 3, 12345]
    assert version_numbers(tmp_path, complete=lambda p: p.name != "v12345") == [1, 3]
    assert next_version(tmp_path, complete=lambda p: p.name != "v12345") == 4
    assert (version_of("v0042"), version_of("v42"), version_of("latest.json")) == (42, None, None)
    assert version_name(7) == "v0007" and version_name(12345) == "v12345"


# ------------------------------------------------------------------------------------ locks
def _hold(path: str, ready, release, result) -> None:
    lock = ProcessLock(path)
    lock.acquire(timeout=30)
    ready.set()
    result.put("held")
    release.wait(60)
    lock.release()


def test_the_lock_excludes_a_second_process_until_it_is_released(tmp_path):
    path = str(tmp_path / ".lock")
    ready, release, result = _CTX.Event(), _CTX.Event(), _CTX.Queue()
    holder = _CTX.Process(target=_hold, args=(path, ready, release, result))
    holder.start()
    try:
        assert ready.wait(60), "the other process never took the lock"
        lock = ProcessLock(path)
        with pytest.raises(LockTimeout):
            lock.acquire(timeout=0)
        started = time.monotonic()
        with pytest.raises(LockTimeout):
            lock.acquire(timeout=0.5)
        assert time.monotonic() - started >= 0.4  # it did wait, boundedly
        release.set()
        lock.acquire(timeout=30)  # free once the holder lets go
        assert lock.held
        lock.release()
    finally:
        release.set()
        holder.join(timeout=60)
    assert holder.exitcode == 0 and result.get(timeout=5) == "held"
    assert (tmp_path / ".lock").exists()  # the lock file stays (builtin data folders list it)


def test_the_lock_is_reentrant_in_its_thread_and_excludes_other_threads(tmp_path):
    lock = ProcessLock(tmp_path / ".lock")
    other = ProcessLock(tmp_path / ".lock")  # a second object on the same file (a second SiteStore)
    outcome = {}

    def contend(key: str, target: ProcessLock) -> None:
        try:
            target.acquire(timeout=0.3)
            target.release()
            outcome[key] = "acquired"
        except LockTimeout:
            outcome[key] = "refused"

    with lock:
        with lock:  # re-entrant: a locked method may call another
            assert lock.held
        assert lock.held  # the inner release kept the outer hold
        for key, target in (("same object", lock), ("other object", other)):
            t = threading.Thread(target=contend, args=(key, target))
            t.start()
            t.join(30)
    assert outcome == {"same object": "refused", "other object": "refused"}
    assert not lock.held
    contend("after", other)
    assert outcome["after"] == "acquired"
    with pytest.raises(RuntimeError):
        lock.release()  # not held


def test_store_modules_import_without_fcntl():
    """fcntl does not exist on Windows: importing the stores must not need it."""
    code = ("import sys; sys.modules['fcntl'] = None\n"
            "import fedpoint.client.site_store, fedpoint.server.banks, fedpoint.data.builtin\n"
            "from fedpoint.shared.fileio import ProcessLock\n"
            "import tempfile, pathlib\n"
            "lock = ProcessLock(pathlib.Path(tempfile.mkdtemp()) / '.lock')\n"
            "with lock, lock: pass\n"
            "print('ok')\n")
    out = subprocess.run([sys.executable, "-W", "ignore", "-c", code], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_fileio_is_light():
    code = ("import sys, fedpoint.shared.fileio\n"
            "print(sorted(m for m in ('torch', 'monai', 'numpy', 'pydantic', 'filelock') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stdout + out.stderr
    assert fileio.__name__ == "fedpoint.shared.fileio"
