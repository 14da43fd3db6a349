"""Federation fixtures: tiny real datasets on disk (NIfTI image/label pairs of blobs), a sites
config naming them, and a run config for fast simulated federations on the tiny base."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest


def write_blob_dataset(blob, folder: Path, modality: str, count: int = 4, shape=(40, 40), seed: int = 0) -> Path:
    """`count` blob images with their labels as NIfTI pairs, read back by `fedpoint.data`."""
    import nibabel as nib

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        image, mask = blob(shape, seed=seed + i)
        nib.save(nib.Nifti1Image(image[0], np.eye(4)), str(folder / f"case{i:02d}.nii.gz"))
        nib.save(nib.Nifti1Image(mask.astype(np.uint8), np.eye(4)), str(folder / f"case{i:02d}_label.nii.gz"))
    (folder / "fedpoint.json").write_text(json.dumps({"modality": modality, "labels": {"1": "blob"}}))
    return folder


def write_sites_config(path: Path, sites: list[tuple[str, str]]) -> Path:
    """A [[sites]] TOML: one site per (name, dataset folder)."""
    lines = []
    for name, dataset in sites:
        lines += ["[[sites]]", f'name = "{name}"', f'dataset = "{dataset}"', 'order = "sorted"', ""]
    path.write_text("\n".join(lines))
    return path


@pytest.fixture
def blob_sites(blob, tmp_path) -> Path:
    """A sites config with an MR site and a CT site, four 40x40 blob cases each."""
    root = tmp_path / "data"
    mr = write_blob_dataset(blob, root / "mr", "MR", seed=0)
    ct = write_blob_dataset(blob, root / "ct", "CT", seed=10)
    return write_sites_config(root / "sites.toml", [("mr-site", str(mr)), ("ct-site", str(ct))])


@pytest.fixture
def fast_run_config(tiny_base_2d, blob_sites, tmp_path):
    """Run config (kebab-case) for a small, fast federation into tmp_path."""
    return {
        "num-server-rounds": 2,
        "min-train-nodes": 2,
        "images-per-round": 2,
        "clicks": 3,
        "size": 32,
        "base": str(tiny_base_2d),
        "sites-config": str(blob_sites),
        "output-dir": str(tmp_path / "federation"),
        "round-timeout": 240.0,
        "local-epochs": 1,
    }


@pytest.fixture(name="write_sites_config")
def write_sites_config_fixture():
    return write_sites_config


