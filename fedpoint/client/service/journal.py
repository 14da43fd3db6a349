"""All-or-nothing writes of several cases (a multi-slice label save) into the site store's cache.

`SiteStore.add_case` makes one case atomic (staged under a temporary name, renamed into place).
A label save on a volume adds several cases, and a label map of several structures adds cases to
several task stores (`SiteStore.for_task`: each structure keeps its cases under `tasks/<task>/`);
renaming N folders is not one atomic step, so:

1. every case is staged first, in the cache it goes to (fully written and fsynced under `.tmp-*`,
   invisible to readers);
2. under the lock of every store written (the root's first, then the tasks' by name), one journal
   `cache/.group-<id>.json` in the ROOT store's cache, naming the targets (and the task of each), is
   written atomically, the staged folders are renamed into place, and the journal is removed;
3. at start (`recover`, on the root store), a journal still present means a crash cut step 2: the
   cases it names that carry its group id are removed from their task's cache, so the save has not
   happened at all.

A journal is trusted only as far as it is one of ours (`read_journal`): its file name carries a
group id of 32 hex digits, it names that same group, every case it names is a valid case id, a
folder directly inside its task's `cache/`, and every task is a normalised task name. Anything else
(a leftover naming `""`, `../adapters`, another group's cases) removes nothing: it is kept, logged
and flagged by `fedpoint site check`. A journal without `tasks` (written before tasks existed)
names cases of the root store.

The reply to the client is sent only after step 2, so an acknowledged save is never rolled back.
Each case's meta carries `group` (and the idempotency key of the request that saved it).
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import shutil
import time
import uuid
from pathlib import Path

import numpy as np

from fedpoint.client.site_store import TASKS_DIR, SiteStore, check_id
from fedpoint.shared.fileio import commit_folder, fsync_dir, fsync_tree, staged_folder, write_json_atomic
from fedpoint.shared.tasks import DEFAULT_TASK, normalise_task

log = logging.getLogger("fedpoint.service")
JOURNAL_PREFIX = ".group-"
_GROUP = re.compile(r"^[0-9a-f]{32}$")


class JournalError(ValueError):
    """A journal file that is not one fedpoint wrote: nothing it names is touched."""


def read_journal(path: Path) -> tuple[str, list[tuple[str, str]]]:
    """(group, [(task, case folder name)]) of a journal of our own making; JournalError otherwise."""
    group = path.name[len(JOURNAL_PREFIX):-len(".json")] if path.name.endswith(".json") else ""
    if not path.name.startswith(JOURNAL_PREFIX) or not _GROUP.match(group):
        raise JournalError(f"cache/{path.name}: not a journal name fedpoint writes")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise JournalError(f"cache/{path.name}: cannot be read ({type(err).__name__})") from None
    names = data.get("cases") if isinstance(data, dict) else None
    if not isinstance(data, dict) or data.get("group") != group or not isinstance(names, list) or not names:
        raise JournalError(f"cache/{path.name}: not a journal of group {group} with a list of cases")
    tasks = data.get("tasks", [DEFAULT_TASK] * len(names))
    if not isinstance(tasks, list) or len(tasks) != len(names):
        raise JournalError(f"cache/{path.name}: its tasks do not match its cases one to one")
    for name in names:
        try:
            check_id(name, "case")
        except ValueError:
            raise JournalError(f"cache/{path.name}: names {str(name)[:60]!r}, not a case folder of the cache") from None
    for task in tasks:
        try:
            ok = isinstance(task, str) and normalise_task(task) == task
        except ValueError:
            ok = False
        if not ok:
            raise JournalError(f"cache/{path.name}: names task {str(task)[:60]!r}, not a task of the store")
    return group, list(zip(tasks, names))


def cache_folder(root: Path, task: str) -> Path:
    """The cache of `task` in the store at `root` (no folder is made: a journal names it, it may be gone)."""
    return root / "cache" if task == DEFAULT_TASK else root / TASKS_DIR / task / "cache"


def case_name(task: str, name: str) -> str:
    """A case's name as reports show it: a task store's under `tasks/<task>/`, the root's bare."""
    return name if task == DEFAULT_TASK else f"{TASKS_DIR}/{task}/{name}"


