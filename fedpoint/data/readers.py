"""Reading the user's own datasets: a Medical Segmentation Decathlon task folder, an nnU-Net v2 raw
dataset folder, or a plain folder of image/label pairs (NIfTI, NRRD, PNG), all through MONAI's
`LoadImage`.

Reading is lazy: listing a dataset reads only the files' headers (shape, channels, spacing) and
checks what they can tell; a case's voxels are decoded, and its label values checked, when the
case is first used, through `VOLUMES`, a cache of the last two decoded volumes. So a decathlon-size
task never sits in memory at once.

Every problem becomes a `DataError` naming the file. Non-strict reading skips the case and records
(file, reason): at listing time for what the headers show, at first use (see `types.usable`) for
what only the voxels show (a truncated file, bad label values). Strict reading decodes every case
once while listing, one at a time, and raises on the first problem.
"""

from __future__ import annotations

import json
import threading
from collections import Counter, OrderedDict
from pathlib import Path
from typing import Callable

import numpy as np

from fedpoint.data.formats import DATASET_SUFFIXES, NIFTI, NRRD, PNG, has_suffix, split_suffix
from fedpoint.data.normalize import canonical_modality
from fedpoint.data.types import Case, DataError, Dataset, LabelledObject
from fedpoint.shared.monai_import import load_monai

LABEL_NAME_ENDINGS = ("_label", "_labels", "_mask", "_seg")  # X_label.nii.gz is the label of X.nii.gz
PAIR_META = "fedpoint.json"  # optional in a pairs folder: {"modality": "CT", "labels": {"1": "tumour"}}
MAX_LABEL_VALUES = 1000  # more distinct values than this: an image, not a label map
SPACING_RTOL = 1e-3
MAX_DECODED = 16 << 30  # a dataset volume as float32: beyond this a header is a bomb, not a scan


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
            case = make_case()
            if self.strict:  # strict reading checks every voxel now, one case at a time
                case.load()
        except DataError as err:
            if self.strict:
                raise
            self.skipped.append((err.path, err.problem))
            return
        case.files.sink = self
        self.cases.append(case)

    def skip(self, err: DataError) -> None:
        if self.strict:
            raise err
        self.skipped.append((err.path, err.problem))

    def drop(self, files: CaseFiles, err: DataError) -> None:
        """A case found damaged on first decoding: out of the dataset's cases, into its skipped."""
        self.cases[:] = [c for c in self.cases if c.files is not files]
        if (err.path, err.problem) not in self.skipped:
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
        raise DataError(path, f"holds no images ({', '.join(DATASET_SUFFIXES)}), no dataset.json: nothing to read")
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
    labels = {p for p in files if _stem(p).endswith(LABEL_NAME_ENDINGS)}
    pairs, orphans = [], []
    for image in files:
        if image in labels:
            continue
        label = next((stems[_stem(image) + s] for s in LABEL_NAME_ENDINGS if _stem(image) + s in stems), None)
        (pairs.append((image, label)) if label else orphans.append(image))
    return pairs, orphans


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and has_suffix(p.name, DATASET_SUFFIXES) and not p.name.startswith("."))


# ---------------------------------------------------------------------------------- one case
def read_case(
    image_files: list[Path],
    label_file: Path,
    case_id: str,
    modality: str,
    names: dict[int, str],
    allowed: set[int] | None,
) -> Case:
    """Check one case from its headers (channels on one grid, the label a single map on the same
    grid and spacing) and return it lazy: voxels are decoded and label values checked on first use."""
    shape, spacing, channels = None, None, 0
    for file in image_files:
        file_shape, file_spacing = read_header(file)
        if shape is not None and file_shape[1:] != shape[1:]:
            raise DataError(file, f"channel shape {file_shape[1:]} differs from {image_files[0].name} {shape[1:]}")
        shape, spacing = shape or file_shape, spacing or file_spacing
        channels += file_shape[0]
    _check_label_header(label_file, shape[1:], spacing)
    files = CaseFiles(image_files, label_file, (channels, *shape[1:]), spacing, names, allowed)
    return Case(case_id, None, spacing, modality, None, source=str(image_files[0]), files=files)


def _check_label_header(path: Path, shape: tuple[int, ...], spacing: tuple[float, ...]) -> None:
    label_shape, label_spacing = read_header(path)
    if label_shape[0] != 1:
        raise DataError(path, f"label has {label_shape[0]} channels; expected a single label map")
    if label_shape[1:] != tuple(shape):
        raise DataError(path, f"label shape {label_shape[1:]} does not match the image shape {tuple(shape)}")
    if not np.allclose(label_spacing, spacing, rtol=SPACING_RTOL):
        raise DataError(path, f"label spacing {_fmt(label_spacing)} does not match the image spacing {_fmt(spacing)}")


