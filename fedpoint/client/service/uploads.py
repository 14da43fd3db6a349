"""An uploaded label file as a label map on its image (`read_label`; a DICOM-SEG: `seg_label`), decoded
within bounds: the header is read before the data.

A compressed upload is small on the wire, but what it decodes to is what takes memory: a 1 MB
`.nii.gz` may declare 1024^3 voxels. So every format is decoded in two steps:

1. Read the header alone (NIfTI-1/2, NRRD, NPY, PNG) and refuse a declared shape that does not
   fit the image, or whose voxel count or bytes exceed the bound, before decoding any voxel.
2. Decompress at most the bytes the header declared (plus the header itself): a stream that
   would decode to more is refused, and decompression stops there.

Every refusal is an `UploadError` (422) that names the label file (its name as uploaded, never a
server path) and says why. Nothing here writes to disk or reads another file: an NRRD that names a
detached data file is refused.
"""

from __future__ import annotations

import bz2
import io
import math
import struct
import zlib
from pathlib import Path

import numpy as np

from fedpoint.client.service.images import ImageError
from fedpoint.client.session import InputError
from fedpoint.data.formats import LABEL_FILE_SUFFIXES, split_suffix
from fedpoint.data.headers import (MAX_HEADER, NRRD_ALIASES, HeaderError, inflated_prefix, nifti_declared,
                                    nrrd_fields)

NIFTI_DTYPES = {2: np.uint8, 4: np.int16, 8: np.int32, 16: np.float32, 64: np.float64, 256: np.int8, 512: np.uint16,
                768: np.uint32, 1024: np.int64, 1280: np.uint64}
NRRD_TYPES = {"int8": "i1", "uint8": "u1", "int16": "i2", "uint16": "u2", "int32": "i4", "uint32": "u4",
              "int64": "i8", "uint64": "u8", "float": "f4", "double": "f8"}


class UploadError(ImageError):
    """An uploaded file refused before or while decoding; the message names it."""


def fits(declared: tuple[int, ...], shape: tuple[int, ...]) -> bool:
    """A declared label shape that is the image's spatial shape, give or take axes of length 1."""
    squeezed = [n for n in declared if n != 1]
    return squeezed == [n for n in shape if n != 1] and len(declared) <= len(shape) + 2


def check_declared(name: str, declared: tuple[int, ...], itemsize: int, shape: tuple[int, ...], max_bytes: int) -> int:
    """The voxel bytes a header declares, refusing a shape that does not fit or is too large."""
    if any(n < 0 for n in declared):
        raise UploadError(f"label file {name!r}: its header declares a negative size {declared}")
    nbytes = math.prod(declared) * max(1, itemsize)
    if nbytes > max_bytes:
        raise UploadError(f"label file {name!r}: its header declares shape {declared} ({nbytes / 2**20:.1f} MiB decoded), "
                          f"more than the service decodes ({max_bytes / 2**20:.1f} MiB, max_decoded_mb)")
    if not fits(declared, shape):
        raise UploadError(f"label file {name!r}: its header declares shape {declared}; "
                          f"the image's spatial shape is {tuple(shape)}")
    return nbytes


def bounded_decompress(data: bytes, limit: int, name: str, kind: str = "gzip") -> bytes:
    """Decompress at most `limit` bytes; more is refused (a decompression bomb stops here)."""
    try:
        if kind == "bzip2":
            out = bytearray()
            decoder = bz2.BZ2Decompressor()
            chunk = decoder.decompress(data, max_length=limit + 1)
            out += chunk
        else:
            decoder = zlib.decompressobj(wbits=47)  # gzip or zlib header, detected
            out = bytearray(decoder.decompress(data, limit + 1))
    except (OSError, EOFError, ValueError, zlib.error) as err:
        raise UploadError(f"label file {name!r}: cannot be read (decompression failed: {err})") from None
    if len(out) > limit:
        raise UploadError(f"label file {name!r}: decompresses to more than its header declares "
                          f"({limit / 2**20:.1f} MiB); refused")
    return bytes(out)


