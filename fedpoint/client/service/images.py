"""The folder of images a site annotates: ids, decoding, normalisation for the model, label files written for clients.

An image's id is its file name without the suffix (`chest-01.nii.gz` -> `chest-01`). Ids are
looked up in a listing of the folder, never joined into a path from what a client sent, so no id
can reach outside the folder. Arrays keep the file's index order (x, y[, z]), as everywhere in
fedpoint: a point [x, y, z] from a MONAI Label client (image index space, IJK in 3D Slicer) is an
array index as it stands.
"""

from __future__ import annotations

import gzip
import io
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedpoint.client.site_store import check_id
from fedpoint.data.formats import (MEDICAL, NUMPY, PICTURES, RESULT_SUFFIXES, SITE_IMAGE_SUFFIXES,
                                   has_suffix, split_suffix)
from fedpoint.data.normalize import (CT_WINDOW_DEFAULT, CT_WINDOWS, PERCENTILES, PERCENTILES_OTHER, canonical_modality, ct_window,
                                     normalize)
from fedpoint.shared.monai_import import load_monai

CT_PRESETS = {"lung": CT_WINDOWS["lung"], "soft tissue": CT_WINDOWS["soft-tissue"], "bone": CT_WINDOWS["bone"],
              "wide": CT_WINDOW_DEFAULT}


class ImageError(ValueError):
    """An image or label that cannot be used; the message names it and says why."""


# ------------------------------------------------------------------------------------ reading
DEFAULT_MAX_DECODED = 1 << 30  # max_decoded_mb's default
SPACING_MM = (1e-3, 1e3)  # plausible mm per voxel; outside it the spacing is treated as unknown (voxels)
MIN_SIDE = 8  # pixels along x and y: smaller is not an image a clinician annotates (nor one the model can pool)


def check_header(path: Path, max_bytes: int = DEFAULT_MAX_DECODED) -> None:
    """The shared check before any decoder runs (`fedpoint.data.headers`): no data from another
    file, nothing larger than `max_bytes` as float32, no stream inflating past its header."""
    from fedpoint.data.headers import HeaderError, check_file

    try:
        check_file(path, max_bytes)
    except HeaderError as err:
        raise ImageError(f"{path.name}: {err}") from None


def read_array(path: Path, max_bytes: int = DEFAULT_MAX_DECODED) -> tuple[np.ndarray, np.ndarray]:
    """(C, *spatial) float32 array and a 4x4 affine (index -> RAS mm; identity where unknown).
    The file's header is checked first (`check_header`): nothing is decoded past `max_bytes`."""
    if path.is_dir():  # a DICOM series folder
        series = read_dicom_series(path, max_bytes)
        return series.channels(), series.affine
    check_header(path, max_bytes)
    suffix = split_suffix(path.name, SITE_IMAGE_SUFFIXES)
    if suffix and suffix[1] in NUMPY:
        try:
            array = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as err:
            raise ImageError(f"{path.name}: cannot be read as .npy ({err})") from None
        return _channel_first_npy(array, path.name), np.eye(4)
    load_monai()
    from monai.transforms import LoadImage  # seconds to import: only when an image is first opened

    try:
        loaded = LoadImage(image_only=True, ensure_channel_first=True)(str(path))
    except Exception as err:  # a truncated gzip, a bad header...: say which file
        raise ImageError(f"{path.name}: cannot be read ({type(err).__name__}: {err})") from None
    array = np.asarray(loaded.detach().cpu().numpy(), dtype=np.float32)
    affine = np.asarray(loaded.affine, dtype=float)
    if affine.shape != (4, 4):  # MONAI gives 2D images a 3x3 affine
        full = np.eye(4)
        full[:2, :2], full[:2, 3] = affine[:2, :2], affine[:2, 2]
        affine = full
    return array, affine


def read_dicom_series(folder: Path, max_bytes: int = DEFAULT_MAX_DECODED):
    """A folder holding one DICOM series, as a `fedpoint.data.dicom.DicomSeries`."""
    from fedpoint.data.dicom import DicomError, read_dicom_folder

    try:
        return read_dicom_folder(folder, max_bytes)
    except DicomError as err:
        raise ImageError(str(err)) from None


