"""Image file formats by suffix, for every reader: dataset folders (`readers`) and the site's
images folder and label uploads (`fedpoint.client.service`).

Suffixes are matched case-insensitively, the longest first where one ends another (`.nii.gz`
before `.nii`). A dataset folder takes the formats MONAI reads with a header fedpoint can check
before decoding; the site's images folder also serves raw `.npy` arrays.
"""

from __future__ import annotations

from typing import Sequence

NIFTI = (".nii.gz", ".nii")
NRRD = (".nrrd",)
PNG = (".png",)
NUMPY = (".npy",)
MEDICAL = NIFTI + NRRD  # files with a real-world affine, sent back to a client as they are
PICTURES = PNG + (".jpg", ".jpeg")  # 2D pictures: 3 or 4 channels there mean RGB(A)

DATASET_SUFFIXES = MEDICAL + PNG  # images and labels of a dataset folder (MSD, nnU-Net, pairs)
SITE_IMAGE_SUFFIXES = DATASET_SUFFIXES + NUMPY  # the site's images folder
LABEL_FILE_SUFFIXES = SITE_IMAGE_SUFFIXES  # an uploaded label file
RESULT_SUFFIXES = MEDICAL  # a label file the service writes for a client (MONAI Label's result_extension)


def has_suffix(name: str, suffixes: Sequence[str]) -> bool:
    return name.lower().endswith(tuple(suffixes))


def split_suffix(name: str, suffixes: Sequence[str] = SITE_IMAGE_SUFFIXES) -> tuple[str, str] | None:
    """(stem, suffix) of a file name with one of `suffixes`; None otherwise, or when nothing
    is left of the name once the suffix is taken off."""
    lower = name.lower()
    for suffix in suffixes:
        if lower.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)], suffix
    return None
