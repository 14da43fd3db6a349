"""DICOM series read with pydicom, and labels written back as DICOM-SEG (highdicom).

One series is one volume. Arrays follow fedpoint's index order (x, y[, z]): x runs along a row of
the DICOM frame (across its columns), y down its rows, z along the slice normal, slices sorted by
position (ImagePositionPatient projected on ImageOrientationPatient's normal), never by file name
or InstanceNumber. The affine maps that index to RAS mm, as `read_array` gives for NIfTI (DICOM
patient space is LPS: the first two rows are negated). A SEG's frames are the source frames'
(rows, columns), so a mask goes back by transposing (x, y, z) to (z, y, x) in the same slice order.

pydicom is imported when a series is read, highdicom when a SEG is built or read.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

GAP_FACTOR = 1.5  # a step this many times the median one means a slice is missing
SAME_TOL = 1e-4  # orientation cosines, pixel spacing
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
SEG_SERIES_NUMBER = 9901
PRIVATE_SCHEME = "99FEDPOINT"  # a site's free-text label: a private coding scheme, as DICOM allows
DEFAULT_MAX_BYTES = 1 << 30  # the float32 volume a series may decode to (the service's max_decoded_mb)
DEFLATED = "1.2.840.10008.1.2.1.99"  # inflated whole by pydicom before anything can be checked: refused
HEADER_ERRORS = (AttributeError, KeyError, TypeError, ValueError, IndexError, OverflowError)  # a tag missing or of a wrong type


class DicomError(ValueError):
    """A DICOM series (or SEG) that cannot be used; the message names it and says why."""


@dataclass(frozen=True)
class DicomSeries:
    array: np.ndarray  # (x, y[, z]) float32, RescaleSlope/Intercept applied
    affine: np.ndarray  # 4x4, index -> RAS mm
    study_uid: str
    series_uid: str
    frame_of_reference_uid: str | None
    sop_instance_uids: tuple[str, ...]  # slice k of the array is instance k
    modality: str
    headers: tuple  # the instances' pydicom datasets without pixel data, in slice order (a SEG references them)

    def channels(self) -> np.ndarray:
        return self.array[None]


# ------------------------------------------------------------------------------------ reading
def read_dicom_folder(folder: Path, max_bytes: int = DEFAULT_MAX_BYTES) -> DicomSeries:
    """The one series in `folder` (files with or without .dcm; files that are not DICOM are ignored).
    Nothing is decoded past `max_bytes`: a file larger than that, a deflated file (inflated whole by
    the reader) and a series whose headers declare more pixels are refused first."""
    folder = Path(folder)
    name = f"{folder.name}/"
    datasets = [ds for ds in (_read_file(p, name, max_bytes) for p in _series_files(folder, name)) if ds is not None]
    return read_series(datasets, name, max_bytes)


def _series_files(folder: Path, name: str) -> list[Path]:
    try:
        entries = sorted(folder.iterdir())
    except OSError as err:
        raise DicomError(f"{name}: cannot be listed ({type(err).__name__})") from None
    root = folder.resolve()
    files = []
    for path in entries:
        if path.name.startswith(".") or not path.is_file():
            continue
        if path.is_symlink() and path.resolve().parent != root:  # as for the images folder: nothing read from outside
            raise DicomError(f"{name}{path.name}: a link to a file outside the series folder")
        files.append(path)
    return files


def _read_file(path: Path, name: str, max_bytes: int = DEFAULT_MAX_BYTES):
    from pydicom.errors import InvalidDicomError

    try:
        return read_dataset(path, f"{name}{path.name}", max_bytes)
    except DicomError:
        raise
    except InvalidDicomError:
        return None  # a note or listing beside the slices
    except Exception as err:  # noqa: BLE001 - a truncated or damaged file: say which
        raise DicomError(f"{name}{path.name}: cannot be read as DICOM ({type(err).__name__}: {err})") from None


def read_dataset(source: Path | bytes, name: str, max_bytes: int = DEFAULT_MAX_BYTES):
    """One DICOM file (a path, or bytes from an upload or a PACS) read with pydicom, after the checks
    that bound it: not larger than `max_bytes`, and not deflated (pydicom inflates a deflated file
    whole before anything can be checked). Not DICOM at all: pydicom's InvalidDicomError."""
    import io

    import pydicom
    from pydicom.filereader import _read_file_meta_info, read_preamble

    size = source.stat().st_size if isinstance(source, Path) else len(source)
    if size > max_bytes:
        raise DicomError(f"{name}: {size / 2**20:.1f} MiB, more than the service decodes "
                         f"({max_bytes / 2**20:.1f} MiB, max_decoded_mb)")
    with (open(source, "rb") if isinstance(source, Path) else io.BytesIO(source)) as f:
        read_preamble(f, False)
        syntax = str(_read_file_meta_info(f).get("TransferSyntaxUID", ""))
    if syntax == DEFLATED:
        raise DicomError(f"{name}: a deflated DICOM file (inflated whole before it can be checked) is not accepted; "
                         "export it uncompressed or with a pixel codec")
    return pydicom.dcmread(source if isinstance(source, Path) else io.BytesIO(source))