def _is_gzip(data: bytes) -> bool:
    return data[:2] == b"\x1f\x8b"


# ------------------------------------------------------------------------------------ formats
def read_npy(data: bytes, name: str, shape: tuple[int, ...], max_bytes: int) -> np.ndarray:
    buffer = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(buffer)
        reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        declared, fortran, dtype = reader(buffer, max_header_size=MAX_HEADER)
    except (ValueError, OSError, SyntaxError, TypeError) as err:
        raise UploadError(f"label file {name!r}: not a valid .npy header ({err})") from None
    if dtype.hasobject or not np.issubdtype(dtype, np.number) and dtype != np.bool_:
        raise UploadError(f"label file {name!r}: holds {dtype}, not numbers")
    nbytes = check_declared(name, tuple(int(n) for n in declared), dtype.itemsize, shape, max_bytes)
    body = data[buffer.tell():]
    if len(body) < nbytes:
        raise UploadError(f"label file {name!r}: truncated ({len(body)} of the {nbytes} bytes its header declares)")
    array = np.frombuffer(body[:nbytes], dtype=dtype)
    return array.reshape(declared, order="F" if fortran else "C")


def read_nifti(data: bytes, name: str, shape: tuple[int, ...], max_bytes: int) -> np.ndarray:
    import nibabel as nib

    compressed = _is_gzip(data)
    try:
        head = inflated_prefix(data, 544) if compressed else data[:544]
        declared_header, offset = nifti_declared(head)
    except HeaderError as err:
        raise UploadError(f"label file {name!r}: {err}") from None
    header_size = declared_header_size(head)
    header_class = nib.Nifti1Header if header_size == 348 else nib.Nifti2Header
    declared = declared_header.shape
    nbytes = check_declared(name, declared, declared_header.itemsize, shape, max_bytes)
    raw = bounded_decompress(data, offset + nbytes + 64 * 1024, name) if compressed else data
    if len(raw) < offset + nbytes:
        raise UploadError(f"label file {name!r}: truncated ({max(0, len(raw) - offset)} of the {nbytes} voxel bytes "
                          "its header declares)")
    try:
        image = header_class.from_fileobj(io.BytesIO(raw[:header_size]), check=False)
        array = np.asarray(image.data_from_fileobj(io.BytesIO(raw)))
    except Exception as err:
        raise UploadError(f"label file {name!r}: cannot be decoded ({type(err).__name__}: {err})") from None
    return array


def nifti_affine(data: bytes) -> np.ndarray | None:
    """The voxel-to-world affine a NIfTI label's header gives (None where it cannot be read)."""
    import nibabel as nib

    try:
        head = inflated_prefix(data, 544) if _is_gzip(data) else data[:544]
        header_class = nib.Nifti1Header if declared_header_size(head) == 348 else nib.Nifti2Header
        return np.asarray(header_class.from_fileobj(io.BytesIO(head), check=False).get_best_affine(), dtype=float)
    except Exception:  # noqa: BLE001 - the decoder has refused a broken header already
        return None


def declared_header_size(head: bytes) -> int:
    return 348 if 348 in (struct.unpack("<i", head[:4])[0], struct.unpack(">i", head[:4])[0]) else 540


