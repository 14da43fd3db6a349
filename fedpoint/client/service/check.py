"""`fedpoint site check`: verify a site store (and its images folder) and report every bad file.

Read-only by default: nothing is moved or written (`quarantine=True` moves corrupt cases aside, as
the service does at start). Each finding names its file relative to the store or images folder.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from fedpoint.client.service.images import ImageError, read_array
from fedpoint.client.service.journal import JOURNAL_PREFIX
from fedpoint.client.site_store import SiteStore, adapter_folder_problem, check_id
from fedpoint.data.formats import SITE_IMAGE_SUFFIXES, split_suffix


@dataclass
class Finding:
    severity: str  # "error": the file cannot be used; "warning": usable, but worth a look
    file: str  # relative to the store ("cache/x/mask.npy") or "images/<name>"
    reason: str


@dataclass
class CheckReport:
    findings: list[Finding] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    adapter_in_use: str | None = None
    quarantined: list[tuple[str, str]] = field(default_factory=list)

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    def add(self, severity: str, file: str, reason: str) -> None:
        self.findings.append(Finding(severity, file, reason))


def _split(reason: str) -> tuple[str, str]:
    file, _, why = reason.partition(": ")
    return file, why


def check_store(root: Path, quarantine: bool = False) -> CheckReport:
    report = CheckReport()
    root = Path(root)
    if not root.is_dir():
        report.add("error", ".", "the store folder does not exist")
        return report
    store = SiteStore(root)
    cache = root / "cache"
    # cases
    cases = [p for p in sorted(cache.iterdir()) if p.is_dir() and not p.name.startswith(".")]
    report.counts["cases"] = len(cases)
    good = set()
    for folder in cases:
        reason = store.check_case(folder.name)
        if reason is None:
            good.add(folder.name)
            continue
        report.add("error", *_split(reason))
        if quarantine:
            store.quarantine_case(folder.name, reason)
    for journal in sorted(cache.glob(f"{JOURNAL_PREFIX}*.json")):
        report.add("warning", f"cache/{journal.name}", "an interrupted multi-slice save; the service rolls it back at start")
    report.quarantined = store.quarantined()
    # adapter versions and the pointer
    versions = store.adapter_versions()
    report.counts["adapter_versions"] = len(versions)
    valid = []
    for version in versions:
        reason = store.check_adapter(version)
        if reason:
            report.add("error", *_split(reason))
        else:
            valid.append(version)
    pointer = root / "adapters" / "current.json"
    current = None
    if pointer.exists():
        try:
            current = int(json.loads(pointer.read_text())["version"])
            if current not in versions:
                report.add("error", "adapters/current.json", f"points at version {current}, which is not in the store")
        except (OSError, ValueError, KeyError, TypeError) as err:
            report.add("error", "adapters/current.json", f"{type(err).__name__}: {err}")
            current = versions[-1] if versions else None
    usable = [v for v in valid if current is not None and v <= current]
    report.adapter_in_use = f"v{usable[-1]:04d}" if usable else ("a fresh adapter" if versions or current else None)
    if current is not None and usable and usable[-1] != current:
        report.add("warning", "adapters/current.json",
                   f"version {current} cannot be loaded; the service falls back to v{usable[-1]:04d}")
    # received banks
    banks = root / "banks"
    for bank in sorted(p for p in banks.iterdir() if p.is_dir()):
        for folder in sorted(p for p in bank.glob("v[0-9]*") if p.is_dir()):
            reason = adapter_folder_problem(folder, f"banks/{bank.name}/{folder.name}")
            if reason:
                report.add("error", *_split(reason))
    latest = banks / "latest.json"
    if latest.exists():
        try:
            target = json.loads(latest.read_text())["path"]
            if not (root / target).is_dir():
                report.add("error", "banks/latest.json", f"points at {target}, which is not in the store")
        except (OSError, ValueError, KeyError, TypeError) as err:
            report.add("error", "banks/latest.json", f"{type(err).__name__}: {err}")
    # splits and log
    splits_path = root / "splits.json"
    if splits_path.exists():
        try:
            splits = json.loads(splits_path.read_text())
            missing = sorted({c for ids in splits.values() for c in ids} - good)
            if missing:
                report.add("warning", "splits.json", f"names {len(missing)} case(s) not in the cache (quarantined or "
                                                     f"removed): {', '.join(missing[:5])}")
        except (OSError, ValueError, AttributeError, TypeError) as err:
            report.add("error", "splits.json", f"{type(err).__name__}: {err}")
    log_path = root / "log.jsonl"
    if log_path.exists():
        bad = 0
        for line in log_path.read_text(errors="replace").splitlines():
            try:
                json.loads(line)
            except ValueError:
                bad += 1
        if bad:
            report.add("warning", "log.jsonl", f"{bad} line(s) cannot be read (cut by a crash?); they are skipped")
    return report


def check_images(folder: Path, report: CheckReport, decode: bool = True) -> None:
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
                read_array(path)
            except (ImageError, OSError, MemoryError) as err:
                report.add("error", rel, str(err) if isinstance(err, ImageError) else type(err).__name__)
    report.counts["images"] = count