def read_series(datasets: list, name: str, max_bytes: int = DEFAULT_MAX_BYTES) -> DicomSeries:
    """One series from its instances (a folder's files, or what WADO-RS returned), checked and sorted;
    a tag missing or of a wrong type is a DicomError naming the series, never another exception."""
    try:
        return _read_series(datasets, name, max_bytes)
    except DicomError:
        raise
    except HEADER_ERRORS as err:
        raise DicomError(f"{name}: a DICOM header is missing or of the wrong type ({type(err).__name__}: "
                         f"{str(err)[:200]})") from None


def check_pixels(rows: int, columns: int, frames: int, max_bytes: int, name: str, samples: int = 1) -> None:
    """Refuse a declared pixel count before any decoder allocates it (float32 after rescaling)."""
    if min(rows, columns, frames, samples) < 1:
        raise DicomError(f"{name}: declares {rows} x {columns} pixels in {frames} frame(s): no image")
    nbytes = rows * columns * frames * samples * 4
    if nbytes > max_bytes:
        raise DicomError(f"{name}: declares {frames} frame(s) of {rows} x {columns} pixels "
                         f"({nbytes / 2**20:.1f} MiB decoded), more than the service decodes "
                         f"({max_bytes / 2**20:.1f} MiB, max_decoded_mb)")


def _read_series(datasets: list, name: str, max_bytes: int) -> DicomSeries:
    images = [ds for ds in datasets if "PixelData" in ds]
    if not images:
        raise DicomError(f"{name}: holds no DICOM image files")
    _check_one_series(images, name)
    _check_frames(images, name)
    check_pixels(int(images[0].Rows), int(images[0].Columns), len(images), max_bytes, name)
    images, affine = _sort_and_place(images, name)
    array = np.stack([_frame(ds, name) for ds in images], axis=-1)
    if array.shape[-1] == 1:
        array = array[..., 0]  # one slice: a 2D image (a radiograph, one CT slice)
    first = images[0]
    uids = tuple(str(ds.SOPInstanceUID) for ds in images)
    for ds in images:
        del ds.PixelData  # decoded above; the headers alone are kept for a SEG
    return DicomSeries(array, affine, str(first.get("StudyInstanceUID", "")), str(first.SeriesInstanceUID),
                       _text(first.get("FrameOfReferenceUID")), uids, str(first.get("Modality", "OT")), tuple(images))


def _text(value) -> str | None:
    return None if value in (None, "") else str(value)


def _check_one_series(images: list, name: str) -> None:
    series = sorted({str(ds.get("SeriesInstanceUID", "")) for ds in images})
    if len(series) > 1:
        shown = ", ".join(s[-12:] or "(none)" for s in series[:4])
        raise DicomError(f"{name}: holds {len(series)} series (SeriesInstanceUID ...{shown}); put one series per folder")
    if not series[0]:
        raise DicomError(f"{name}: its files have no SeriesInstanceUID")
    if len({str(ds.SOPInstanceUID) for ds in images}) != len(images):
        raise DicomError(f"{name}: the same SOPInstanceUID appears in two files (a copied slice?)")


def _check_frames(images: list, name: str) -> None:
    for ds in images:
        if int(ds.get("NumberOfFrames", 1) or 1) > 1:
            raise DicomError(f"{name}: multi-frame (enhanced) instances are not supported; export single-frame slices")
        if int(ds.get("SamplesPerPixel", 1)) != 1:
            raise DicomError(f"{name}: colour instances (SamplesPerPixel {ds.SamplesPerPixel}) are not supported")
    shapes = {(int(ds.Rows), int(ds.Columns)) for ds in images}
    if len(shapes) > 1:
        raise DicomError(f"{name}: slices differ in pixel shape (rows, columns): {sorted(shapes)}")
    spacings = np.array([_pixel_spacing(ds) for ds in images])
    if np.abs(spacings - spacings[0]).max() > SAME_TOL:
        raise DicomError(f"{name}: slices differ in PixelSpacing")