def read_nrrd(data: bytes, name: str, shape: tuple[int, ...], max_bytes: int) -> np.ndarray:
    try:
        fields, start = nrrd_fields(data)  # a detached data file is refused here, as for every reader
    except HeaderError as err:
        raise UploadError(f"label file {name!r}: {err}") from None
    kind = NRRD_ALIASES.get(fields.get("type", ""), fields.get("type", ""))
    if kind not in NRRD_TYPES:
        raise UploadError(f"label file {name!r}: NRRD type {fields.get('type')!r} is not supported")
    try:
        sizes = tuple(int(s) for s in fields["sizes"].split())
        dimension = int(fields.get("dimension", len(sizes)))
    except (KeyError, ValueError):
        raise UploadError(f"label file {name!r}: NRRD sizes {fields.get('sizes')!r} are not integers") from None
    if dimension != len(sizes) or not 1 <= dimension <= 5 or any(len(s) > 12 for s in fields["sizes"].split()):
        raise UploadError(f"label file {name!r}: NRRD dimension {dimension} and sizes {sizes} disagree")
    dtype = np.dtype(NRRD_TYPES[kind])
    if dtype.itemsize > 1:
        dtype = dtype.newbyteorder(">" if fields.get("endian", "little") == "big" else "<")
    nbytes = check_declared(name, sizes, dtype.itemsize, shape, max_bytes)
    body = data[start:]
    encoding = fields.get("encoding", "raw").lower()
    if encoding in ("gz", "gzip"):
        body = bounded_decompress(body, nbytes, name)
    elif encoding in ("bz2", "bzip2"):
        body = bounded_decompress(body, nbytes, name, "bzip2")
    elif encoding in ("txt", "text", "ascii"):
        try:
            values = np.array(body.split(), dtype=np.float64)
        except ValueError:
            raise UploadError(f"label file {name!r}: NRRD text data holds something other than numbers") from None
        if values.size != math.prod(sizes):
            raise UploadError(f"label file {name!r}: {values.size} values, its header declares {math.prod(sizes)}")
        return values.reshape(sizes, order="F")
    elif encoding != "raw":
        raise UploadError(f"label file {name!r}: NRRD encoding {encoding!r} is not supported (raw, gzip, bzip2, ascii)")
    if len(body) < nbytes:
        raise UploadError(f"label file {name!r}: truncated ({len(body)} of the {nbytes} bytes its header declares)")
    return np.frombuffer(body[len(body) - nbytes:] if encoding == "raw" else body[:nbytes], dtype=dtype).reshape(sizes, order="F")


def read_png(data: bytes, name: str, shape: tuple[int, ...], max_bytes: int) -> np.ndarray:
    if data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR" or len(data) < 26:
        raise UploadError(f"label file {name!r}: not a PNG file")
    width, height = struct.unpack(">II", data[16:24])
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}.get(data[25], 4)
    depth = 2 if data[24] == 16 else 1
    # fedpoint reads PNG files columns first: x = column, so the array is (width, height)
    check_declared(name, (width, height), channels * depth, shape, max_bytes)
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as picture:
            picture.load()
            array = np.asarray(picture)
    except Exception as err:  # PIL raises many kinds for a broken file
        raise UploadError(f"label file {name!r}: cannot be decoded ({type(err).__name__}: {err})") from None
    if array.ndim == 3:
        array = array[..., 0]
    return np.ascontiguousarray(array.T)


READERS = {".npy": read_npy, ".nii": read_nifti, ".nii.gz": read_nifti, ".nrrd": read_nrrd, ".png": read_png}


def decode_label(data: bytes, name: str, suffix: str, shape: tuple[int, ...], max_bytes: int) -> np.ndarray:
    """The label's array as its file holds it (not yet squeezed or checked for values)."""
    return READERS[suffix](data, name, tuple(shape), max_bytes)


# ------------------------------------------------------------------------------------ a label upload
AFFINE_TOL_MM = 1e-2


