"""Small files the data tests write themselves: NIfTI, NRRD and PNG images and label maps, and
MSD / nnU-Net v2 / pairs folders made of them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def nifti(path: Path, array: np.ndarray, spacing=(1.0, 1.0, 1.0)) -> Path:
    import nibabel as nib

    affine = np.diag([*spacing, 1.0])
    nib.save(nib.Nifti1Image(np.asarray(array), affine), str(path))
    return path


def nrrd_file(path: Path, array: np.ndarray, spacing=(1.0, 1.0, 1.0)) -> Path:
    import nrrd

    header = {"space": "left-posterior-superior", "space directions": np.diag(spacing), "space origin": np.zeros(3)}
    nrrd.write(str(path), np.asarray(array), header)
    return path


def png(path: Path, array: np.ndarray) -> Path:
    """`array` is (x, y), the order MONAI reads PNGs in; PIL wants rows first."""
    from PIL import Image

    Image.fromarray(np.ascontiguousarray(np.asarray(array).T)).save(path)
    return path


def phantom(shape=(24, 20, 12), seed=0) -> tuple[np.ndarray, np.ndarray]:
    """A noisy CT-like volume (HU) with two labelled blobs: 1 (a box) and 2 (a sphere)."""
    rng = np.random.default_rng(seed)
    image = rng.normal(-800, 30, shape).astype(np.int16)
    label = np.zeros(shape, np.uint8)
    label[4:10, 4:10, 2:8] = 1
    grid = np.indices(shape)
    centre = np.array(shape) * 0.65
    sphere = sum((g - c) ** 2 for g, c in zip(grid, centre)) <= (min(shape) * 0.25) ** 2
    label[sphere] = 2
    image[label == 1] = 40
    image[label == 2] = 200
    return image, label


def msd_folder(root: Path, n_cases: int = 3, shape=(24, 20, 12), spacing=(0.8, 0.8, 2.5)) -> Path:
    """A Medical Segmentation Decathlon task folder with `n_cases` CT cases."""
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    training = []
    for i in range(n_cases):
        image, label = phantom(shape, seed=i)
        name = f"case_{i:03d}.nii.gz"
        nifti(root / "imagesTr" / name, image, spacing)
        nifti(root / "labelsTr" / name, label, spacing)
        training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
    meta = {
        "name": "TestTask",
        "licence": "CC-BY-SA 4.0",
        "modality": {"0": "CT"},
        "labels": {"0": "background", "1": "box", "2": "sphere"},
        "numTraining": n_cases,
        "training": training,
    }
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def nnunet_folder(root: Path, n_cases: int = 2, channels: int = 2) -> Path:
    """An nnU-Net v2 raw dataset with `channels` MR channels per case."""
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    for i in range(n_cases):
        image, label = phantom(seed=10 + i)
        for c in range(channels):
            nifti(root / "imagesTr" / f"sub{i}_{c:04d}.nii.gz", (image + 1000 * (c + 1)).astype(np.int16))
        nifti(root / "labelsTr" / f"sub{i}.nii.gz", label)
    meta = {
        "channel_names": {str(c): name for c, name in zip(range(channels), ("T1", "T2", "FLAIR"))},
        "labels": {"background": 0, "box": 1, "sphere": 2, "whole": [1, 2]},
        "numTraining": n_cases,
        "file_ending": ".nii.gz",
    }
    (root / "dataset.json").write_text(json.dumps(meta))
    return root
