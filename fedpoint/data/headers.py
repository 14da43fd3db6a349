"""What an image file's header declares, read before any voxel is decoded.

Every reader of an image or label file asks here first: a dataset folder (`readers`), the site's
images folder and uploaded labels (`fedpoint.client.service`). Two things are refused before any
decoder runs:

- **data outside the file:** an NRRD header may name a detached data file (`data file:`,
  `datafile:`); a reader that follows it opens whatever path the header names (`/etc/passwd`,
  `../site-token`). fedpoint reads only the file it was given.
- **a bomb:** a declared shape whose decoded size exceeds the caller's bound, and a compressed
  stream that inflates to more than its header declared. The stream is counted as it inflates,
  in small pieces, and nothing is kept, so the check itself stays small.

Messages say why without the file's name; callers put the name (never a server path) in front.
"""

from __future__ import annotations

import bz2
import gzip
import io
import math
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedpoint.data.formats import NIFTI, NRRD, NUMPY, PNG, has_suffix

MAX_HEADER = 1 << 16  # an NRRD text header or NIfTI extensions beyond 64 KiB are not an image's
CHUNK = 1 << 20  # inflated per step while counting a compressed stream
NIFTI_HEADER = 544  # a NIfTI-2 header (540) and its extension flag; NIfTI-1 needs 348


class HeaderError(ValueError):
    """A header that refuses the file before decoding (detached data, too large, malformed)."""


@dataclass(frozen=True)
class Declared:
    shape: tuple[int, ...]  # as the header gives it (file axis order)
    itemsize: int  # bytes per stored voxel

    @property
    def voxels(self) -> int:
        return math.prod(self.shape)


# ------------------------------------------------------------------------------------ NRRD
def nrrd_fields(data: bytes) -> tuple[dict[str, str], int]:
    """(the NRRD header's fields, lower-cased, and where its data starts); a detached data file is refused."""
    if not data.startswith(b"NRRD"):
        raise HeaderError("not an NRRD file")
    end, cut = data.find(b"\n\n", 0, MAX_HEADER), 2
    crlf = data.find(b"\r\n\r\n", 0, MAX_HEADER)
    if crlf >= 0 and (end < 0 or crlf < end):
        end, cut = crlf, 4
    if end < 0:
        raise HeaderError(f"its NRRD header does not end within {MAX_HEADER // 1024} KiB")
    fields: dict[str, str] = {}
    for line in data[:end].decode("latin-1").splitlines()[1:]:
        if line.startswith("#") or ":=" in line or not line.strip():
            continue
        key, sep, value = line.partition(":")
        if not sep:
            raise HeaderError(f"NRRD header line {line[:40]!r} is not 'field: value'")
        fields[key.strip().lower()] = value.strip()
    refuse_detached(fields)
    return fields, end + cut


def refuse_detached(fields: dict[str, str]) -> None:
    """The one check for data kept in another file: fedpoint never follows it."""
    if "data file" in fields or "datafile" in fields:
        raise HeaderError("its NRRD header names a detached data file; fedpoint reads only data inside the file "
                          "(save it with the data attached)")


NRRD_ALIASES = {"signed char": "int8", "int8_t": "int8", "uchar": "uint8", "unsigned char": "uint8", "uint8_t": "uint8",
                "short": "int16", "short int": "int16", "signed short": "int16", "signed short int": "int16",
                "int16_t": "int16", "ushort": "uint16", "unsigned short": "uint16", "unsigned short int": "uint16",
                "uint16_t": "uint16", "int": "int32", "signed int": "int32", "int32_t": "int32", "uint": "uint32",
                "unsigned int": "uint32", "uint32_t": "uint32", "longlong": "int64", "long long": "int64",
                "long long int": "int64", "signed long long": "int64", "signed long long int": "int64",
                "int64_t": "int64", "ulonglong": "uint64", "unsigned long long": "uint64",
                "unsigned long long int": "uint64", "uint64_t": "uint64"}