def read_label(data: bytes, filename: str, shape: tuple[int, ...], max_bytes: int = 1 << 30,
               affine: np.ndarray | None = None) -> np.ndarray:
    """An uploaded label file as an integer array of the image's spatial `shape`.

    Its header is read first: a declared shape that does not fit the image, or that would decode
    to more than `max_bytes`, is refused before any voxel is decoded. A NIfTI label
    that gives a geometry of its own (an affine other than the identity) must give the image's
    `affine`: the same shape on another grid is another place in the body."""
    parts = split_suffix(filename or "label.nii.gz", LABEL_FILE_SUFFIXES)
    if parts is None:
        raise UploadError(f"label file {filename!r}: use one of {', '.join(LABEL_FILE_SUFFIXES)}")
    name = Path(filename or "label.nii.gz").name
    label = decode_label(data, name, parts[1], tuple(shape), max_bytes)
    own = nifti_affine(data) if parts[1] in (".nii", ".nii.gz") else None
    _check_label_grid(name, own, affine)
    if label.dtype != np.bool_ and not np.issubdtype(label.dtype, np.number):  # RGB NIfTI, records, text
        raise UploadError(f"label file {name!r}: holds {label.dtype} values, not label numbers (an RGB image?)")
    while label.ndim > len(shape) and label.shape[0] == 1:  # a channel axis of 1
        label = label[0]
    while label.ndim > len(shape) and label.shape[-1] == 1:  # a 2D label saved with a z of 1
        label = label[..., 0]
    if tuple(label.shape) != tuple(shape):
        raise UploadError(f"label shape {tuple(label.shape)} does not match the image's spatial shape {tuple(shape)}")
    if label.dtype == np.bool_:
        label = label.astype(np.uint8)
    if not np.all(np.isfinite(label)) or np.any(label < 0) or np.any(label != np.round(label)) or np.any(label > 2**31 - 1):
        raise UploadError("label values must be non-negative integers")
    return label.astype(np.int32)


def _check_label_grid(name: str, own: np.ndarray | None, image: np.ndarray | None) -> None:
    if own is None or image is None or own.shape != (4, 4):
        return
    image = np.asarray(image, dtype=float)
    if np.allclose(own, np.eye(4)) or np.allclose(image, np.eye(4)):
        return  # one side gives no geometry: nothing to compare
    if not np.allclose(own, image, atol=AFFINE_TOL_MM, rtol=1e-4):
        raise UploadError(f"label file {name!r}: its affine (voxel to mm) differs from the image's; it was saved on "
                          f"another grid (label origin {np.round(own[:3, 3], 2).tolist()}, image origin "
                          f"{np.round(image[:3, 3], 2).tolist()})")


def is_dicom(data: bytes, filename: str | None) -> bool:
    return data[128:132] == b"DICM" or (filename or "").lower().endswith(".dcm")


def seg_label(data: bytes, loaded, structures: dict[str, int], max_bytes: int = 1 << 30) -> tuple[np.ndarray, dict[str, int]]:
    """A DICOM-SEG upload as a label map on a DICOM image: each segment whose label names one of
    the site's structures (a lone segment, for a one-structure site) takes that structure's value.
    A SEG made on another series, or on an image that is not DICOM, is refused. Its frames are
    checked against the image (size, count) before any is decoded."""
    from pydicom.errors import InvalidDicomError

    from fedpoint.data.dicom import HEADER_ERRORS, DicomError, check_seg_frames, read_dataset, read_seg

    if loaded.dicom is None:
        raise InputError(f"{loaded.id} is not a DICOM series: send a NIfTI, NRRD, PNG or NPY label, not a DICOM-SEG")
    try:
        dataset = read_dataset(data, "the uploaded DICOM-SEG", max_bytes)
        segments = {int(item.SegmentNumber): str(item.SegmentLabel) for item in dataset.SegmentSequence}
        check_seg_frames(dataset, loaded.dicom, len(segments), max_bytes)
    except DicomError as err:
        raise InputError(str(err)) from None
    except (InvalidDicomError, *HEADER_ERRORS, EOFError, OSError) as err:  # not DICOM, or not a SEG
        raise InputError(f"the uploaded DICOM is not a readable DICOM-SEG ({type(err).__name__})") from None
    chosen = {n: name for n, name in segments.items() if name in structures}
    if not chosen and len(structures) == 1 and len(segments) == 1:
        chosen = {next(iter(segments)): next(iter(structures))}
    if not chosen:
        raise InputError(f"the SEG's segments ({', '.join(segments.values())}) name none of this site's structures "
                         f"({', '.join(structures)})")
    label = np.zeros(loaded.shape, np.uint8)
    try:
        for number, name in chosen.items():
            label[read_seg(dataset, loaded.dicom, segment=number).reshape(loaded.shape) > 0] = structures[name]
    except DicomError as err:
        raise InputError(f"{loaded.id}: {err}") from None
    return label, {name: structures[name] for name in chosen.values()}
