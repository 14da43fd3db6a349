"""Shared fixtures: small real models on disk, so tests stay fast on a 2-core CPU."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

if os.environ.get("PYTEST_XDIST_WORKER"):  # workers share the cores: one torch/BLAS thread each (and their children)
    os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import pytest

os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")


def _tiny_base(path: Path, spatial_dims: int, **fields) -> Path:
    import torch

    from fedpoint.shared.config import ModelConfig
    from fedpoint.shared.model import build_model, save_base

    torch.manual_seed(0)
    cfg = ModelConfig(spatial_dims=spatial_dims, channels=(8, 16, 32), strides=(2, 2), num_res_units=1, **fields)
    return save_base(build_model(cfg), cfg, path, {"provenance": {"note": "random weights, for tests"}})


@pytest.fixture(scope="session")
def tiny_base_2d(tmp_path_factory) -> Path:
    """A small random 2D base checkpoint (path without suffix)."""
    return _tiny_base(tmp_path_factory.mktemp("base2d") / "tiny2d", 2)


@pytest.fixture(scope="session")
def tiny_box_base_2d(tmp_path_factory) -> Path:
    """A small random 2D base that takes a box prompt (a fifth input channel)."""
    from fedpoint.shared.config import BOX_INPUTS

    return _tiny_base(tmp_path_factory.mktemp("boxbase2d") / "tinybox2d", 2, inputs=BOX_INPUTS)


@pytest.fixture(scope="session")
def tiny_base_3d(tmp_path_factory) -> Path:
    return _tiny_base(tmp_path_factory.mktemp("base3d") / "tiny3d", 3)


def blob_image(shape=(48, 48), seed: int = 0, contrast: float = 1.0):
    """A noisy image with one bright ellipse-like object and its mask (2D or 3D)."""
    rng = np.random.default_rng(seed)
    grid = np.indices(shape).astype(np.float32)
    centre = np.array(shape, dtype=np.float32) / 2 + rng.uniform(-3, 3, len(shape))
    radii = np.array(shape, dtype=np.float32) / rng.uniform(4, 6, len(shape))
    mask = (((grid - centre.reshape(-1, *[1] * len(shape))) / radii.reshape(-1, *[1] * len(shape))) ** 2).sum(0) <= 1
    image = 0.2 + 0.1 * rng.standard_normal(shape).astype(np.float32) + contrast * 0.5 * mask
    return image[None].astype(np.float32), mask


@pytest.fixture
def blob():
    return blob_image


@pytest.fixture(scope="session")
def blob_maker():
    """`blob_image` for fixtures of a wider scope than `blob` (module- or session-scoped)."""
    return blob_image


@pytest.fixture(scope="session")
def blob_base_2d(tmp_path_factory) -> Path:
    """A tiny base trained for a few seconds to segment bright blobs from one click (the random tiny
    base predicts noise): the page shows a real-looking mask, the replay judge sees clicks saved.
    Trained once per session (per xdist worker), not once per test."""
    helpers = str(Path(__file__).parent / "client" / "service")
    if helpers not in sys.path:
        sys.path.insert(0, helpers)
    from service_helpers import train_blob_base

    return train_blob_base(tmp_path_factory.mktemp("blob-base") / "blob2d", blob_image)


def pytest_configure(config):
    config.addinivalue_line("markers", "hostile: hostile inputs and faults against the site service (run by default)")


# Groups queued first (make test passes --no-loadscope-reorder, so xdist keeps this order): the longest
# serial groups and the fresh-venv install, then every group holding a slow test. xdist's default orders
# groups by their number of tests, which queued these few-test, minutes-long groups last, where one
# worker ran them alone.
FIRST_GROUPS = ("flower-simulation", "deploy-consortium", "tests/packaging/test_fresh_install.py")


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which reads the groups into the node ids
def pytest_collection_modifyitems(config, items):
    """With `--dist loadgroup` (make test): a test file stays on one worker (its module fixtures are
    built once), and every simulated (Ray) Flower federation shares one group, so two never compete for
    the cores (under that contention their rounds time out). The deployment tests that run a real
    SuperLink and SuperNodes (no Ray) share one group, so its one consortium (tests/deploy/conftest.py,
    session-scoped) is started once. Items are then ordered by group: FIRST_GROUPS, the groups with a
    slow test, the rest (each in collection order)."""
    groups = {}
    for item in items:
        path = item.nodeid.split("::")[0]
        group = path
        if item.get_closest_marker("flower"):
            group = "deploy-consortium" if path.startswith("tests/deploy/") else "flower-simulation"
        item.add_marker(pytest.mark.xdist_group(group))
        groups[item.nodeid] = group
    slow = {groups[i.nodeid] for i in items if i.get_closest_marker("slow")}

    def rank(item) -> int:
        group = groups[item.nodeid]
        return FIRST_GROUPS.index(group) if group in FIRST_GROUPS else len(FIRST_GROUPS) + (group not in slow)

    items.sort(key=rank)  # stable: collection order within a rank


@pytest.fixture
def task_identity():
    """Instruction Messages need a task identity, as inside a running ServerApp."""
    from flwr.supercore.task_identity import TaskIdentity

    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    yield
    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved


# ---------------------------------------------------------------- federation: blob sites and a fast run config
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


