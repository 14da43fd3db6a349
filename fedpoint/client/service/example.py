"""`fedpoint site init`: an example site folder a hospital can start at once.

Writes real images from a built-in dataset (by default CT slices of the pyradiomics lung cases: for
each labelled object, its largest axial cross-section at full resolution, plus one small 3D
volume around a lesion), a `site.toml`, and a random token readable only by its owner.
"""

from __future__ import annotations

import os
import re
import secrets
from pathlib import Path

import numpy as np

from fedpoint.data import DataError, load_dataset

VOLUME_BOX = (160, 160, 48)

SITE_TOML = """\
# fedpoint site annotation service. Start it with:
#   fedpoint site serve --config {config}
# Every setting is described in docs/site-service.md.

site = "{site}"
# CT: a HU window; MR and microscopy: percentiles of each image
modality = "{modality}"
# images to annotate (NIfTI, NRRD, PNG or NPY, or one DICOM series per sub-folder; 2D, or 3D
# annotated slice by slice on a 2D model)
images = "images"
# dicomweb = "http://127.0.0.1:8042/dicom-web"   # a PACS's DICOMweb root: its series too, DICOM-SEG back
# labels = ["liver", "lesion"]                     # several structures per image (default: one, "object")
# the site store: annotation cache, adapter versions, banks received from the federation
store = "store"
# base = "base2d"   # the packaged 2D base (default), or a path to a checkpoint
# norm | norm+stem | lora | full
adapter = "norm"
# frozen | mid | post | mid+post | episodes | mid+post+episodes
mode = "mid+post+episodes"
# 127.0.0.1 serves this computer only; 0.0.0.0 listens on every network interface
host = "127.0.0.1"
port = 8000
# the bearer token (or token_env = "NAME" to read it from the environment); clinicians get their
# own with `fedpoint site user add NAME --config <this file>`
token_file = "site-token"
# allow_shared_token = true    # keep the site token working beside named users (never as one of them)
# tls_cert = "site.crt"        # serve HTTPS directly (with tls_key)
# tls_key = "site.key"
max_upload_mb = 64
max_points = 64
# browser origins allowed to call the API from other web pages: none
cors_origins = []
"""


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.") or "image"


def _save_nifti(path: Path, array: np.ndarray, spacing: tuple[float, ...]) -> None:
    import nibabel as nib

    affine = np.diag([*spacing, *([1.0] * (3 - len(spacing))), 1.0])
    integral = np.all(array == np.round(array)) and array.min() >= -32768 and array.max() <= 32767
    nib.save(nib.Nifti1Image(array.astype(np.int16 if integral else np.float32), affine), str(path))


def _load_first(names) -> object:
    problems = []
    for name in names:
        try:
            return load_dataset(name)
        except DataError as err:
            problems.append(f"{name}: {err}")
    raise ValueError("no built-in dataset could be prepared: " + "; ".join(problems))


def _slices(dataset, count: int) -> list[tuple[str, np.ndarray, tuple[float, ...]]]:
    """(id, 2D image, spacing) of each object's largest cross-section, manual labels first."""
    out = []
    objects = [(case, obj) for case in dataset.cases for obj in case.objects]
    objects.sort(key=lambda co: co[1].derived)
    for case, obj in objects[:count]:
        image, spacing = case.image[0], case.spacing
        if image.ndim == 3:
            areas = obj.mask.reshape(-1, obj.mask.shape[-1]).sum(axis=0)
            z = int(np.argmax(areas))
            out.append((_safe(f"{case.case_id}-{obj.name}-z{z:03d}"), image[..., z], spacing[:2]))
        else:
            out.append((_safe(f"{case.case_id}-{obj.name}"), image, spacing))
    return out


def _volume(dataset) -> tuple[str, np.ndarray, tuple[float, ...]] | None:
    """A box around the first manually labelled object of a 3D case, at most VOLUME_BOX."""
    for case in dataset.cases:
        for obj in case.objects:
            if case.image.ndim != 4 or obj.derived:
                continue
            centre = [int(np.mean(ix)) for ix in np.nonzero(obj.mask)]
            box = []
            for c, n, size in zip(centre, case.image.shape[1:], VOLUME_BOX):
                start = min(max(0, c - size // 2), max(0, n - size))
                box.append(slice(start, min(n, start + size)))
            return _safe(f"{case.case_id}-{obj.name}-volume"), case.image[0][tuple(box)], case.spacing
    return None


def write_example_site(folder: Path, site: str, datasets, count: int = 6, volume: bool = True) -> dict:
    folder = Path(folder)
    dataset = _load_first(datasets)
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    (folder / "store").mkdir(exist_ok=True)
    written = 0
    for image_id, array, spacing in _slices(dataset, count):
        _save_nifti(images / f"{image_id}.nii.gz", array, spacing)
        written += 1
    extra = _volume(dataset) if volume else None
    if extra is not None:
        _save_nifti(images / f"{extra[0]}.nii.gz", extra[1], extra[2])
        written += 1
    token = folder / "site-token"
    fd = os.open(token, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(secrets.token_urlsafe(32) + "\n")
    (folder / "site.toml").write_text(SITE_TOML.format(site=_safe(site), modality=dataset.modality,
                                                      config=folder / "site.toml"))
    return {"dataset": dataset.name, "modality": dataset.modality, "images": written}
