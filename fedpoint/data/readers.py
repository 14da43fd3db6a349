"""Reading the user's own datasets: a Medical Segmentation Decathlon task folder, an nnU-Net v2 raw
dataset folder, or a plain folder of image/label pairs (NIfTI, NRRD, PNG), all through MONAI's
`LoadImage`.

Every problem becomes a `DataError` naming the file. Non-strict reading skips the case and records
(file, reason); strict reading raises on the first problem.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np

from fedpoint.data.normalize import canonical_modality
from fedpoint.data.types import Case, DataError, Dataset, LabelledObject

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".png")
LABEL_SUFFIXES = ("_label", "_labels", "_mask", "_seg")
PAIR_META = "fedpoint.json"  # optional in a pairs folder: {"modality": "CT", "labels": {"1": "tumour"}}
MAX_LABEL_VALUES = 1000  # more distinct values than this: an image, not a label map
SPACING_RTOL = 1e-3


# ---------------------------------------------------------------------------------- entry point
def read_folder(path: Path, *, strict: bool = False) -> Dataset:
    if path.is_file():
        raise DataError(path, "is a file; give the dataset's folder")
    meta_path = path / "dataset.json"
    if meta_path.is_file():
        meta = _read_json(meta_path)
        if "training" in meta:
            return read_msd(path, meta, strict=strict)
        if "channel_names" in meta or "file_ending" in meta:
            return read_nnunet(path, meta, strict=strict)
        raise DataError(meta_path, "is neither MSD ('training' list) nor nnU-Net v2 ('channel_names', 'file_ending')")
    return read_pairs(path, strict=strict)


class _Collector:
    """Gathers cases, skipping or raising on problems depending on `strict`."""

    def __init__(self, strict: bool):
        self.strict = strict
        self.cases: list[Case] = []
        self.skipped: list[tuple[str, str]] = []

    def add(self, make_case) -> None:
        try:
            self.cases.append(make_case())
        except DataError as err:
            if self.strict:
                raise
            self.skipped.append((err.path, err.problem))

    def skip(self, err: DataError) -> None:
        if self.strict:
            raise err
        self.skipped.append((err.path, err.problem))


# ---------------------------------------------------------------------------------- MSD
def read_msd(path: Path, meta: dict, *, strict: bool = False) -> Dataset:
    meta_path = path / "dataset.json"
    modality = _modality_from_channels(meta.get("modality", {}), meta_path)
    names = _msd_label_names(meta.get("labels", {}), meta_path)
    collect = _Collector(strict)
    for i, entry in enumerate(meta["training"]):
        if not isinstance(entry, dict) or "image" not in entry:
            collect.skip(DataError(meta_path, f"training[{i}] has no 'image'"))
            continue
        image = path / entry["image"]
        label = path / entry["label"] if entry.get("label") else None
        missing = [p for p in (image, label) if p is not None and not p.is_file()]
        if missing:
            collect.skip(DataError(missing[0], f"listed in {meta_path.name} (training[{i}]) but missing"))
            continue
        if label is None:
            collect.skip(DataError(image, f"training[{i}] in {meta_path.name} has no label"))
            continue
        collect.add(lambda: read_case([image], label, _stem(image), modality, names, set(names)))
    return _dataset(meta.get("name") or path.name, collect, path, meta)


def _msd_label_names(labels: dict, meta_path: Path) -> dict[int, str]:
    try:
        names = {int(k): str(v) for k, v in labels.items()}
    except (TypeError, ValueError, AttributeError) as err:
        raise DataError(meta_path, f"'labels' must map label values to names ({err})") from err
    names.pop(0, None)
    return names


# ---------------------------------------------------------------------------------- nnU-Net v2
def read_nnunet(path: Path, meta: dict, *, strict: bool = False) -> Dataset:
    meta_path = path / "dataset.json"
    ending = meta.get("file_ending", ".nii.gz")
    channels = meta.get("channel_names", {"0": "unknown"})
    modality = _modality_from_channels(channels, meta_path)
    names = _nnunet_label_names(meta.get("labels", {}), meta_path)
    images_dir, labels_dir = path / "imagesTr", path / "labelsTr"
    if not images_dir.is_dir():
        raise DataError(images_dir, "missing (an nnU-Net v2 raw dataset has imagesTr/ and labelsTr/)")
    by_case: dict[str, list[Path]] = {}
    for file in sorted(images_dir.iterdir()):
        if file.name.endswith(ending) and not file.name.startswith("."):
            case_id, _, channel = file.name[: -len(ending)].rpartition("_")
            if channel.isdigit() and case_id:
                by_case.setdefault(case_id, []).append(file)
    collect = _Collector(strict)
    for case_id, files in by_case.items():
        label = labels_dir / f"{case_id}{ending}"
        if len(files) != len(channels):
            collect.skip(DataError(files[0], f"case {case_id} has {len(files)} channel files, dataset.json names {len(channels)}"))
        elif not label.is_file():
            collect.skip(DataError(files[0], f"has no label file (expected labelsTr/{label.name})"))
        else:
            collect.add(lambda: read_case(files, label, case_id, modality, names, set(names)))
    expected = meta.get("numTraining")
    if isinstance(expected, int) and expected != len(by_case):
        collect.skip(DataError(meta_path, f"numTraining is {expected} but imagesTr/ holds {len(by_case)} cases"))
    return _dataset(meta.get("name") or path.name, collect, path, meta)


def _nnunet_label_names(labels: dict, meta_path: Path) -> dict[int, str]:
    """nnU-Net maps names to values; region-based entries (lists of values) are not objects here."""
    names = {}
    for name, value in labels.items():
        if isinstance(value, int):
            names[value] = name
        elif not isinstance(value, list):
            raise DataError(meta_path, f"label {name!r} has value {value!r}; expected an integer")
    names.pop(0, None)
    return names


# ---------------------------------------------------------------------------------- pairs
def read_pairs(path: Path, *, strict: bool = False) -> Dataset:
    """Either images/ + labels/ (or masks/) with matching names, or X.ext next to X_label.ext
    (also _labels, _mask, _seg). An optional fedpoint.json gives the modality and label names."""
    meta = _read_json(path / PAIR_META) if (path / PAIR_META).is_file() else {}
    modality = canonical_modality(str(meta.get("modality", "unknown")))
    names = _msd_label_names(meta.get("labels", {}), path / PAIR_META)
    allowed = set(names) if names else None
    pairs, orphans = _find_pairs(path)
    if not pairs and not orphans:
        raise DataError(path, f"holds no images ({', '.join(IMAGE_SUFFIXES)}), no dataset.json: nothing to read")
    collect = _Collector(strict)
    for image in orphans:
        collect.skip(DataError(image, "has no label file (expected images/+labels/ or a *_label file beside it)"))
    for image, label in pairs:
        collect.add(lambda: read_case([image], label, _stem(image), modality, names, allowed))
    return _dataset(meta.get("name") or path.name, collect, path, meta)


def _find_pairs(path: Path) -> tuple[list[tuple[Path, Path]], list[Path]]:
    for images_name, labels_names in (("images", ("labels", "masks")), ("imagesTr", ("labelsTr",))):
        images_dir = path / images_name
        labels_dir = next((path / n for n in labels_names if (path / n).is_dir()), None)
        if images_dir.is_dir() and labels_dir is not None:
            labels = {_stem(p): p for p in _image_files(labels_dir)}
            images = _image_files(images_dir)
            return [(i, labels[_stem(i)]) for i in images if _stem(i) in labels], [i for i in images if _stem(i) not in labels]
    files = _image_files(path)
    stems = {_stem(p): p for p in files}
    labels = {p for p in files if _stem(p).endswith(LABEL_SUFFIXES)}
    pairs, orphans = [], []
    for image in files:
        if image in labels:
            continue
        label = next((stems[_stem(image) + s] for s in LABEL_SUFFIXES if _stem(image) + s in stems), None)
        (pairs.append((image, label)) if label else orphans.append(image))
    return pairs, orphans


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.name.lower().endswith(IMAGE_SUFFIXES) and not p.name.startswith("."))


# ---------------------------------------------------------------------------------- one case
def read_case(
    image_files: list[Path],
    label_file: Path,
    case_id: str,
    modality: str,
    names: dict[int, str],
    allowed: set[int] | None,
) -> Case:
    """Read and check one case: channels stacked, label on the same grid, valid values, not empty."""
    arrays, spacing = [], None
    for file in image_files:
        array, file_spacing = read_image(file)
        if arrays and array.shape[1:] != arrays[0].shape[1:]:
            raise DataError(file, f"channel shape {array.shape[1:]} differs from {image_files[0].name} {arrays[0].shape[1:]}")
        arrays.append(array)
        spacing = spacing or file_spacing
    image = np.concatenate(arrays).astype(np.float32)
    label_map = read_label(label_file, image.shape[1:], spacing, allowed)
    values = [int(v) for v in np.unique(label_map) if v > 0]
    objects = [LabelledObject(names.get(v, f"label-{v}"), v, label_map=label_map) for v in values]
    return Case(case_id, image, spacing, modality, objects, source=str(image_files[0]))


def read_label(path: Path, shape: tuple[int, ...], spacing: tuple[float, ...], allowed: set[int] | None) -> np.ndarray:
    array, label_spacing = read_image(path)
    if array.shape[0] != 1:
        raise DataError(path, f"label has {array.shape[0]} channels; expected a single label map")
    label = array[0]
    if label.shape != tuple(shape):
        raise DataError(path, f"label shape {label.shape} does not match the image shape {tuple(shape)}")
    if not np.allclose(label_spacing, spacing, rtol=SPACING_RTOL):
        raise DataError(path, f"label spacing {_fmt(label_spacing)} does not match the image spacing {_fmt(spacing)}")
    return _check_values(path, label, allowed)


def _check_values(path: Path, label: np.ndarray, allowed: set[int] | None) -> np.ndarray:
    values = np.unique(label)
    if len(values) > MAX_LABEL_VALUES:
        raise DataError(path, f"has {len(values)} distinct values: an image, not a label map")
    if not np.all(values == np.round(values)) or values.min() < 0:
        odd = [float(v) for v in values if v != round(v) or v < 0][:5]
        raise DataError(path, f"has label values that are not non-negative integers: {odd}")
    if path.name.lower().endswith(".png") and set(values.tolist()) == {0, 255}:
        label = label > 0  # an 8-bit binary mask saved as 0/255
        values = np.array([0, 1])
    if allowed is not None:
        unexpected = sorted(int(v) for v in values if v > 0 and int(v) not in allowed)
        if unexpected:
            raise DataError(path, f"has unexpected label values {unexpected}; declared: {sorted(allowed)}")
    if values.max() <= 0:
        raise DataError(path, "label is empty: no foreground voxel")
    top = int(values.max())
    return label.astype(np.uint8 if top < 256 else np.uint16 if top < 65536 else np.int32)


def read_image(path: Path) -> tuple[np.ndarray, tuple[float, ...]]:
    """(C, *spatial) array and per-axis spacing, read with MONAI's LoadImage."""
    from monai.transforms import LoadImage

    try:
        loaded = LoadImage(image_only=True, ensure_channel_first=True)(str(path))
        array = np.asarray(loaded.detach().cpu().numpy())
        affine = np.asarray(loaded.affine, dtype=float)
    except Exception as err:  # any reader failure (truncated gzip, bad header, ...) names the file
        raise DataError(path, f"cannot be read: {type(err).__name__}: {err}") from err
    ndim = array.ndim - 1
    if ndim not in (2, 3):
        raise DataError(path, f"has {ndim} spatial dimensions; expected 2 or 3")
    spacing = tuple(float(s) for s in np.linalg.norm(affine[:ndim, :ndim], axis=0))
    return array, spacing


# ---------------------------------------------------------------------------------- helpers
def _read_json(path: Path) -> dict:
    try:
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(path, f"is not valid JSON ({err})") from err
    if not isinstance(meta, dict):
        raise DataError(path, "must hold a JSON object")
    return meta


def _modality_from_channels(channels: dict, meta_path: Path) -> str:
    if not isinstance(channels, dict):
        raise DataError(meta_path, "'modality'/'channel_names' must map channel indices to names")
    kinds = {canonical_modality(str(v)) for v in channels.values()} or {"unknown"}
    return kinds.pop() if len(kinds) == 1 else "MR" if "MR" in kinds else "mixed"


def _dataset(name: str, collect: _Collector, path: Path, meta: dict) -> Dataset:
    modalities = Counter(c.modality for c in collect.cases)
    return Dataset(
        name=str(name),
        modality=modalities.most_common(1)[0][0] if modalities else "unknown",
        cases=collect.cases,
        skipped=collect.skipped,
        source=str(path),
        licence=str(meta.get("licence") or meta.get("license") or "not stated"),
        labels="manual",
    )


def _stem(path: Path) -> str:
    name = path.name
    for suffix in IMAGE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _fmt(values) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"