def task_of_store(root: SiteStore, store: SiteStore) -> str:
    """Which task of `root` the store `store` is (the root itself: the default task)."""
    if store.root == root.root:
        return DEFAULT_TASK
    if store.root.parent != root.root / TASKS_DIR:
        raise ValueError(f"{store.root.name} is not a task store of {root.root.name}")
    return store.root.name


def _stage(staging: Path, case_id: str, image: np.ndarray, mask: np.ndarray, meta: dict) -> None:
    np.save(staging / "image.npy", np.asarray(image, dtype=np.float32))
    np.save(staging / "mask.npy", np.asarray(mask, dtype=bool))
    (staging / "meta.json").write_text(json.dumps({"case_id": case_id, "accepted_at": time.time(), **meta}))
    fsync_tree(staging)  # before the lock is taken: the commit then has nothing left to flush


def write_cases(root: SiteStore, cases: list[tuple[SiteStore, str, np.ndarray, np.ndarray, dict]]) -> list[str]:
    """Add every (store, case_id, image, mask, meta) to its store's cache, or none of them; `store` is
    `root` or one of its task stores, the journal is `root`'s. Returns the folder names."""
    if len(cases) == 1:
        store, case_id, image, mask, meta = cases[0]
        return [store.add_case(case_id, image, mask, meta).name]
    group = uuid.uuid4().hex
    tasks = [task_of_store(root, store) for store, *_ in cases]
    stores = {root.root: root, **{store.root: store for store, *_ in cases}}
    order = [stores[path] for path in sorted(stores, key=lambda p: (p != root.root, str(p)))]  # one order: no deadlock
    with contextlib.ExitStack() as stack:  # a staged folder not committed is removed on the way out
        staged: list[Path] = []
        for store, case_id, image, mask, meta in cases:
            check_id(case_id, "case id")
            staged.append(stack.enter_context(staged_folder(store.root / "cache")))
            _stage(staged[-1], case_id, image, mask, {**meta, "group": group, "group_size": len(cases)})
        for store in order:
            stack.enter_context(store.locked())
        names, taken = [], set()
        for (store, case_id, *_) in cases:
            cache, name, n = store.root / "cache", case_id, 1
            while (cache / name).exists() or (cache, name) in taken:
                n += 1
                name = f"{case_id}.{n}"
            taken.add((cache, name))
            names.append(name)
        journal = root.root / "cache" / f"{JOURNAL_PREFIX}{group}.json"
        body = {"group": group, "cases": names, **({"tasks": tasks} if set(tasks) != {DEFAULT_TASK} else {})}
        write_json_atomic(journal, body, indent=2)
        for folder, (store, *_), name in zip(staged, cases, names):
            commit_folder(folder, store.root / "cache" / name)
        journal.unlink()
        for store in order:
            fsync_dir(store.root / "cache")
    for (store, _, _, _, meta), name in zip(cases, names):
        store.log("accept", case=name, group=group,
                  **{k: v for k, v in meta.items() if isinstance(v, (int, float, str)) and k not in ("case", "group")})
    return names


def recover(store: SiteStore) -> list[str]:
    """Undo multi-case writes a crash cut short (the journals are in the root store's cache); returns
    the case folders removed (a task's as `tasks/<task>/<name>`). Only a journal of our own making
    removes anything, and only case folders inside its task's cache that carry its group."""
    cache = store.root / "cache"
    removed: list[str] = []
    with store.locked():
        for journal in sorted(cache.glob(f"{JOURNAL_PREFIX}*")):
            try:
                group, named = read_journal(journal)
            except JournalError as err:
                store.log("journal-refused", file=f"cache/{journal.name}", reason=str(err))
                log.warning("%s; nothing removed (run `fedpoint site check`, then delete it after a look)", err)
                continue
            cut = []
            for task, name in named:
                where = cache_folder(store.root, task)
                folder = where / name
                try:
                    same = json.loads((folder / "meta.json").read_text()).get("group") == group
                except (OSError, ValueError, AttributeError):
                    same = False  # fully written before its rename: unreadable means not this group's
                inside = where.resolve().is_relative_to(store.root.resolve())  # a task folder linked elsewhere: not ours
                if same and inside and folder.parent == where and folder.is_dir() and not folder.is_symlink():
                    shutil.rmtree(folder)
                    cut.append(case_name(task, name))
            journal.unlink()
            removed += cut
            store.log("group-rollback", group=group, removed=len(cut))
            log.warning("rolled back an interrupted multi-slice save (group %s): removed %s", group, cut)
    return removed