NRRD_ITEMSIZE = {"int8": 1, "uint8": 1, "int16": 2, "uint16": 2, "int32": 4, "uint32": 4, "int64": 8, "uint64": 8,
                 "float": 4, "double": 8}


def nrrd_declared(fields: dict[str, str]) -> Declared:
    kind = NRRD_ALIASES.get(fields.get("type", ""), fields.get("type", ""))
    if kind not in NRRD_ITEMSIZE:
        raise HeaderError(f"NRRD type {fields.get('type')!r} is not supported")
    raw = fields.get("sizes", "").split()
    if not raw or any(len(s) > 12 or not s.isdigit() for s in raw):
        raise HeaderError(f"NRRD sizes {fields.get('sizes')!r} are not positive integers")
    sizes = tuple(int(s) for s in raw)
    try:
        dimension = int(fields.get("dimension", len(sizes)))
    except ValueError:
        raise HeaderError(f"NRRD dimension {fields.get('dimension')!r} is not an integer") from None
    if dimension != len(sizes) or not 1 <= dimension <= 5:
        raise HeaderError(f"NRRD dimension {dimension} and sizes {sizes} disagree")
    return Declared(sizes, NRRD_ITEMSIZE[kind])


def nrrd_encoding(fields: dict[str, str]) -> str:
    encoding = fields.get("encoding", "raw").lower()
    return {"gz": "gzip", "bz2": "bzip2", "txt": "text", "ascii": "text"}.get(encoding, encoding)


# ------------------------------------------------------------------------------------ NIfTI
def nifti_declared(head: bytes) -> tuple[Declared, int]:
    """(what a NIfTI-1/2 header declares, its data offset) from the file's first bytes (inflated)."""
    import nibabel as nib

    if len(head) < 348:
        raise HeaderError("cannot be read (too short for a NIfTI header)")
    size_le, size_be = struct.unpack("<i", head[:4])[0], struct.unpack(">i", head[:4])[0]
    if 348 in (size_le, size_be):
        header_class, header_size = nib.Nifti1Header, 348
    elif 540 in (size_le, size_be):
        header_class, header_size = nib.Nifti2Header, 540
    else:
        raise HeaderError(f"cannot be read (not a NIfTI file: header size {size_le})")
    if len(head) < header_size:
        raise HeaderError("too short for a NIfTI-2 header")
    try:
        header = header_class.from_fileobj(io.BytesIO(head[:header_size]), check=False)
        shape = tuple(int(n) for n in header.get_data_shape())
        itemsize = np.dtype(header.get_data_dtype()).itemsize
        offset = int(header.get_data_offset())
    except Exception as err:  # nibabel raises many kinds for a malformed header
        raise HeaderError(f"not a valid NIfTI header ({type(err).__name__}: {err})") from None
    if not 0 <= offset <= MAX_HEADER + header_size:
        raise HeaderError(f"NIfTI data offset {offset} is not plausible")
    return Declared(shape, itemsize), offset


def inflated_prefix(data: bytes, length: int) -> bytes:
    """The first `length` bytes a gzip/zlib stream inflates to, whatever follows them."""
    try:
        return zlib.decompressobj(wbits=47).decompress(data, length)
    except zlib.error as err:
        raise HeaderError(f"cannot be read (decompression failed: {err})") from None


# ------------------------------------------------------------------------------------ the bound
def check_declared(declared: Declared, max_bytes: int, out_itemsize: int | None = None) -> int:
    """The bytes `declared` decodes to (at `out_itemsize` per voxel when the reader converts, as to
    float32), refused over `max_bytes`."""
    if any(n < 0 for n in declared.shape):
        raise HeaderError(f"its header declares a negative size {declared.shape}")
    nbytes = declared.voxels * max(declared.itemsize, out_itemsize or 0, 1)
    if nbytes > max_bytes:
        raise HeaderError(f"its header declares shape {declared.shape} ({nbytes / 2**20:.1f} MiB decoded), more than "
                          f"the service decodes ({max_bytes / 2**20:.1f} MiB, max_decoded_mb)")
    return nbytes


