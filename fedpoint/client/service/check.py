"""`fedpoint site check`: verify a site store (and its images folder) and report every bad file.

Read-only by default: nothing is moved or written (`quarantine=True` moves corrupt cases aside, as
the service does at start). Each finding names its file relative to the store or images folder;
a task store's (a structure's, `SiteStore.for_task`) files are named `tasks/<task>/...`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from fedpoint.client.service.images import ImageError, read_array
from fedpoint.client.service.journal import JOURNAL_PREFIX, JournalError, read_journal
from fedpoint.client.site_store import TASKS_DIR, SiteStore, StoreDamage, adapter_folder_problem, check_id
from fedpoint.data.formats import SITE_IMAGE_SUFFIXES, split_suffix
from fedpoint.shared.tasks import normalise_task


@dataclass
class Finding:
    severity: str  # "error": the file cannot be used; "warning": usable, but worth a look
    file: str  # relative to the store ("cache/x/mask.npy") or "images/<name>"
    reason: str


@dataclass
class CheckReport:
    findings: list[Finding] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    adapter_in_use: str | None = None  # the root's (the default task's)
    task_adapters: dict[str, str | None] = field(default_factory=dict)  # each task store's, by task
    quarantined: list[tuple[str, str]] = field(default_factory=list)

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    def add(self, severity: str, file: str, reason: str) -> None:
        self.findings.append(Finding(severity, file, reason))


def _split(reason: str) -> tuple[str, str]:
    file, _, why = reason.partition(": ")
    return file, why


def check_store(root: Path, quarantine: bool = False, users: Path | None = None) -> CheckReport:
    """Every file of the store the service reads at start, read the way the service reads it: the
    root (the default task) and each task store under `tasks/` (a structure's cases, adapter
    versions, banks, splits and log), each finding named relative to the root."""
    report = CheckReport()
    root = Path(root)
    if not root.is_dir():
        report.add("error", ".", "the store folder does not exist")
        return report
    store = SiteStore(root)
    report.adapter_in_use = _check_one(store, report, "", quarantine)
    for journal in sorted((root / "cache").glob(f"{JOURNAL_PREFIX}*")):  # the journals of every task are the root's
        try:
            read_journal(journal)
        except JournalError as err:
            report.add("error", *_split(f"{err}; the service removes nothing for it: look, then delete it"))
            continue
        report.add("warning", f"cache/{journal.name}", "an interrupted multi-slice save; the service rolls it back at start")
    tasks = store.tasks()[1:]
    for task in tasks:
        if _task_name(task) != task:
            report.add("warning", f"{TASKS_DIR}/{task}", "not a task name fedpoint writes (normalised structure "
                                                        "name): the service never reads it")
            continue
        used = _check_one(SiteStore(root / TASKS_DIR / task), report, f"{TASKS_DIR}/{task}/", quarantine)
        report.task_adapters[task] = used
    if tasks:
        report.counts["tasks"] = len(report.task_adapters)
    check_lines(root / "log.jsonl", "log.jsonl", report)
    users = Path(users) if users is not None else root / "users.json"
    check_users(users, users.with_name("audit.jsonl"), report)
    return report


def _task_name(folder: str) -> str | None:
    try:
        return normalise_task(folder)
    except ValueError:
        return None


def _check_one(store: SiteStore, report: CheckReport, prefix: str, quarantine: bool) -> str | None:
    """One task's store (cases, adapter versions, banks, splits; its log unless it is the root's):
    findings named `prefix` + the file; returns the adapter a start would load."""
    def add(severity: str, file: str, reason: str) -> None:
        report.add(severity, prefix + file, reason)

    def count(name: str, n: int) -> None:
        report.counts[name] = report.counts.get(name, 0) + n

    root = store.root
    # cases
    cases = [p for p in sorted((root / "cache").iterdir()) if p.is_dir() and not p.name.startswith(".")]
    count("cases", len(cases))
    good = set()
    for folder in cases:
        reason = store.check_case(folder.name)
        if reason is None:
            good.add(folder.name)
            continue
        add("error", *_split(reason))
        if quarantine:
            store.quarantine_case(folder.name, reason)
    report.quarantined += [(prefix + name, reason) for name, reason in store.quarantined()]
    # adapter versions and the pointer
    versions = store.adapter_versions()
    count("adapter_versions", len(versions))
    for version in versions:
        reason = store.check_adapter(version)
        if reason:
            add("error", *_split(reason))
    chosen, notes = store.adapter_choice()  # what a start would load: the service's own rule
    for file, reason in notes:
        if file == "adapters/current.json":
            add("error", file, reason + (f"; the service uses {chosen.name}" if chosen else ""))
    if versions and chosen is None:
        add("error", "adapters", f"none of the {len(versions)} stored versions loads: the service would start "
                                 "from a fresh adapter")
    # received banks
    banks = root / "banks"
    for bank in sorted(p for p in banks.iterdir() if p.is_dir()):
        for folder in sorted(p for p in bank.glob("v[0-9]*") if p.is_dir()):
            reason = adapter_folder_problem(folder, f"banks/{bank.name}/{folder.name}")
            if reason:
                add("error", *_split(reason))
    latest = banks / "latest.json"
    if latest.exists():
        try:
            target = json.loads(latest.read_text())["path"]
            if not (root / target).is_dir():
                add("error", "banks/latest.json", f"points at {target}, which is not in the store")
        except (OSError, ValueError, KeyError, TypeError) as err:
            add("error", "banks/latest.json", f"{type(err).__name__}: {err}")
    # splits and log: read as the service reads them
    if (root / "splits.json").exists():
        try:
            splits = store.splits()
            missing = sorted({c for ids in splits.values() for c in ids} - good)
            if missing:
                add("warning", "splits.json", f"names {len(missing)} case(s) not in the cache (quarantined or "
                                              f"removed): {', '.join(missing[:5])}")
        except StoreDamage as err:
            add("error", *_split(str(err)))
    if prefix:
        check_lines(root / "log.jsonl", prefix + "log.jsonl", report)
    return chosen.name if chosen else ("a fresh adapter" if versions else None)


def check_lines(path: Path, rel: str, report: CheckReport) -> None:
    """A JSON-lines file the service reads: a last line cut by a crash is a warning; anything else that
    is not a JSON object per line (a bad byte, `5`, `null`, a cut line in the middle) is an error: the
    service skips it, so what it recorded (a bank review, an audit entry) is lost to it."""
    if not path.exists():
        return
    try:
        raw = path.read_bytes()
    except OSError as err:
        report.add("error", rel, f"cannot be read ({type(err).__name__})")
        return
    lines = raw.splitlines()
    bad, cut = [], False
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            if isinstance(json.loads(line.decode("utf-8")), dict):
                continue
        except json.JSONDecodeError:
            if number == len(lines):  # the last line, not JSON: a write a crash cut short
                cut = True
                continue
        except (UnicodeDecodeError, ValueError, RecursionError):
            pass
        bad.append(number)
    if cut:
        report.add("warning", rel, "its last line is cut (a crash while writing?); it is skipped")
    if bad:
        report.add("error", rel, f"{len(bad)} line(s) are not JSON objects (lines {', '.join(map(str, bad[:5]))}); "
                                 "the service skips them")


def check_users(users: Path, audit: Path, report: CheckReport) -> None:
    """The named users' file (as the service parses it) and the audit log (readable, writable)."""
    from fedpoint.client.service.users import UserError, parse_users

    if users.exists():
        try:
            report.counts["users"] = len(parse_users(users.read_bytes()))
        except (OSError, UserError) as err:
            report.add("error", users.name, f"{err}; the service then refuses every user token")
    check_lines(audit, audit.name, report)
    if audit.exists() and not os.access(audit, os.W_OK):
        report.add("error", audit.name, "not writable: clicks and accepts would go unrecorded")