class VolumeCache:
    """The last `size` decoded volumes (a case's image or its label map), shared by all lazy cases."""

    def __init__(self, size: int = 2):
        self.size = size
        self._items: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key, decode: Callable[[], np.ndarray]) -> np.ndarray:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
            while self._items and len(self._items) >= self.size:  # room first: never size + 1 held here
                self._items.popitem(last=False)
        array = decode()
        with self._lock:
            self._items[key] = array
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return array

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


VOLUMES = VolumeCache(2)


class CaseFiles:
    """A lazy case's files and what their headers said; voxels come from `VOLUMES` on demand."""

    def __init__(self, image_files: list[Path], label_file: Path, shape: tuple[int, ...], spacing: tuple[float, ...],
                 names: dict[int, str], allowed: set[int] | None):
        self.image_files, self.label_file = list(image_files), label_file
        self.shape, self.spacing = tuple(shape), tuple(spacing)  # (C, *spatial) of the stacked channels
        self.names, self.allowed = names, allowed
        self.values: list[int] | None = None  # foreground label values, known once the label is decoded
        self.error: DataError | None = None  # a decoding failure, kept so it is not retried
        self.sink: _Collector | None = None  # where a failure found on decoding is reported

    def image(self) -> np.ndarray:
        return VOLUMES.get((self, "image"), lambda: self._decode(self._decode_image))

    def label_map(self) -> np.ndarray:
        return VOLUMES.get((self, "label"), lambda: self._decode(self._decode_label))

    def check(self) -> None:
        self.image()
        self.label_map()

    def objects(self) -> list[LabelledObject]:
        """The label's objects, decoding it if needed; a damaged label is reported (none, then)."""
        if self.values is None:
            try:
                self.label_map()
            except DataError as err:
                if not self.report(err):
                    raise
                return []
        return [LabelledObject(self.names.get(v, f"label-{v}"), v, label_map=self.label_map, shape=self.shape[1:])
                for v in self.values]

    def report(self, err: DataError) -> bool:
        """Record a failure found on decoding; False where reading is strict (the caller raises)."""
        if self.sink is None or self.sink.strict:
            return False
        self.sink.drop(self, err)
        return True

    def _decode(self, decode: Callable[[], np.ndarray]) -> np.ndarray:
        if self.error is not None:
            raise self.error
        try:
            return decode()
        except DataError as err:
            self.error = err
            raise

    def _decode_image(self) -> np.ndarray:
        arrays = []
        for file in self.image_files:
            array, _ = read_image(file)
            if array.shape[1:] != self.shape[1:]:
                raise DataError(file, f"decodes to shape {array.shape[1:]}; its header says {self.shape[1:]}")
            arrays.append(array)
        image = arrays[0] if len(arrays) == 1 else np.concatenate(arrays)  # one file: no copy
        if image.shape[0] != self.shape[0]:
            raise DataError(self.image_files[0], f"decodes to {image.shape[0]} channels; its header says {self.shape[0]}")
        return image.astype(np.float32, copy=False)

    def _decode_label(self) -> np.ndarray:
        array, _ = read_image(self.label_file, dtype=None)  # its own integer type: a quarter of float32
        if array.shape != (1, *self.shape[1:]):
            raise DataError(self.label_file, f"decodes to shape {array.shape}; its header says {(1, *self.shape[1:])}")
        label, self.values = _check_values(self.label_file, array[0], self.allowed)
        return label


def _check_values(path: Path, label: np.ndarray, allowed: set[int] | None) -> tuple[np.ndarray, list[int]]:
    """The label in the smallest unsigned type, and its foreground values; bad values raise."""
    values = np.unique(label)
    if len(values) > MAX_LABEL_VALUES:
        raise DataError(path, f"has {len(values)} distinct values: an image, not a label map")
    if not np.all(values == np.round(values)) or values.min() < 0:
        odd = [float(v) for v in values if v != round(v) or v < 0][:5]
        raise DataError(path, f"has label values that are not non-negative integers: {odd}")
    if has_suffix(path.name, PNG) and set(values.tolist()) == {0, 255}:
        label = label > 0  # an 8-bit binary mask saved as 0/255
        values = np.array([0, 1])
    if allowed is not None:
        unexpected = sorted(int(v) for v in values if v > 0 and int(v) not in allowed)
        if unexpected:
            raise DataError(path, f"has unexpected label values {unexpected}; declared: {sorted(allowed)}")
    if values.max() <= 0:
        raise DataError(path, "label is empty: no foreground voxel")
    top = int(values.max())
    dtype = np.uint8 if top < 256 else np.uint16 if top < 65536 else np.int32
    return label.astype(dtype, copy=False), [int(v) for v in values if v > 0]


