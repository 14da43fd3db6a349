"""All-or-nothing writes of several cases (a multi-slice label save) into the site store's cache.

`SiteStore.add_case` makes one case atomic (staged under a temporary name, renamed into place).
A label save on a volume adds several cases; renaming N folders is not one atomic step, so:

1. every case is staged first (fully written and fsynced under `.tmp-*`, invisible to readers);
2. under the store's lock, a journal `cache/.group-<id>.json` naming the targets is written
   atomically, the staged folders are renamed into place, and the journal is removed;
3. at start (`recover`), a journal still present means a crash cut step 2: the cases it names that
   carry its group id are removed, so the save has not happened at all.

A journal is trusted only as far as it is one of ours (`read_journal`): its file name carries a
group id of 32 hex digits, it names that same group, and every case it names is a valid case id,
a folder directly inside `cache/`. Anything else (a leftover naming `""`, `../adapters`, another
group's cases) removes nothing: it is kept, logged and flagged by `fedpoint site check`.

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

from fedpoint.client.site_store import SiteStore, check_id
from fedpoint.shared.fileio import commit_folder, fsync_dir, fsync_tree, staged_folder, write_json_atomic

log = logging.getLogger("fedpoint.service")
JOURNAL_PREFIX = ".group-"
_GROUP = re.compile(r"^[0-9a-f]{32}$")


class JournalError(ValueError):
    """A journal file that is not one fedpoint wrote: nothing it names is touched."""


def read_journal(path: Path) -> tuple[str, list[str]]:
    """(group, case folder names) of a journal of our own making; JournalError otherwise."""
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
    for name in names:
        try:
            check_id(name, "case")
        except ValueError:
            raise JournalError(f"cache/{path.name}: names {str(name)[:60]!r}, not a case folder of the cache") from None
    return group, names


def _stage(staging: Path, case_id: str, image: np.ndarray, mask: np.ndarray, meta: dict) -> None:
    np.save(staging / "image.npy", np.asarray(image, dtype=np.float32))
    np.save(staging / "mask.npy", np.asarray(mask, dtype=bool))
    (staging / "meta.json").write_text(json.dumps({"case_id": case_id, "accepted_at": time.time(), **meta}))
    fsync_tree(staging)  # before the lock is taken: the commit then has nothing left to flush


def write_cases(store: SiteStore, cases: list[tuple[str, np.ndarray, np.ndarray, dict]]) -> list[str]:
    """Add every (case_id, image, mask, meta) to the cache, or none of them; returns the folder names."""
    if len(cases) == 1:
        case_id, image, mask, meta = cases[0]
        return [store.add_case(case_id, image, mask, meta).name]
    cache = store.root / "cache"
    group = uuid.uuid4().hex
    with contextlib.ExitStack() as stack:  # a staged folder not committed is removed on the way out
        staged: list[Path] = []
        for case_id, image, mask, meta in cases:
            check_id(case_id, "case id")
            staged.append(stack.enter_context(staged_folder(cache)))
            _stage(staged[-1], case_id, image, mask, {**meta, "group": group, "group_size": len(cases)})
        with store.locked():
            names, taken = [], set()
            for case_id, *_ in cases:
                name, n = case_id, 1
                while (cache / name).exists() or name in taken:
                    n += 1
                    name = f"{case_id}.{n}"
                taken.add(name)
                names.append(name)
            journal = cache / f"{JOURNAL_PREFIX}{group}.json"
            write_json_atomic(journal, {"group": group, "cases": names}, indent=2)
            for folder, name in zip(staged, names):
                commit_folder(folder, cache / name)
            journal.unlink()
            fsync_dir(cache)
    for (_, _, _, meta), name in zip(cases, names):
        store.log("accept", case=name, group=group,
                  **{k: v for k, v in meta.items() if isinstance(v, (int, float, str)) and k not in ("case", "group")})
    return names


def recover(store: SiteStore) -> list[str]:
    """Undo multi-case writes a crash cut short; returns the case folders removed. Only a journal of
    our own making removes anything, and only case folders inside the cache that carry its group."""
    cache = store.root / "cache"
    removed: list[str] = []
    with store.locked():
        for journal in sorted(cache.glob(f"{JOURNAL_PREFIX}*")):
            try:
                group, names = read_journal(journal)
            except JournalError as err:
                store.log("journal-refused", file=f"cache/{journal.name}", reason=str(err))
                log.warning("%s; nothing removed (run `fedpoint site check`, then delete it after a look)", err)
                continue
            cut = []
            for name in names:
                folder = cache / name
                try:
                    same = json.loads((folder / "meta.json").read_text()).get("group") == group
                except (OSError, ValueError, AttributeError):
                    same = False  # fully written before its rename: unreadable means not this group's
                if same and folder.parent == cache and folder.is_dir() and not folder.is_symlink():
                    shutil.rmtree(folder)
                    cut.append(folder.name)
            journal.unlink()
            removed += cut
            store.log("group-rollback", group=group, removed=len(cut))
            log.warning("rolled back an interrupted multi-slice save (group %s): removed %s", group, cut)
    return removed
