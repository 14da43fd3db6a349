"""Bring-your-own datasets are read lazily: listing reads headers, voxels are decoded on first use,
a few volumes at a time, and damage found only in the voxels is reported then, not raised."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from fpdata_files import msd_folder, nifti, phantom

from fedpoint.data import DataError, full_slice_samples, load_dataset
from fedpoint.data import readers

VOLUME_MIB = 512 * 512 * 100 * 4 / 2**20  # one 512 x 512 x 100 float32 volume: 100 MiB


@pytest.fixture
def decodes(monkeypatch):
    """Count the files `readers` decodes."""
    seen: list[str] = []
    real = readers.read_image

    def counting(path, *args, **kwargs):
        seen.append(path.name)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(readers, "read_image", counting)
    readers.VOLUMES.clear()
    return seen


def test_listing_reads_headers_only_and_cases_decode_on_use(tmp_path, decodes):
    data = load_dataset(msd_folder(tmp_path / "Task", n_cases=4))
    assert decodes == []  # nothing decoded while listing
    case = data.cases[1]
    assert case.spatial_shape == (24, 20, 12) and case.ndim == 3 and case.spacing == pytest.approx((0.8, 0.8, 2.5))
    assert decodes == []
    image, label = phantom(seed=1)
    assert np.array_equal(case.image[0], image.astype(np.float32))
    assert [o.name for o in case.objects] == ["box", "sphere"]
    assert np.array_equal(case.objects[1].mask, label == 2)
    assert sorted(decodes) == ["case_001.nii.gz", "case_001.nii.gz"]  # its image and its label, once each
    assert not any(isinstance(getattr(o, "_label_map"), np.ndarray) for o in case.objects)  # objects hold no voxels


def test_cache_holds_at_most_two_volumes(tmp_path, decodes):
    data = load_dataset(msd_folder(tmp_path / "Task", n_cases=4))
    for case in data.cases:
        assert case.image.shape == (1, 24, 20, 12) and all(o.mask.any() for o in case.objects)
        assert len(readers.VOLUMES._items) <= 2
    assert len(decodes) == 8  # each image and label decoded once
    data.cases[0].image  # evicted: decoded again, correctly
    assert len(decodes) == 9


def test_damage_found_on_decoding_is_reported_naming_the_file(tmp_path):
    folder = msd_folder(tmp_path / "Task", n_cases=3)
    bad = folder / "imagesTr" / "case_002.nii.gz"
    bad.write_bytes(bad.read_bytes()[:2000])  # the header survives, the voxels do not
    data = load_dataset(folder)
    assert len(data.cases) == 3 and data.skipped == []
    samples = full_slice_samples(data, spatial_dims=2, min_voxels=10)
    assert samples and {s.case_id for s in samples} == {"case_000", "case_001"}
    assert [c.case_id for c in data.cases] == ["case_000", "case_001"]
    assert data.skipped == [(str(bad), data.skipped[0][1])] and "cannot be read" in data.skipped[0][1]
    with pytest.raises(DataError, match="case_002.nii.gz: cannot be read"):
        load_dataset(folder, strict=True)  # strict reading decodes every case while listing


def test_damaged_label_of_an_unused_case_gives_no_objects(tmp_path):
    folder = msd_folder(tmp_path / "Task", n_cases=2)
    nifti(folder / "labelsTr" / "case_000.nii.gz", np.zeros((24, 20, 12), np.uint8), (0.8, 0.8, 2.5))
    data = load_dataset(folder)
    assert data.cases[0].objects == []  # reported, not raised: a listing of objects never crashes
    assert data.skipped[0][0].endswith("case_000.nii.gz") and "empty" in data.skipped[0][1]
    assert [c.case_id for c in data.cases] == ["case_001"]


# ------------------------------------------------------------------------------ a decathlon-size task
def write_large_msd(root, n_cases=20, shape=(512, 512, 100)):
    """An MSD task of `n_cases` CT volumes, mostly air with two small labelled blobs each: gzip makes
    each file a few hundred KiB, while decoded each image is 100 MiB as float32."""
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    training = []
    for i in range(n_cases):
        image = np.zeros(shape, np.int16)
        label = np.zeros(shape, np.uint8)
        x, y, z = 50 + 10 * i, 200, 30 + i
        label[x:x + 20, y:y + 20, z:z + 15] = 1
        label[300:312, 300 - 5 * i:312 - 5 * i, 50:58] = 2
        image[label == 1], image[label == 2] = 60, 180
        name = f"big_{i:03d}.nii.gz"
        nifti(root / "imagesTr" / name, image, (0.7, 0.7, 2.5))
        nifti(root / "labelsTr" / name, label, (0.7, 0.7, 2.5))
        training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
    meta = {"name": "Big", "modality": {"0": "CT"}, "labels": {"0": "background", "1": "organ", "2": "lesion"},
            "numTraining": n_cases, "training": training}
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


PEAK_SCRIPT = """
import json, resource, sys
from pathlib import Path