def _pixel_spacing(ds) -> tuple[float, float]:
    """(between rows, between columns) in mm; 1 where the file gives none."""
    value = ds.get("PixelSpacing") or ds.get("ImagerPixelSpacing") or (1.0, 1.0)
    return float(value[0]), float(value[1])


def _sort_and_place(images: list, name: str) -> tuple[list, np.ndarray]:
    """The slices sorted along their normal, and the affine index (x, y, z) -> RAS mm."""
    missing = [ds for ds in images if "ImageOrientationPatient" not in ds or "ImagePositionPatient" not in ds]
    if missing and len(images) > 1:
        raise DicomError(f"{name}: {len(missing)} slice(s) lack ImageOrientationPatient/ImagePositionPatient; "
                         "slices cannot be ordered")
    row_spacing, column_spacing = _pixel_spacing(images[0])
    if missing:  # a single picture without geometry: pixel spacing only
        return images, LPS_TO_RAS @ np.diag([column_spacing, row_spacing, 1.0, 1.0])  # rows run down, as shown
    cosines = np.array([[float(v) for v in ds.ImageOrientationPatient] for ds in images])
    if np.abs(cosines - cosines[0]).max() > SAME_TOL:
        raise DicomError(f"{name}: slices differ in ImageOrientationPatient (a localiser or a second stack mixed in?)")
    row, column = cosines[0, :3], cosines[0, 3:]
    normal = np.cross(row, column)
    positions = np.array([[float(v) for v in ds.ImagePositionPatient] for ds in images])
    along = positions @ normal
    order = np.argsort(along, kind="stable")
    images, positions, along = [images[i] for i in order], positions[order], along[order]
    _check_steps(along, name)
    lps = np.eye(4)
    lps[:3, 0] = row * column_spacing  # x steps across columns, along a row
    lps[:3, 1] = column * row_spacing
    slice_thickness = float(images[0].get("SliceThickness") or 1.0)
    lps[:3, 2] = (positions[-1] - positions[0]) / (len(images) - 1) if len(images) > 1 else normal * slice_thickness
    lps[:3, 3] = positions[0]
    return images, LPS_TO_RAS @ lps


def _check_steps(along: np.ndarray, name: str) -> None:
    if len(along) < 2:
        return
    steps = np.diff(along)
    if steps.min() < 1e-3:
        k = int(np.argmin(steps))
        raise DicomError(f"{name}: two slices at the same position ({along[k]:.2f} mm along the normal)")
    median = float(np.median(steps))
    gaps = np.flatnonzero(steps > GAP_FACTOR * median)
    if gaps.size:
        k = int(gaps[0])
        raise DicomError(f"{name}: missing slice(s) between {along[k]:.2f} and {along[k + 1]:.2f} mm "
                         f"(a step of {steps[k]:.2f} mm; the usual step is {median:.2f} mm)")


def _frame(ds, name: str) -> np.ndarray:
    """One slice as (x, y) float32 in output units (HU for CT)."""
    try:
        pixels = ds.pixel_array
    except Exception as err:  # noqa: BLE001 - e.g. a compressed transfer syntax without its decoder
        raise DicomError(f"{name}: pixel data of {ds.SOPInstanceUID} cannot be decoded ({type(err).__name__}: {err})") from None
    slope, intercept = float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0)
    frame = np.ascontiguousarray(pixels.T, dtype=np.float32) * np.float32(slope) + np.float32(intercept)
    if ds.get("PhotometricInterpretation") == "MONOCHROME1":  # an X-ray stored white-is-low: shown as MONOCHROME2
        frame = frame.max() + frame.min() - frame
    return frame


# ------------------------------------------------------------------------------------ DICOM-SEG
def mask_frames(mask: np.ndarray) -> np.ndarray:
    """A fedpoint mask (x, y[, z]) as SEG frames (slice, row, column) in the series' slice order."""
    mask = np.asarray(mask) > 0
    return np.ascontiguousarray(mask.T if mask.ndim == 3 else mask.T[None]).astype(np.uint8)


