"""Training-data preparation (pre-training only): the pseudo-object generator, atlas resampling,
the evaluation-data guard, the dev split and idempotent prepares. Fast: no downloads."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fedpoint.data import training as tr
from fedpoint.data.types import DataError


def _skimage_image() -> np.ndarray:
    pytest.importorskip("skimage", reason="scikit-image is not installed")
    from skimage import data

    return tr.shrink(tr.to_grey(data.immunohistochemistry()), 128).T  # 128x128 grey, (x, y)


def test_pseudo_regions_cover_respect_min_size_and_are_deterministic():
    image = _skimage_image()
    labels = tr.pseudo_regions(image, 7, 50.0, min_size=30)
    assert labels.shape == image.shape and labels.dtype == np.int32
    sizes = np.bincount(labels.ravel())
    ids = np.flatnonzero(sizes[1:]) + 1
    assert len(ids) >= 5
    assert sizes[ids].min() >= 30
    assert sizes[ids].max() <= tr.PSEUDO_MAX_FRACTION * image.size
    np.testing.assert_array_equal(np.sort(ids), np.arange(1, len(ids) + 1))  # ids 1..n, no gaps
    # Every pixel is in a region unless its superpixel was dropped as background (too large).
    assert (labels > 0).mean() > 0.5
    np.testing.assert_array_equal(labels, tr.pseudo_regions(image, 7, 50.0, min_size=30))
    other = tr.pseudo_regions(image, 8, 50.0, min_size=30)
    assert not np.array_equal(labels, other)  # another seed: other ids (and sigma)


def test_pseudo_scales_give_fewer_larger_regions():
    image = _skimage_image()
    counts = [int(tr.pseudo_regions(image, 0, s, min_size=max(30, int(f * image.size))).max())
              for _, s, f in tr.PSEUDO_SCALES]
    assert counts[0] > counts[1] >= counts[2] >= 1


def test_resample_labels_follows_the_affines():
    src = np.zeros((4, 5, 6), np.int32)
    src[1, 2, 3] = 7
    src[3, 4, 5] = 9
    src_affine = np.diag([2.0, 2.0, 2.0, 1.0])
    src_affine[:3, 3] = [10, 20, 30]
    # Target: 1 mm grid, flipped x, origin elsewhere; world of src voxel (1,2,3) = (12, 24, 36).
    target_affine = np.diag([-1.0, 1.0, 1.0, 1.0])
    target_affine[:3, 3] = [20, 20, 30]
    out = tr.resample_labels(src, src_affine, (12, 12, 12), target_affine)
    # target voxel (i, j, k) -> world (20 - i, 20 + j, 30 + k): (12, 24, 36) is i=8, j=4, k=6
    assert out[8, 4, 6] == 7
    assert out[4, 8, 10] == 9  # src (3, 4, 5) -> world (16, 28, 40)
    assert out.dtype == np.int32 and set(np.unique(out)) <= {0, 7, 9}
    # voxels that fall outside the source grid are 0: (0, 0, 0) -> world (20, 20, 30) -> src x = 5
    assert out[0, 0, 0] == 0
    assert np.count_nonzero(out) == 16  # each 2 mm source voxel covers 2x2x2 target voxels
    far = tr.resample_labels(src, src_affine, (3, 3, 3), np.diag([1.0, 1.0, 1.0, 1.0]) @ _shift(-100))
    assert not far.any()


def _shift(t: float) -> np.ndarray:
    m = np.eye(4)
    m[:3, 3] = t
    return m


def test_dev_split_rule():
    assert tr.split_of("colin27-brodmann") == "dev"
    assert tr.split_of("mni-jhu-wm") == "dev"
    assert tr.split_of("pydicom-us-s2") == "dev"
    assert tr.split_of("skimage-cell-s0") == "dev"
    assert tr.split_of("colin27-aal") == "train"
    assert tr.split_of("pydicom-mr-head-f5-s1") == "train"
    assert tr.split_of("skimage-cellular-s0") == "train"


def _item(name: str, source: str = "pseudo") -> tr.TrainingImage:
    image = np.arange(64, dtype=np.float32).reshape(8, 8)
    labels = np.zeros((8, 8), np.int32)
    labels[:4] = 1
    labels[4:, :4] = 2
    return tr._image(name, source, "MR", image, labels, "pseudo")


def test_load_training_refuses_evaluation_data(tmp_path):
    folder = tmp_path / tr.TRAINING_DIR
    tr.write_training_image(folder, _item("ok-image"))
    loaded = tr.load_training(tmp_path)
    assert [i.name for i in loaded] == ["ok-image"] and loaded[0].regions == 2
    assert loaded[0].labels.dtype == np.int32 and loaded[0].image.dtype == np.float32
    tr.write_training_image(folder, _item("lung1", source="pyradiomics"))
    with pytest.raises(DataError, match="pyradiomics"):
        tr.load_training(tmp_path)
    (folder / "lung1.npz").unlink()
    tr.write_training_image(folder, _item("nuclei-patch", source="stardist-nuclei"))
    with pytest.raises(DataError, match="stardist"):
        tr.load_training(tmp_path)


def test_load_training_without_prepare_names_the_command(tmp_path):
    with pytest.raises(DataError, match="fedpoint data prepare --training"):
        tr.load_training(tmp_path)


def test_prepare_is_idempotent_and_skips_missing_sources(tmp_path, monkeypatch):
    calls = []

    def builder(downloads):
        calls.append(downloads)
        yield _item("toy-a", "toy")
        yield _item("skimage-cell-s0", "toy")  # a dev image

    def missing(downloads):
        raise tr.SkipSource("Debian package nothing-here is not installed")
        yield  # pragma: no cover

    sources = {
        "toy": tr.TrainingSource("toy", "CC0", "test", "", builder),
        "absent": tr.TrainingSource("absent", "CC0", "test", "", missing),
    }
    monkeypatch.setattr(tr, "TRAINING_SOURCES", sources)
    first = tr.prepare_training(tmp_path)
    assert [(s["name"], s["status"]) for s in first] == [
        ("toy-a", "built"), ("skimage-cell-s0", "built"), ("absent", "skipped")]
    assert "nothing-here" in first[-1]["reason"]
    stamp = (tmp_path / "training" / "toy-a.npz").stat().st_mtime_ns
    second = tr.prepare_training(tmp_path)
    assert [s["status"] for s in second] == ["present", "present", "skipped"]
    assert len(calls) == 1
    assert (tmp_path / "training" / "toy-a.npz").stat().st_mtime_ns == stamp
    assert not list((tmp_path / "training").glob(".*tmp"))  # no temp files left behind
    assert [i.name for i in tr.load_training(tmp_path, split="dev")] == ["skimage-cell-s0"]
    assert [i.name for i in tr.load_training(tmp_path, split="train")] == ["toy-a"]
    meta = json.loads((tmp_path / "training" / "index.json").read_text())
    assert set(meta) == {"toy"}


def test_training_sources_are_documented():
    assert list(tr.TRAINING_SOURCES)[:5] == ["mni152", "colin27", "mni-atlases", "invesalius-ct", "pseudo"]
    for source in tr.TRAINING_SOURCES.values():
        assert source.licence and source.origin and source.notes
        assert not any(b in (source.origin + source.name).lower() for b in tr.EVALUATION_ONLY)


@pytest.mark.skipif(not tr.INVESALIUS_CRANIUM.is_file(), reason="Debian package invesalius-examples is not installed")
def test_cranium_reads_as_hu_in_xyz():
    hu, spacing = tr.read_cranium()
    assert hu.shape == (256, 256, 108) and hu.dtype == np.int16
    assert hu.min() == -1024 and spacing[2] == pytest.approx(1.5)


def test_head_ct_labels_on_a_synthetic_skull():
    pytest.importorskip("skimage", reason="scikit-image is not installed")
    x, y, z = np.mgrid[:48, :48, :6]
    r = np.hypot(x - 24, y - 24)
    hu = np.full((48, 48, 6), -1000, np.int16)
    hu[r < 20] = 40  # scalp / soft tissue
    hu[(r >= 14) & (r < 17)] = 1200  # skull ring
    hu[r < 14] = 30  # brain
    labels = tr.head_ct_labels(hu)
    assert labels[24, 24, 3] == 3 and labels[24, 9, 3] == 1 and labels[24, 5, 3] == 2 and labels[0, 0, 0] == 0