def peak_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB

from fedpoint.data import load_dataset, make_samples
from fedpoint.data.readers import read_image

read_image(Path(sys.argv[2]))  # MONAI and torch imported, and one small file decoded: the baseline
base = peak_mib()
data = load_dataset(Path(sys.argv[1]))
listed = peak_mib()
objects = 0
for case in data.cases:
    assert case.image.shape == (1, 512, 512, 100)
    objects += sum(1 for o in case.objects if o.mask.any())
iterated = peak_mib()
samples = make_samples(data, size=(64, 64), max_per_object=2)
sampled = peak_mib()
samples_n = list(range(len(samples)))
del samples
from fedpoint.simulations.evaluation import EvaluationSpec, load_stream

stream, _ = load_stream(EvaluationSpec(data=sys.argv[1], base="base3d", images=12))
shapes = {tuple(s.image.shape) for s in stream}  # what `fedpoint evaluate --base base3d` walks through
streamed = peak_mib()
print(json.dumps({"cases": len(data.cases), "objects": objects, "samples": len(samples_n), "skipped": data.skipped,
                  "listed": listed - base, "iterated": iterated - base, "sampled": sampled - base,
                  "stream": len(stream), "shapes": [list(x) for x in shapes], "streamed": streamed - base}))
"""


@pytest.mark.slow
def test_decathlon_size_task_holds_a_few_volumes_not_all(tmp_path):
    folder = write_large_msd(tmp_path / "Task09_Big", n_cases=12)  # 12 > the stream and >> the cache
    on_disk = sum(p.stat().st_size for p in folder.rglob("*.nii.gz"))
    assert on_disk < 40 * 2**20  # 12 images + 12 labels, compressed
    small = nifti(tmp_path / "small.nii.gz", np.zeros((8, 8, 8), np.int16))
    run = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, str(folder), str(small)],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    peak = json.loads(run.stdout.strip().splitlines()[-1])
    print(f"peak RSS growth (MiB): listing {peak['listed']:.0f}, iterating {peak['iterated']:.0f}, "
          f"make_samples {peak['sampled']:.0f}; one volume {VOLUME_MIB:.0f}, all 12 eager {12 * VOLUME_MIB:.0f}")
    assert peak["cases"] == 12 and peak["objects"] == 24 and peak["samples"] == 48 and peak["skipped"] == []
    assert peak["listed"] < 0.5 * VOLUME_MIB  # headers only
    assert peak["iterated"] < 5 * VOLUME_MIB  # eager reading held 12 images (1200 MiB) and 12 labels
    assert peak["sampled"] < 5 * VOLUME_MIB
    # 3D evaluation: twelve whole-volume samples, built one at a time as the stream reaches them
    print(f"3D evaluation stream of {peak['stream']} whole volumes: peak growth {peak['streamed']:.0f} MiB")
    assert peak["stream"] == 12 and peak["shapes"] == [[1, 512, 512, 100]]
    assert peak["streamed"] < 6 * VOLUME_MIB


@pytest.mark.parametrize("split", [False, True])
def test_lazy_volumes_are_the_samples_a_list_would_hold(tmp_path, split):
    from fedpoint.data.samples import LazyVolumes, volume_refs

    data = load_dataset(msd_folder(tmp_path / "Task", n_cases=3))
    eager = full_slice_samples(data, spatial_dims=3, split_components=split)
    lazy = LazyVolumes(volume_refs(data.cases, split_components=split))
    assert len(lazy) == len(eager) > 0
    for a, b in zip(eager, lazy):
        assert (a.case_id, a.object_name, a.spacing) == (b.case_id, b.object_name, b.spacing)
        assert np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask)
    tail = lazy[1:]
    assert len(tail) == len(eager) - 1 and tail[0].object_name == eager[1].object_name