def read_image(path: Path, dtype=np.float32) -> tuple[np.ndarray, tuple[float, ...]]:
    """(C, *spatial) array and per-axis spacing, read with MONAI's LoadImage (`dtype` None: the file's)."""
    from fedpoint.data.headers import HeaderError, check_file

    try:  # the shared check: no detached data file, nothing past the bound (see `headers`)
        check_file(path, MAX_DECODED)
    except HeaderError as err:
        raise DataError(path, str(err)) from None
    load_monai()
    from monai.transforms import LoadImage

    try:
        loaded = LoadImage(image_only=True, ensure_channel_first=True, dtype=dtype)(str(path))
        array = np.asarray(loaded.detach().cpu().numpy())
        affine = np.asarray(loaded.affine, dtype=float)
    except Exception as err:  # any reader failure (truncated gzip, bad header, ...) names the file
        raise DataError(path, f"cannot be read: {type(err).__name__}: {err}") from err
    ndim = array.ndim - 1
    if ndim not in (2, 3):
        raise DataError(path, f"has {ndim} spatial dimensions; expected 2 or 3")
    spacing = tuple(float(s) for s in np.linalg.norm(affine[:ndim, :ndim], axis=0))
    return array, spacing


def read_header(path: Path) -> tuple[tuple[int, ...], tuple[float, ...]]:
    """The (C, *spatial) shape and the spacing `read_image` would give, from the header alone
    (NIfTI, NRRD, PNG; another format is decoded once to find out)."""
    name = path.name
    try:
        if has_suffix(name, NIFTI):
            shape, affine = _nifti_header(path)
        elif has_suffix(name, NRRD):
            shape, affine = _nrrd_header(path)
        elif has_suffix(name, PNG):
            shape, affine = _png_header(path)
        else:
            array, spacing = read_image(path)
            return tuple(array.shape), spacing
    except DataError:
        raise
    except Exception as err:  # a bad header of any kind names the file
        raise DataError(path, f"cannot be read: {type(err).__name__}: {err}") from err
    ndim = len(shape) - 1
    if ndim not in (2, 3):
        raise DataError(path, f"has {ndim} spatial dimensions; expected 2 or 3")
    return shape, tuple(float(s) for s in np.linalg.norm(affine[:ndim, :ndim], axis=0))


def _nifti_header(path: Path) -> tuple[tuple[int, ...], np.ndarray]:
    import nibabel as nib

    image = nib.load(str(path))  # parses the header; the voxels stay on disk
    dims = tuple(int(n) for n in image.shape)
    # As MONAI reads NIfTI: up to three spatial axes, anything after them is the channel axis.
    shape = (1, *dims) if len(dims) <= 3 else (dims[-1], *dims[:-1])
    return shape, np.asarray(image.affine, dtype=float)


def _nrrd_header(path: Path) -> tuple[tuple[int, ...], np.ndarray]:
    import nrrd

    from fedpoint.data.headers import MAX_HEADER, HeaderError, nrrd_fields

    with open(path, "rb") as f:
        try:
            nrrd_fields(f.read(MAX_HEADER + 4))  # a detached data file is refused at listing time
        except HeaderError as err:
            raise DataError(path, str(err)) from None
    header = nrrd.read_header(str(path))
    sizes = tuple(int(n) for n in header["sizes"])
    if header.get("space directions") is None:  # MONAI's reader needs it too
        raise DataError(path, "cannot be read: its NRRD header has no 'space directions'")
    directions = np.nan_to_num(np.asarray(header["space directions"], dtype=float))
    affine = np.eye(max(directions.shape) + 1)
    affine[: directions.shape[1], : directions.shape[0]] = directions.T  # axis i's step is column i
    return (1, *sizes), affine  # MONAI reads every NRRD axis as spatial


def _png_header(path: Path) -> tuple[tuple[int, ...], np.ndarray]:
    from PIL import Image

    with Image.open(path) as picture:  # reads the header only
        shape = (len(picture.getbands()), picture.width, picture.height)  # columns first, as MONAI reads PNG
    return shape, np.eye(3)


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
    parts = split_suffix(path.name, DATASET_SUFFIXES)
    return parts[0] if parts else path.stem


def _fmt(values) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"