def build_seg(series: DicomSeries, label: np.ndarray, names: list[str], site: str, instance_number: int, version: str):
    """A BINARY DICOM-SEG on and referencing the series' instances: segment k is the structure
    `names[k - 1]`, the voxels of value k in the label map `label` (every structure is a segment,
    an empty one too, so segment numbers mean the same structure in every SEG of a site)."""
    import highdicom as hd
    from pydicom.sr.codedict import codes
    from pydicom.uid import generate_uid

    expected = series.array.shape
    if tuple(np.shape(label)) != tuple(expected):
        raise DicomError(f"series {series.series_uid}: mask shape {np.shape(label)} does not match the image {expected}")
    label = np.asarray(label)
    segments = [hd.seg.SegmentDescription(
        segment_number=k, segment_label=name[:64],
        segmented_property_category=codes.SCT.AnatomicalStructure,
        segmented_property_type=hd.sr.CodedConcept(_code_value(name), PRIVATE_SCHEME, name[:64]),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.SEMIAUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name="fedpoint", version=version, family=codes.DCM.ArtificialIntelligence))
        for k, name in enumerate(names, start=1)]
    # (frames, rows, columns, segments): one binary plane per structure
    pixels = np.stack([mask_frames(label == k) for k in range(1, len(names) + 1)], axis=-1)
    # One SEG series per (site, source series): each accept adds an instance, the newest is the label.
    seg_series = generate_uid(entropy_srcs=["fedpoint-seg", site, series.series_uid])
    title = names[0] if len(names) == 1 else f"{len(names)} structures"
    return hd.seg.Segmentation(
        source_images=list(series.headers), pixel_array=pixels,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY, segment_descriptions=segments,
        series_instance_uid=seg_series, series_number=SEG_SERIES_NUMBER, sop_instance_uid=generate_uid(),
        instance_number=instance_number, manufacturer="fedpoint", manufacturer_model_name="fedpoint site service",
        software_versions=version, device_serial_number=site[:64], series_description=f"fedpoint {title}"[:64],
        omit_empty_frames=False)  # every source frame present: readers need no missing-frame rule


def _code_value(label: str) -> str:
    """A code value (SH, at most 16 characters) for a free-text label."""
    text = "".join(c if c.isalnum() else "_" for c in label.upper())[:16]
    return text or "OBJECT"


def check_seg_frames(dataset, series: DicomSeries, segments: int, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
    """A SEG's declared frames checked against its series before highdicom decodes any: pixel data
    present, frames of the source's (rows, columns), at most one per source frame and segment."""
    if "PixelData" not in dataset:
        raise DicomError("the SEG holds no pixel data")
    rows, columns = int(dataset.Rows), int(dataset.Columns)
    frames = int(dataset.get("NumberOfFrames", 1) or 1)
    source = series.array.shape  # (x, y[, z]): a frame is (rows = y, columns = x)
    if (rows, columns) != (source[1], source[0]):
        raise DicomError(f"the SEG's frames are {rows} x {columns} (rows x columns); the image's are "
                         f"{source[1]} x {source[0]}")
    most = (source[2] if len(source) == 3 else 1) * max(segments, 1)
    if frames > most:
        raise DicomError(f"the SEG declares {frames} frames; the image has {most // max(segments, 1)} slice(s) and the "
                         f"SEG {segments} segment(s)")
    check_pixels(rows, columns, frames, max_bytes, "the SEG")


def read_seg(dataset, series: DicomSeries, segment: int = 1) -> np.ndarray:
    """A SEG's segment as a uint8 mask (x, y[, z]) on `series`; a SEG made on another series is refused."""
    import highdicom as hd

    try:
        seg = hd.seg.Segmentation.from_dataset(dataset, copy=True)
    except Exception as err:  # noqa: BLE001 - not a SEG, or a damaged one
        raise DicomError(f"not a readable DICOM-SEG ({type(err).__name__}: {err})") from None
    referenced = {uid for _, uid, _ in seg.get_source_image_uids()}
    if referenced != {series.series_uid}:
        raise DicomError(f"the SEG references series {', '.join(sorted(referenced)) or '(none)'}, "
                         f"not this image's series {series.series_uid}")
    if segment not in seg.get_segment_numbers():
        raise DicomError(f"the SEG has no segment {segment} (it has {seg.get_segment_numbers()})")
    try:
        frames = seg.get_pixels_by_source_instance(list(series.sop_instance_uids), segment_numbers=[segment],
                                                   assert_missing_frames_are_empty=True)[..., 0]
    except Exception as err:  # noqa: BLE001 - frames that do not decode to what the SEG declares
        raise DicomError(f"the SEG's frames cannot be decoded ({type(err).__name__}: {str(err)[:200]})") from None
    mask = np.ascontiguousarray(frames.T if series.array.ndim == 3 else frames[0].T)
    return (mask > 0).astype(np.uint8)
