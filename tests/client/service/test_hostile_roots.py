"""The hostile probe's classes, one test per root cause (issue 28): files outside the images, bombs,
store states that delete data, a silent fresh adapter, `site check` blind spots, 5xx causes,
the site token acting as a named user, one user evicting another, and a misbehaving PACS.

Each test is named for the root cause it pins down; each failed on the main branch before its fix.
"""

from __future__ import annotations

import gzip
import io
import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from service_helpers import AUTH, LiveServer

pytestmark = pytest.mark.hostile
HERE = Path(__file__).resolve().parent
SECRET = b"fedpoint-secret-token-0123456789"  # 32 bytes: an 8 x 4 uint8 image if a reader follows a header to it


def nrrd_detached(target: str, sizes: str = "8 4") -> bytes:
    return f"NRRD0004\ntype: uint8\ndimension: 2\nsizes: {sizes}\nencoding: raw\ndata file: {target}\n\n".encode()


def nii_gz(array: np.ndarray, affine=None) -> bytes:
    return gzip.compress(nib.Nifti1Image(np.asarray(array), np.eye(4) if affine is None else affine).to_bytes(),
                         compresslevel=1)


def gzip_stream(prefix: bytes, size: int) -> bytes:
    import zlib

    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    out = [compressor.compress(prefix)]
    chunk = b"\1" * (1 << 20)
    for _ in range(size >> 20):
        out.append(compressor.compress(chunk))
    out.append(compressor.flush())
    return b"".join(out)


def nifti_bomb(shape) -> bytes:
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(np.uint8)
    return gzip.compress(header.binaryblock + b"\0" * 4 + b"\0" * (256 << 10))


# ------------------------------------------------------------------------------ 1. data outside the file
def test_detached_nrrd_data_is_refused_by_the_shared_header_check(make_config, site):
    """Root cause: the images folder decoded NRRD files with a reader that follows `data file:`."""
    from fedpoint.client.service.images import ImageError, ImageFolder, read_label
    from fedpoint.data.readers import read_image
    from fedpoint.data.types import DataError

    (site["root"] / "site-token").write_bytes(SECRET)
    images = site["images"]
    (images / "leak-abs.nrrd").write_bytes(nrrd_detached(str(site["root"] / "site-token")))
    (images / "leak-rel.nrrd").write_bytes(nrrd_detached("../site-token"))
    (images / "leak-crlf.nrrd").write_bytes(nrrd_detached("../site-token").replace(b"\n", b"\r\n"))
    folder = ImageFolder(images, "MR", 1)
    for image_id in ("leak-abs", "leak-rel", "leak-crlf"):
        with pytest.raises(ImageError, match="detached data file"):
            folder.load(image_id)
        with pytest.raises(DataError, match="detached data file"):
            read_image(images / f"{image_id}.nrrd")
    with pytest.raises(ImageError, match="detached data file"):
        read_label(nrrd_detached("../site-token"), "l.nrrd", (8, 4))
    with LiveServer(make_config()) as live:
        for image_id in ("leak-abs", "leak-rel"):
            for path in (f"/api/images/{image_id}", f"/api/images/{image_id}/slice/0"):
                r = live.client.get(path)
                assert r.status_code == 422 and "detached" in r.json()["detail"], r.text
                assert SECRET not in r.content
            r = live.client.get("/datastore/image", params={"image": image_id})
            assert r.status_code == 422 and SECRET not in r.content
        assert "site-token" not in json.dumps(live.client.get("/api/status").json()).replace("../site-token", "")


# ------------------------------------------------------------------------------ 2. bombs
def _dicom_bombs(images: Path) -> tuple[str, Path]:
    """A real CT series, a series whose header declares 60000 x 60000 pixels, a deflated one, and a
    SEG upload declaring 4096 frames of 4096 x 4096; returns (the real series' id, the SEG's file)."""
    import pydicom
    from pydicom.uid import DeflatedExplicitVRLittleEndian
    from test_dicom import AXIAL, ct_volume, write_ct_series

    from fedpoint.data.dicom import build_seg, read_dicom_folder

    write_ct_series(images / "ct", ct_volume((24, 24, 4)), AXIAL)
    write_ct_series(images / "huge", ct_volume((24, 24, 2)), AXIAL)
    for path in (images / "huge").iterdir():
        ds = pydicom.dcmread(path)
        ds.Rows = ds.Columns = 60000
        ds.save_as(path)
    write_ct_series(images / "deflated", ct_volume((24, 24, 2)), AXIAL)
    for path in (images / "deflated").iterdir():
        ds = pydicom.dcmread(path)
        ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
        ds.save_as(path, enforce_file_format=True)
    series = read_dicom_folder(images / "ct")
    seg = build_seg(series, np.ones(series.array.shape, np.uint8), ["object"], "site", 1, "test")
    seg.NumberOfFrames, seg.Rows, seg.Columns = 4096, 4096, 4096
    buffer = io.BytesIO()
    seg.save_as(buffer)
    seg_file = images.parent / "seg-bomb.dcm"
    seg_file.write_bytes(buffer.getvalue())
    return "ct", seg_file


def test_every_decoder_is_bounded_by_its_declared_size_before_it_inflates(site):
    """Root cause: NIfTI, NRRD, DICOM and DICOM-SEG were inflated whole before any check. Measured in
    a fresh process: its peak RSS under each bomb stays below 1.5x its idle peak."""
    images = site["images"]
    (images / "nii-declares-4g.nii.gz").write_bytes(nifti_bomb((1024, 1024, 1024)))
    (images / "nii-declares-512m.nii.gz").write_bytes(nifti_bomb((1024, 1024, 128)))
    nrrd = b"NRRD0004\ntype: uint8\ndimension: 2\nsizes: 48 48\nencoding: gzip\n\n"
    (images / "nrrd-inflates-256m.nrrd").write_bytes(nrrd + gzip_stream(b"", 256 << 20))
    (images / "nrrd-declares-1t.nrrd").write_bytes(nrrd.replace(b"48 48", b"1048576 1048576") + gzip.compress(b"\0"))
    series_id, seg_file = _dicom_bombs(images)
    bombs = ["nii-declares-4g", "nii-declares-512m", "nrrd-inflates-256m", "nrrd-declares-1t", "huge", "deflated"]
    run = subprocess.run([sys.executable, str(HERE / "bomb_child.py"), str(images), series_id, str(seg_file), *bombs],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout.strip().splitlines()[-1])
    idle = report["idle_mib"]
    print(f"\nbombs: idle peak {idle:.0f} MiB; " + ", ".join(f"{k} {v['peak_mib']:.0f} MiB"
                                                           for k, v in report["bombs"].items()))
    expected = {"nii-declares-4g": "declares shape", "nii-declares-512m": "declares shape",
                "nrrd-inflates-256m": "inflates to more", "nrrd-declares-1t": "declares shape",
                "huge": "60000 x 60000", "deflated": "deflated", "seg": "frames are 4096 x 4096"}
    for bomb, words in expected.items():
        answer = report["bombs"][bomb]
        assert words in answer["answer"], (bomb, answer)
        assert answer["peak_mib"] < 1.5 * idle, (bomb, answer, idle)