def _channel_first_npy(array: np.ndarray, name: str) -> np.ndarray:
    """.npy: (x, y), (C, x, y) with C <= 4, (x, y, z) or (C, x, y, z)."""
    if not np.issubdtype(array.dtype, np.number):
        raise ImageError(f"{name}: holds {array.dtype}, not numbers")
    if array.ndim == 2 or (array.ndim == 3 and array.shape[0] > 4):
        array = array[None]
    if array.ndim not in (3, 4):
        raise ImageError(f"{name}: shape {array.shape} is neither 2D nor 3D")
    return array.astype(np.float32)


def nifti_bytes(mask: np.ndarray, affine: np.ndarray, dtype: str = "uint8") -> bytes:
    """A label as gzipped NIfTI bytes (uint8 unless asked), on the image's grid (same affine)."""
    import nibabel as nib

    image = nib.Nifti1Image(np.asarray(mask, dtype=dtype), np.asarray(affine, dtype=float))
    image.header.set_xyzt_units("mm")
    return gzip.compress(image.to_bytes(), compresslevel=1)


RESULT_DTYPES = ("uint8", "uint16", "int16", "int32", "float32")
RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def check_result_format(extension: str, dtype: str) -> None:
    """MONAI Label's `result_extension` and `result_dtype`, refused clearly when not offered."""
    if extension not in RESULT_SUFFIXES:
        raise ImageError(f"result_extension {extension!r} is not supported; use one of {', '.join(RESULT_SUFFIXES)}")
    if dtype not in RESULT_DTYPES:
        raise ImageError(f"result_dtype {dtype!r} is not supported; use one of {', '.join(RESULT_DTYPES)}")


def label_file_bytes(mask: np.ndarray, affine: np.ndarray, extension: str = ".nii.gz", dtype: str = "uint8") -> bytes:
    """A label on the image's grid as a file a client asked for (MONAI Label's `result_extension`
    and `result_dtype`): NIfTI (gzipped or not) or NRRD (gzip encoding, LPS space as 3D Slicer writes)."""
    check_result_format(extension, dtype)
    data = np.asarray(mask).astype(dtype)
    if extension == ".nii.gz":
        return nifti_bytes(data, affine, dtype)
    if extension == ".nii":
        import nibabel as nib

        return nib.Nifti1Image(data, np.asarray(affine, dtype=float)).to_bytes()
    import nrrd

    header: dict = {"encoding": "gzip"}
    if data.ndim == 3:  # the volume's geometry; a 2D picture has none worth writing
        lps = RAS_TO_LPS @ np.asarray(affine, dtype=float)
        header.update({"space": "left-posterior-superior", "space directions": lps[:3, :3].T,
                       "space origin": lps[:3, 3]})
    buffer = io.BytesIO()
    nrrd.write(buffer, data, header, compression_level=1)
    return buffer.getvalue()


# ------------------------------------------------------------------------------------ one image
@dataclass
class LoadedImage:
    id: str
    path: Path
    display: np.ndarray  # (*spatial) float32, raw intensities (channel mean), for the viewer
    model_input: np.ndarray  # (C, *spatial) float32 in [0, 1], what the model sees
    affine: np.ndarray  # 4x4
    window: tuple[float, float]  # the default display window (raw units)
    modality: str
    dicom: Any = None  # the DicomSeries (source UIDs, headers) of a DICOM image, for a SEG written back

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.display.shape)

    @property
    def ndim(self) -> int:
        return self.display.ndim

    @property
    def slices(self) -> int:
        return self.shape[-1] if self.ndim == 3 else 1

    @property
    def spacing(self) -> tuple[float, ...] | None:
        """mm per spatial axis from the affine's columns; None where the file gives none usable."""
        a = np.asarray(self.affine, dtype=float)[: self.ndim, : self.ndim]
        values = tuple(float(v) for v in np.linalg.norm(a, axis=0))
        # 1 um to 1 m a voxel: beyond that a header is wrong, and a focus window in mm would be absurd
        return values if all(np.isfinite(v) and SPACING_MM[0] <= v <= SPACING_MM[1] for v in values) else None

    @property
    def flip_y(self) -> bool:
        """Show y upward when it runs toward anterior/superior (a medical volume), downward otherwise."""
        medical = self.dicom is not None or has_suffix(self.path.name, MEDICAL)
        return medical and self.affine[1, 1] > 0

    def meta(self) -> dict:
        presets = CT_PRESETS if canonical_modality(self.modality) == "CT" else {}
        finite = self.display[np.isfinite(self.display)]
        return {
            "id": self.id,
            "shape": list(self.shape),
            "slices": self.slices,
            "default_slice": self.slices // 2,
            "window": [float(self.window[0]), float(self.window[1])],
            "range": [float(finite.min()), float(finite.max())] if finite.size else [0.0, 1.0],
            "presets": {k: list(v) for k, v in presets.items()},
            "modality": self.modality,
            "flip_y": bool(self.flip_y),
            "file": self.path.name,
        }