def count_inflated(stream, limit: int, kind: str = "gzip") -> int:
    """Bytes a compressed stream (a file object at its start) inflates to, refused past `limit`;
    inflated CHUNK by CHUNK and thrown away, so a bomb costs time, not memory."""
    if kind == "bzip2":
        bz = bz2.BZ2Decompressor()
        step, pending, done = (lambda data: bz.decompress(data, max_length=CHUNK),
                               lambda: not bz.needs_input and not bz.eof, lambda: bz.eof)
    else:
        z = zlib.decompressobj(wbits=47)  # gzip or zlib header, detected
        step, pending, done = (lambda data: z.decompress(z.unconsumed_tail + data, CHUNK),
                               lambda: bool(z.unconsumed_tail), lambda: z.eof)
    total = 0
    try:
        while not done():
            piece = stream.read(CHUNK)
            if not piece:
                break
            total += len(step(piece))
            while total <= limit and pending():
                total += len(step(b""))
            if total > limit:
                raise HeaderError(f"its data inflates to more than its header declares ({limit / 2**20:.1f} MiB)")
    except (OSError, EOFError, zlib.error) as err:
        raise HeaderError(f"cannot be read (decompression failed: {err})") from None
    return total


def check_file(path: Path, max_bytes: int, out_itemsize: int | None = 4) -> Declared | None:
    """Refuse `path` before decoding when its header names data elsewhere or declares more than
    `max_bytes` (at `out_itemsize` per voxel), or its compressed data inflates past what it declared.
    Returns what it declared (None for a format without a checkable header, such as JPEG)."""
    name = path.name
    if has_suffix(name, NRRD):
        with open(path, "rb") as f:
            head = f.read(MAX_HEADER + 4)
            fields, start = nrrd_fields(head)
            declared = nrrd_declared(fields)
            check_declared(declared, max_bytes, out_itemsize)
            encoding = nrrd_encoding(fields)
            if encoding in ("gzip", "bzip2"):
                f.seek(start)
                count_inflated(f, declared.voxels * declared.itemsize + CHUNK, encoding)
        return declared
    if has_suffix(name, NIFTI):
        with open(path, "rb") as f:
            head = f.read(MAX_HEADER + NIFTI_HEADER)
        if head[:2] == b"\x1f\x8b":
            with gzip.open(path, "rb") as g:
                try:
                    head = g.read(NIFTI_HEADER)
                except (OSError, EOFError, zlib.error) as err:
                    raise HeaderError(f"cannot be read (decompression failed: {err})") from None
        declared, _ = nifti_declared(head)
        check_declared(declared, max_bytes, out_itemsize)
        return declared  # nibabel reads only the bytes its header declares
    if has_suffix(name, NUMPY):
        with open(path, "rb") as f:
            try:
                version = np.lib.format.read_magic(f)
                reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                shape, _, dtype = reader(f, max_header_size=MAX_HEADER)
            except (ValueError, OSError, SyntaxError, TypeError) as err:
                raise HeaderError(f"not a valid .npy header ({err})") from None
        declared = Declared(tuple(int(n) for n in shape), dtype.itemsize)
        check_declared(declared, max_bytes, out_itemsize)
        return declared
    if has_suffix(name, PNG):
        with open(path, "rb") as f:
            data = f.read(26)
        if data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR" or len(data) < 26:
            raise HeaderError("not a PNG file")
        width, height = struct.unpack(">II", data[16:24])
        channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}.get(data[25], 4)
        declared = Declared((channels, width, height), 2 if data[24] == 16 else 1)
        check_declared(declared, max_bytes, out_itemsize)
        return declared
    return None