def check_images(folder: Path, report: CheckReport, decode: bool = True, max_bytes: int = 1 << 30) -> None:
    folder = Path(folder)
    if not folder.is_dir():
        report.add("error", "images", "the images folder does not exist")
        return
    root = folder.resolve()
    count = 0
    for path in sorted(folder.iterdir()):
        # a sub-folder is one DICOM series, as the service lists it
        parts = (path.name, "") if path.is_dir() else split_suffix(path.name, SITE_IMAGE_SUFFIXES)
        if path.name.startswith(".") or parts is None or not (path.is_file() or path.is_dir()):
            continue
        count += 1
        rel = f"images/{path.name}"
        if path.is_symlink() and path.resolve().parent != root:
            report.add("error", rel, "a link to a file outside the images folder: not served")
            continue
        try:
            check_id(parts[0], "image id")
        except ValueError as err:
            report.add("error", rel, str(err))
            continue
        if decode:
            try:
                read_array(path, max_bytes)
            except (ImageError, OSError, MemoryError) as err:
                report.add("error", rel, str(err) if isinstance(err, ImageError) else type(err).__name__)
            except Exception as err:  # noqa: BLE001 - a check must report, never crash with a traceback
                report.add("error", rel, f"cannot be read ({type(err).__name__}: {str(err)[:200]})")
    report.counts["images"] = count
