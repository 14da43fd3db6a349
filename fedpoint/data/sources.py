"""Where each built-in dataset comes from, and how its cases are built from the raw files.

Every source is reachable offline but for the package registries: nilearn's bundled templates,
the pyradiomics 3.0.1 source archive and the stardist wheel (both fetched with `pip download`),
and Debian's mricron-data if it is installed. Builders write prepared cases with `write_case`
and return their summaries.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from fedpoint.data.case_files import ObjectRecord, write_case
from fedpoint.shared.fileio import sha256_file
from fedpoint.data.types import DataError

COLIN27_DIR = Path("/usr/share/mricron/templates")
COLIN27_HINT = (
    "colin27-aal skipped: Debian package mricron-data is not installed "
    "(`sudo apt-get install mricron-data`, then rerun `fedpoint data prepare`)."
)


@dataclass(frozen=True)
class Source:
    name: str
    modality: str
    subjects: int
    source: str
    licence: str
    notes: str
    build: Callable[[Path, Path], list[dict]]  # (dataset folder, downloads folder) -> case summaries
    download: str | None = None  # the pip requirement it is built from, if any


# ---------------------------------------------------------------------------------- downloads
def pip_download(requirement: str, dest: Path, *extra: str) -> Path:
    """Fetch one distribution file with pip (the only network this module uses); reuse it if present."""
    stem = requirement.replace("==", "_").replace("-", "_").lower()
    existing = _find_download(dest, stem)
    if existing:
        return existing
    dest.mkdir(parents=True, exist_ok=True)
    tmp = dest / "tmp"
    tmp.mkdir(exist_ok=True)
    # TMPDIR and --no-cache-dir keep pip's scratch files inside the data folder.
    env = {**os.environ, "TMPDIR": str(tmp), "PIP_NO_INPUT": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-cache-dir", "-d", str(dest), *extra, requirement]
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, env=env)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    found = _find_download(dest, stem)
    if result.returncode != 0 or not found:
        tail = " | ".join((result.stderr or result.stdout).strip().splitlines()[-3:])
        raise DataError(requirement, f"`pip download` failed ({tail})")
    return found


def find_download(dest: Path, requirement: str) -> Path | None:
    """The already downloaded file for a `name==version` requirement, if any."""
    return _find_download(dest, requirement.replace("==", "_").replace("-", "_").lower())


def _find_download(dest: Path, stem: str) -> Path | None:
    if not dest.is_dir():
        return None
    for path in sorted(dest.iterdir()):
        name = path.name.lower().replace("-", "_")
        if name.startswith((stem + "_", stem + ".")) and name.endswith((".whl", ".tar.gz", ".zip")):
            return path
    return None


def read_member(archive: Path, suffix: str) -> bytes:
    """Bytes of the one member of a wheel/zip/tar.gz whose path ends with `suffix`."""
    if archive.name.endswith((".whl", ".zip")):
        with zipfile.ZipFile(archive) as zf:
            names = [n for n in zf.namelist() if n.endswith(suffix)]
            if names:
                return zf.read(names[0])
    else:
        with tarfile.open(archive, "r:gz") as tf:
            for member in tf.getmembers():
                if member.name.endswith(suffix):
                    return tf.extractfile(member).read()
    raise DataError(archive, f"has no member ending in {suffix}")


# ---------------------------------------------------------------------------------- MNI152
def build_mni152(folder: Path, downloads: Path) -> list[dict]:
    from nilearn import datasets as nd  # offline loaders of files bundled with nilearn

    t1 = nd.load_mni152_template(resolution=1)
    image = np.rint(np.asarray(t1.dataobj, dtype=np.float32) * 255).astype(np.uint8)
    brain = np.asarray(nd.load_mni152_brain_mask(resolution=1).dataobj) > 0
    gm = np.asarray(nd.load_mni152_gm_template(resolution=1).dataobj) > 0.5
    wm = np.asarray(nd.load_mni152_wm_template(resolution=1).dataobj) > 0.5
    tissue = np.zeros(image.shape, np.uint8)
    tissue[gm] = 1
    tissue[wm & ~gm] = 2
    summary = write_case(
        folder / "mni152.npz",
        case_id="mni152",
        image=image[None],
        spacing=tuple(float(z) for z in t1.header.get_zooms()[:3]),
        modality="MR",
        source="nilearn load_mni152_template/_gm_template/_wm_template/_brain_mask (resolution=1)",
        label_maps={"brain": brain, "tissue": tissue},
        # Derived, not hand-drawn: nilearn's brain mask thresholds the T1, and the tissue masks
        # threshold population probability maps.
        objects=[
            ObjectRecord("brain", "brain", 1, True),
            ObjectRecord("grey-matter", "tissue", 1, True),
            ObjectRecord("white-matter", "tissue", 2, True),
        ],
    )
    return [summary]


# ---------------------------------------------------------------------------------- pyradiomics
PYRADIOMICS = "pyradiomics==3.0.1"
# The sdist is one published file, so its hash is fixed (wheels, like stardist's, vary by platform).
PYRADIOMICS_SDIST_SHA256 = "47c57f441d6cb7973fa3b2ea48d3948df78e3348e1c69e1e2ff19001601fc2f5"


def pyradiomics_archive(downloads: Path) -> Path:
    """The 3.0.1 sdist: its data/ folder is the only packaged copy of these patient volumes."""
    # pip must build the sdist's metadata, which needs these importable (no build isolation:
    # an isolated build would fetch build requirements from the index on every run).
    for module in ("numpy", "setuptools", "versioneer"):
        try:
            __import__(module)
        except ImportError as err:
            raise DataError(PYRADIOMICS, f"`pip download` of the sdist needs {module} installed ({err})") from err
    archive = pip_download(PYRADIOMICS, downloads, "--no-build-isolation", "--no-binary", ":all:")
    digest = sha256_file(archive)
    if digest != PYRADIOMICS_SDIST_SHA256:
        raise DataError(archive, f"sha256 {digest} is not that of the published 3.0.1 sdist; delete it and rerun")
    return archive


def read_nrrd_member(archive: Path, name: str) -> tuple[np.ndarray, tuple[float, ...]]:
    import nrrd

    raw = read_member(archive, f"data/{name}")
    handle = io.BytesIO(raw)
    header = nrrd.read_header(handle)
    data = nrrd.read_data(header, handle)
    directions = np.asarray(header["space directions"], dtype=float)
    spacing = tuple(float(s) for s in np.linalg.norm(directions, axis=1))
    return data, spacing


def _pyradiomics_case(archive: Path, folder: Path, case_id: str, modality: str, derived_ct: bool) -> dict:
    image, spacing = read_nrrd_member(archive, f"{case_id}_image.nrrd")
    label, label_spacing = read_nrrd_member(archive, f"{case_id}_label.nrrd")
    if label.shape != image.shape or not np.allclose(spacing, label_spacing, rtol=1e-3):
        raise DataError(archive, f"{case_id}: label grid {label.shape} does not match image {image.shape}")
    maps = {"lesion": label > 0}
    objects = [ObjectRecord("lesion", "lesion", 1)]
    if derived_ct:
        body = body_mask(image)
        maps["lung-field"] = lung_field_mask(image, body)
        maps["body"] = body
        objects += [ObjectRecord("lung-field", "lung-field", 1, True), ObjectRecord("body", "body", 1, True)]
    return write_case(
        folder / f"{case_id}.npz",
        case_id=case_id,
        image=image.astype(np.int16)[None],
        spacing=spacing,
        modality=modality,
        source=f"{PYRADIOMICS} sdist, data/{case_id}_image.nrrd + {case_id}_label.nrrd",
        label_maps=maps,
        objects=objects,
    )


def _pyradiomics_builder(case_ids: tuple[str, ...], modality: str, derived_ct: bool = False):
    def build(folder: Path, downloads: Path) -> list[dict]:
        archive = pyradiomics_archive(downloads)
        return [_pyradiomics_case(archive, folder, c, modality, derived_ct) for c in case_ids]

    return build


def body_mask(hu: np.ndarray) -> np.ndarray:
    """Derived: the patient's body on a CT, the largest connected region above -500 HU, with
    holes (lungs, airways) filled slice by slice along the last (axial) axis."""
    from scipy import ndimage

    body = _largest_components(hu > -500, keep=1)
    for z in range(body.shape[-1]):
        body[..., z] = ndimage.binary_fill_holes(body[..., z])
    return body


def lung_field_mask(hu: np.ndarray, body: np.ndarray) -> np.ndarray:
    """Derived: air-density tissue (< -400 HU) inside the body, the two largest regions (the lungs,
    or one if they touch; the trachea and main bronchi come with them), dropping regions under a
    fifth of the largest (bowel gas, noise), holes filled slice by slice."""
    from scipy import ndimage

    lungs = _largest_components((hu < -400) & body, keep=2, min_fraction=0.2)
    for z in range(lungs.shape[-1]):  # vessels and nodules inside the lung belong to the field
        lungs[..., z] = ndimage.binary_fill_holes(lungs[..., z])
    return lungs


def _largest_components(mask: np.ndarray, keep: int, min_fraction: float = 0.0) -> np.ndarray:
    from scipy import ndimage

    labels, count = ndimage.label(mask)
    if count == 0:
        return np.zeros(mask.shape, bool)
    sizes = np.bincount(labels.ravel())[1:]
    order = np.argsort(sizes)[::-1][:keep]
    chosen = [i + 1 for i in order if sizes[i] >= min_fraction * sizes[order[0]]]
    return np.isin(labels, chosen)


# ---------------------------------------------------------------------------------- stardist
STARDIST = "stardist==0.9.2"


def build_stardist(folder: Path, downloads: Path) -> list[dict]:
    """The real DSB2018 fluorescence image and its 125-nucleus instance map, read from the wheel
    with tifffile (stardist itself, with its TensorFlow stack, is never imported)."""
    import tifffile

    wheel = pip_download(STARDIST, downloads)
    image = tifffile.imread(io.BytesIO(read_member(wheel, "stardist/data/images/img2d.tif")))
    instances = tifffile.imread(io.BytesIO(read_member(wheel, "stardist/data/images/mask2d.tif")))
    # TIFF arrays are (rows, cols); transpose to (x, y) like every other 2D image here.
    image, instances = image.T, instances.T
    ids = [int(i) for i in np.unique(instances) if i > 0]
    return [
        write_case(
            folder / "nuclei.npz",
            case_id="nuclei",
            image=image[None],
            spacing=(1.0, 1.0),
            modality="microscopy",
            source=f"{STARDIST} wheel, stardist/data/images/img2d.tif + mask2d.tif",
            label_maps={"nuclei": instances},
            objects=[ObjectRecord(f"nucleus-{i}", "nuclei", i) for i in ids],
        )
    ]


# ---------------------------------------------------------------------------------- Colin27 + AAL
def colin27_available(root: Path | None = None) -> bool:
    root = root or COLIN27_DIR
    return all((root / f).is_file() for f in ("ch2.nii.gz", "ch2bet.nii.gz", "aal.nii.gz"))


def read_aal_names(path: Path) -> dict[int, str]:
    """aal.nii.txt lines look like '1 Precentral_L 2001': index, name, code."""
    names: dict[int, str] = {}
    if path.is_file():
        for line in path.read_text(errors="replace").splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0].isdigit():
                names[int(parts[0])] = parts[1]
    return names


def build_colin27(folder: Path, downloads: Path, root: Path | None = None) -> list[dict]:
    import nibabel as nib

    root = root or COLIN27_DIR
    if not colin27_available(root):
        raise DataError(root, COLIN27_HINT)
    t1 = nib.load(root / "ch2.nii.gz")
    brain = np.asarray(nib.load(root / "ch2bet.nii.gz").dataobj) > 0
    aal = np.rint(np.asarray(nib.load(root / "aal.nii.gz").dataobj)).astype(np.int32)
    image = np.asarray(t1.dataobj)
    if aal.shape != image.shape or brain.shape != image.shape:
        raise DataError(root / "aal.nii.gz", f"grid {aal.shape} does not match ch2.nii.gz {image.shape}")
    names = read_aal_names(root / "aal.nii.txt")
    regions = [int(v) for v in np.unique(aal) if v > 0]
    objects = [ObjectRecord("brain", "brain", 1, True)]
    objects += [ObjectRecord(f"aal-{names.get(v, v)}", "aal", v) for v in regions]
    return [
        write_case(
            folder / "colin27.npz",
            case_id="colin27",
            image=image[None],
            spacing=tuple(float(z) for z in t1.header.get_zooms()[:3]),
            modality="MR",
            source="Debian mricron-data: templates/ch2.nii.gz, ch2bet.nii.gz, aal.nii.gz",
            label_maps={"brain": brain, "aal": aal},
            objects=objects,
        )
    ]


PYRADIOMICS_LICENCE = (
    "pyradiomics is BSD-3 (Harvard Medical School 2017); the sdist states neither the origin nor "
    "a licence for the images"
)

SOURCES: dict[str, Source] = {
    s.name: s
    for s in (
        Source(
            "mni152", "MR", 1,
            "nilearn (bundled files): MNI ICBM152 2009a symmetric template, GM/WM probability maps, brain mask",
            "nilearn BSD-3; ICBM 2009a template under the permissive ICBM copyright",
            "population average of 152 subjects, one volume; all masks derived: brain = nilearn's T1 "
            "threshold mask, grey/white matter = tissue probability > 0.5",
            build_mni152,
        ),
        Source(
            "pyradiomics-brain", "MR", 2,
            "pyradiomics 3.0.1 sdist (pip download), data/brain{1,2}_{image,label}.nrrd",
            PYRADIOMICS_LICENCE, "T1 post-contrast brain MR with manual tumour masks",
            _pyradiomics_builder(("brain1", "brain2"), "MR"),
            PYRADIOMICS,
        ),
        Source(
            "pyradiomics-lung", "CT", 2,
            "pyradiomics 3.0.1 sdist (pip download), data/lung{1,2}_{image,label}.nrrd",
            PYRADIOMICS_LICENCE,
            "chest CT with manual nodule/tumour masks (lesion); lung-field (< -400 HU inside the body, "
            "airways included, holes filled) "
            "and body (> -500 HU, filled) are derived by thresholds",
            _pyradiomics_builder(("lung1", "lung2"), "CT", derived_ct=True),
            PYRADIOMICS,
        ),
        Source(
            "pyradiomics-breast", "MR", 1,
            "pyradiomics 3.0.1 sdist (pip download), data/breast1_{image,label}.nrrd",
            PYRADIOMICS_LICENCE, "breast MR crop with a manual lesion mask",
            _pyradiomics_builder(("breast1",), "MR"),
            PYRADIOMICS,
        ),
        Source(
            "stardist-nuclei", "microscopy", 1,
            "stardist 0.9.2 wheel (pip download), stardist/data/images/img2d.tif + mask2d.tif; "
            "from the 2018 Kaggle Data Science Bowl (Caicedo et al. 2019)",
            "stardist is BSD-3; the DSB2018 image licence is not restated in the package",
            "one 512x512 fluorescence field, 125 manually labelled nuclei (one object each)",
            build_stardist,
            STARDIST,
        ),
        Source(
            "colin27-aal", "MR", 1,
            "Debian mricron-data: Colin27 (ch2) T1, ch2bet skull-stripped brain, AAL atlas",
            "MRIcron BSD-3 per Debian copyright; the AAL atlas terms are not restated",
            "single subject (average of 27 scans); 116 AAL regions drawn on this brain; brain = ch2bet > 0 (derived)",
            build_colin27,
        ),
    )
}