def ct_window_values(window) -> tuple[float, float]:
    try:
        return ct_window(window)
    except ValueError as err:
        raise ImageError(str(err)) from None


def default_window(display: np.ndarray, modality: str, ct_window) -> tuple[float, float]:
    if canonical_modality(modality) == "CT":
        return ct_window_values(ct_window)
    pct = PERCENTILES.get(canonical_modality(modality), PERCENTILES_OTHER)
    flat = display.ravel()[:: max(1, display.size // 2_000_000)]
    low, high = np.percentile(flat, pct)
    return (float(low), float(high)) if high > low else (float(flat.min()), float(flat.max()) + 1e-6)


LUMINANCE = np.array([0.299, 0.587, 0.114], np.float32)  # ITU-R 601 weights, as Pillow's convert("L")


def _fit_channels(raw: np.ndarray, path: Path, model_channels: int) -> np.ndarray:
    """The image with the model's channel count. Kept when they agree; an RGB(A) picture for a
    one-channel model becomes grey (alpha dropped). Anything else is refused: averaging, say, two MR
    sequences into one would show the model an image unlike any it was trained on."""
    channels = raw.shape[0]
    if channels == model_channels:
        return raw
    picture = has_suffix(path.name, PICTURES) and raw.ndim == 3
    if model_channels == 1 and picture and channels in (3, 4):
        return np.tensordot(LUMINANCE, raw[:3], axes=1)[None].astype(np.float32)
    raise ImageError(f"{path.name}: has {channels} channels, the model takes {model_channels} (only an RGB or RGBA "
                     f"PNG/JPEG picture is turned grey for a one-channel model)")


def open_image(image_id: str, path: Path, modality: str, model_channels: int, ct_window, series=None,
               max_bytes: int = DEFAULT_MAX_DECODED) -> LoadedImage:
    """`series`: a DicomSeries already read (from a PACS); a folder at `path` is read as one."""
    if series is None and path.is_dir():
        series = read_dicom_series(path, max_bytes)
    raw, affine = (series.channels(), series.affine) if series is not None else read_array(path, max_bytes)
    raw = _fit_channels(raw, path, model_channels)
    if min(raw.shape[1:3]) < MIN_SIDE:
        raise ImageError(f"{path.name}: {tuple(raw.shape[1:])} pixels; an image needs at least {MIN_SIDE} on each "
                         "side of a slice")
    if not np.isfinite(raw).all():
        raise ImageError(f"{path.name}: contains NaN or infinite values")
    display = raw.mean(axis=0) if raw.shape[0] > 1 else raw[0]
    window = ct_window if canonical_modality(modality) == "CT" else None
    model_input = normalize(raw, modality, window=window)
    return LoadedImage(image_id, path, display, model_input, affine, default_window(display, modality, ct_window), modality,
                       series)


# ------------------------------------------------------------------------------------ the folder
class ImageFolder:
    """The listing of a folder of images, and a small cache of decoded ones."""

    def __init__(self, root: Path, modality: str, model_channels: int, ct_window=None, cache_size: int = 8,
                 max_bytes: int = DEFAULT_MAX_DECODED):
        self.root, self.max_bytes = Path(root), max_bytes
        if not self.root.is_dir():
            raise ImageError(f"images folder {self.root} does not exist")
        self.modality, self.model_channels, self.ct_window = modality, model_channels, ct_window
        self.cache_size = cache_size
        self._lock = threading.Lock()
        self._cache: OrderedDict[str, LoadedImage] = OrderedDict()
        self._listing: dict[str, Path] = {}
        self.skipped: list[tuple[str, str]] = []
        self._stamp: tuple[float, int] | None = None
        self._unreadable: dict[str, tuple[tuple[float, int], str]] = {}  # id -> (file stamp, reason)

    def _inside(self, path: Path) -> bool:
        """A file that really lies in the folder: a symlink leading out of it is refused."""
        try:
            return path.resolve(strict=True).parent == self.root.resolve(strict=True)
        except OSError:
            return False

    @staticmethod
    def _file_stamp(path: Path) -> tuple[float, int]:
        stat = path.stat()
        return (stat.st_mtime, stat.st_size)

    def unreadable(self) -> dict[str, str]:
        """Images whose file could not be decoded (id -> reason naming the file), until the file changes."""
        with self._lock:
            out = {}
            for image_id, (stamp, reason) in list(self._unreadable.items()):
                path = self._listing.get(image_id)
                try:
                    same = path is not None and self._file_stamp(path) == stamp
                except OSError:
                    same = False
                if same:
                    out[image_id] = reason
                else:
                    self._unreadable.pop(image_id, None)
            return out

    def skipped_list(self) -> list[dict]:
        """Files not served, with why: bad names, links leaving the folder, unreadable images."""
        self.ids()
        marked = [(self._listing[i].name, r) for i, r in self.unreadable().items() if i in self._listing]
        return [{"file": f, "reason": r} for f, r in [*self.skipped, *marked]]

    def _rescan(self) -> None:
        stat = self.root.stat()
        stamp = (stat.st_mtime, stat.st_nlink)
        if stamp == self._stamp:
            return
        listing, skipped = {}, []
        for path in sorted(self.root.iterdir()):
            # a folder: one DICOM series
            parts = (path.name, "") if path.is_dir() else split_suffix(path.name, SITE_IMAGE_SUFFIXES)
            if not (path.is_file() or path.is_dir()) or path.name.startswith(".") or parts is None:
                continue
            if path.is_symlink() and not self._inside(path):
                skipped.append((path.name, "a link to a file outside the images folder: not served"))
                continue
            try:
                image_id = check_id(parts[0], "image id")
            except ValueError as err:
                skipped.append((path.name, str(err)))
                continue
            if image_id in listing:
                skipped.append((path.name, f"another file already has the id {image_id!r} ({listing[image_id].name})"))
                continue
            listing[image_id] = path
        self._listing, self.skipped, self._stamp = listing, skipped, stamp
        for gone in set(self._cache) - set(listing):
            self._cache.pop(gone, None)

    def ids(self) -> list[str]:
        with self._lock:
            self._rescan()
            return list(self._listing)

    def path(self, image_id: str) -> Path:
        check_id(image_id, "image id")
        with self._lock:
            self._rescan()
            if image_id not in self._listing:
                raise KeyError(f"no image {image_id!r} in the site's images folder")
            path = self._listing[image_id]
        if not self._inside(path):  # replaced by a link leading out since the listing
            raise KeyError(f"no image {image_id!r} in the site's images folder (its file is a link leading out of it)")
        return path

    def load(self, image_id: str) -> LoadedImage:
        path = self.path(image_id)
        with self._lock:
            if image_id in self._cache:
                self._cache.move_to_end(image_id)
                return self._cache[image_id]
        try:
            stamp = self._file_stamp(path)
            loaded = open_image(image_id, path, self.modality, self.model_channels, self.ct_window,
                                max_bytes=self.max_bytes)
        except (ImageError, OSError, MemoryError) as err:
            reason = str(err) if isinstance(err, ImageError) else f"{path.name}: cannot be read ({type(err).__name__})"
            with self._lock:
                self._unreadable[image_id] = (stamp if "stamp" in locals() else (0.0, -1), reason)
            raise ImageError(reason) from None
        with self._lock:
            self._cache[image_id] = loaded
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return loaded


def file_response_bytes(loaded: LoadedImage) -> tuple[bytes, str]:
    """The image as a client can open it: the original NIfTI/NRRD file, or a NIfTI made from it."""
    name = loaded.path.name
    if loaded.dicom is None and has_suffix(name, MEDICAL):
        return loaded.path.read_bytes(), name
    import nibabel as nib

    buffer = io.BytesIO(gzip.compress(nib.Nifti1Image(loaded.display, loaded.affine).to_bytes(), compresslevel=1))
    return buffer.getvalue(), f"{loaded.id}.nii.gz"
