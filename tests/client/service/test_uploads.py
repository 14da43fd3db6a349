"""Uploaded label files are parsed from the request's bytes in memory: no temporary file, nothing
written anywhere, whatever the format."""

from __future__ import annotations

import builtins
import gzip
import io
import tempfile

import numpy as np
import pytest

from fedpoint.client.service.uploads import read_label

SHAPE = (24, 20, 6)


def _label() -> np.ndarray:
    label = np.zeros(SHAPE, np.uint8)
    label[5:15, 4:12, 1:4] = 1
    label[18:22, 14:18, 2:5] = 2
    return label


def _nifti(label: np.ndarray, compressed: bool) -> bytes:
    import nibabel as nib

    data = nib.Nifti1Image(label, np.eye(4)).to_bytes()
    return gzip.compress(data) if compressed else data


def _nrrd(label: np.ndarray) -> bytes:
    import nrrd

    buffer = io.BytesIO()
    nrrd.write(buffer, label, {"encoding": "gzip"})
    return buffer.getvalue()


def _png(plane: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(plane.T)).save(buffer, format="PNG")  # PIL wants rows first
    return buffer.getvalue()


@pytest.fixture
def no_files(monkeypatch):
    """Every way to make a temporary file, and opening any file to write, raises."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"a label upload touched the disk: {args[:2]}")

    for name in ("mkstemp", "mkdtemp", "NamedTemporaryFile", "TemporaryFile", "SpooledTemporaryFile",
                 "TemporaryDirectory"):
        monkeypatch.setattr(tempfile, name, refuse)
    real_open = builtins.open

    def guarded_open(file, mode="r", *args, **kwargs):
        if any(flag in str(mode) for flag in "wax+"):
            refuse(file, mode)
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", guarded_open)
    monkeypatch.setattr(io, "open", guarded_open)


def test_the_guard_catches_a_temporary_file(no_files):
    with pytest.raises(AssertionError, match="touched the disk"):
        tempfile.NamedTemporaryFile()
    with pytest.raises(AssertionError, match="touched the disk"):
        open("anything.nii.gz", "wb")


@pytest.mark.parametrize("name", ["label.nii.gz", "label.nii", "label.nrrd", "label.png"])
def test_label_uploads_are_parsed_in_memory(no_files, name):
    label = _label()
    if name.endswith(".png"):
        plane = label[..., 2] * 100  # a 2D label map, values 0, 100, 200
        data, shape, expected = _png(plane), plane.shape, plane
    else:
        data = _nrrd(label) if name.endswith(".nrrd") else _nifti(label, compressed=name.endswith(".gz"))
        shape, expected = SHAPE, label
    array = read_label(data, name, shape)
    assert array.shape == tuple(shape) and np.array_equal(array, expected.astype(np.int32))


def test_a_large_label_upload_never_spools_to_disk(live, site, monkeypatch):
    """Over HTTP: a label part of over 1 MiB (int32 .npy of a 128 x 128 x 32 volume, 2 MiB) stays
    in memory; the web framework would otherwise roll it over to a temporary file."""
    import json

    rng = np.random.default_rng(0)
    np.save(site["images"] / "big.npy", rng.random((128, 128, 32), dtype=np.float32))
    rolled = []
    monkeypatch.setattr(tempfile.SpooledTemporaryFile, "rollover", lambda self: rolled.append(self._max_size))
    label = np.zeros((128, 128, 32), np.int32)
    label[50:70, 50:70, 10:14] = 1
    buffer = io.BytesIO()
    np.save(buffer, label)
    assert buffer.tell() > 2 << 20
    r = live.client.put("/datastore/label", params={"image": "big"}, files={"label": ("big.npy", buffer.getvalue())},
                        data={"params": json.dumps({"client_id": "u1"})})
    assert r.status_code == 200, r.text
    assert not rolled, "the upload was spooled to a temporary file"
