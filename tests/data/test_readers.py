"""Reading the user's own datasets, and every kind of bad input naming its file."""

from __future__ import annotations

import json

import numpy as np
import pytest
from fpdata_files import msd_folder, nifti, nnunet_folder, nrrd_file, phantom, png

from fedpoint.data import DataError, load_dataset, make_samples


def test_msd_folder_loads_cases_objects_spacing_modality(tmp_path):
    folder = msd_folder(tmp_path / "Task01", n_cases=3)
    data = load_dataset(folder)
    assert data.name == "TestTask" and data.modality == "CT" and data.licence == "CC-BY-SA 4.0"
    assert [c.case_id for c in data.cases] == ["case_000", "case_001", "case_002"]
    case = data.cases[0]
    assert case.image.shape == (1, 24, 20, 12) and case.image.dtype == np.float32
    assert case.spacing == pytest.approx((0.8, 0.8, 2.5))
    assert [o.name for o in case.objects] == ["box", "sphere"]
    image, label = phantom(seed=0)
    assert np.array_equal(case.objects[0].mask, label == 1)
    assert np.array_equal(case.image[0], image.astype(np.float32))  # raw HU, (x, y, z) kept
    assert data.skipped == []


def test_msd_folder_runs_through_make_samples(tmp_path):
    data = load_dataset(msd_folder(tmp_path / "Task01", n_cases=2))
    samples = make_samples(data, size=(32, 32), min_voxels=10)
    assert samples and all(s.mask.any() and s.image.shape == (1, 32, 32) for s in samples)
    assert {s.object_name for s in samples} == {"box", "sphere"}
    assert all(0.0 <= s.image.min() and s.image.max() <= 1.0 for s in samples)


def test_nnunet_folder_stacks_channels(tmp_path):
    data = load_dataset(nnunet_folder(tmp_path / "Dataset001_Test", n_cases=2, channels=2))
    assert data.modality == "MR" and len(data.cases) == 2
    assert data.cases[0].image.shape == (2, 24, 20, 12)
    assert [o.name for o in data.cases[0].objects] == ["box", "sphere"]


def test_msd_multichannel_4d_image_becomes_channels_first(tmp_path):
    folder = msd_folder(tmp_path / "Task", n_cases=1, spacing=(1.0, 1.0, 1.0))
    image, _ = phantom(seed=0)
    nifti(folder / "imagesTr" / "case_000.nii.gz", np.stack([image, image * 2], axis=-1))
    meta = json.loads((folder / "dataset.json").read_text())
    meta["modality"] = {"0": "FLAIR", "1": "T1w"}
    (folder / "dataset.json").write_text(json.dumps(meta))
    data = load_dataset(folder, strict=True)
    assert data.modality == "MR" and data.cases[0].image.shape == (2, 24, 20, 12)
    assert np.array_equal(data.cases[0].image[1], 2 * image.astype(np.float32))


def test_pairs_folder_png_and_nrrd(tmp_path):
    folder = tmp_path / "pairs"
    folder.mkdir()
    image2d = np.zeros((40, 30), np.uint8)
    image2d[10:20, 5:15] = 200
    png(folder / "cell.png", image2d)
    png(folder / "cell_mask.png", (image2d > 0).astype(np.uint8) * 255)  # 0/255 binary mask
    image3d, label3d = phantom()
    nrrd_file(folder / "vol.nrrd", image3d, (0.5, 0.5, 3.0))
    nrrd_file(folder / "vol_label.nrrd", label3d, (0.5, 0.5, 3.0))
    (folder / "fedpoint.json").write_text(json.dumps({"modality": "CT"}))
    data = load_dataset(folder, strict=True)
    by_id = {c.case_id: c for c in data.cases}
    assert by_id["cell"].image.shape == (1, 40, 30)  # (x, y)
    assert np.array_equal(by_id["cell"].objects[0].mask, image2d > 0)
    assert by_id["vol"].spacing == pytest.approx((0.5, 0.5, 3.0))
    assert len(by_id["vol"].objects) == 2


def test_images_and_labels_subfolders(tmp_path):
    for sub in ("images", "labels"):
        (tmp_path / sub).mkdir()
    image, label = phantom()
    nifti(tmp_path / "images" / "a.nii.gz", image)
    nifti(tmp_path / "labels" / "a.nii.gz", label)
    nifti(tmp_path / "images" / "b.nii.gz", image)  # no label
    data = load_dataset(tmp_path)
    assert [c.case_id for c in data.cases] == ["a"]
    assert data.skipped[0][0].endswith("b.nii.gz") and "no label" in data.skipped[0][1]


# ------------------------------------------------------------------------------ bad input
def _break(folder, case: str, how: str):
    """Damage one case of an MSD folder; returns the file the error must name."""
    image_file = folder / "imagesTr" / f"{case}.nii.gz"
    label_file = folder / "labelsTr" / f"{case}.nii.gz"
    image, label = phantom()
    if how == "truncated":
        data = image_file.read_bytes()
        image_file.write_bytes(data[: len(data) // 3])
        return image_file
    if how == "corrupt":
        image_file.write_bytes(b"this is not a nifti file at all" * 10)
        return image_file
    if how == "shape":
        nifti(label_file, label[:, :, :-2], (0.8, 0.8, 2.5))
    elif how == "spacing":
        nifti(label_file, label, (0.8, 0.8, 5.0))
    elif how == "empty":
        nifti(label_file, np.zeros_like(label), (0.8, 0.8, 2.5))
    elif how == "values":
        label[0, 0, 0] = 7
        nifti(label_file, label, (0.8, 0.8, 2.5))
    elif how == "fractional":
        nifti(label_file, label.astype(np.float32) * 0.5, (0.8, 0.8, 2.5))
    elif how == "missing":
        label_file.unlink()
    return label_file


CASES = {
    "truncated": "cannot be read",
    "corrupt": "cannot be read",
    "shape": "does not match the image shape",
    "spacing": "does not match the image spacing",
    "empty": "empty",
    "values": "unexpected label values [7]",
    "fractional": "not non-negative integers",
    "missing": "listed in dataset.json",
}


HEADER_PROBLEMS = {"corrupt", "shape", "spacing", "missing"}  # seen while listing; the others only in the voxels


@pytest.mark.parametrize("how", sorted(CASES))
def test_bad_case_is_skipped_or_fails_strictly_naming_the_file(tmp_path, how):
    folder = msd_folder(tmp_path / "Task", n_cases=3)
    bad_file = _break(folder, "case_001", how)
    data = load_dataset(folder)
    listed = ["case_000", "case_002"] if how in HEADER_PROBLEMS else ["case_000", "case_001", "case_002"]
    assert [c.case_id for c in data.cases] == listed and len(data.skipped) == (how in HEADER_PROBLEMS)
    samples = make_samples(data, size=(32, 32), min_voxels=10)  # decodes each case: the damage shows now
    assert {s.case_id for s in samples} == {"case_000", "case_002"}
    assert [c.case_id for c in data.cases] == ["case_000", "case_002"]
    assert len(data.skipped) == 1
    file, reason = data.skipped[0]
    assert file == str(bad_file) and CASES[how] in reason
    with pytest.raises(DataError) as err:
        load_dataset(folder, strict=True)
    assert str(bad_file) in str(err.value) and CASES[how] in str(err.value)


def test_dataset_json_pointing_at_missing_image(tmp_path):
    folder = msd_folder(tmp_path / "Task", n_cases=2)
    meta = json.loads((folder / "dataset.json").read_text())
    meta["training"].append({"image": "./imagesTr/ghost.nii.gz", "label": "./labelsTr/ghost.nii.gz"})
    (folder / "dataset.json").write_text(json.dumps(meta))
    data = load_dataset(folder)
    assert len(data.cases) == 2
    assert data.skipped[0][0].endswith("ghost.nii.gz") and "dataset.json" in data.skipped[0][1]
    with pytest.raises(DataError, match="ghost.nii.gz.*listed in dataset.json"):
        load_dataset(folder, strict=True)


def test_broken_dataset_json_and_missing_folder(tmp_path):
    folder = tmp_path / "Task"
    folder.mkdir()
    (folder / "dataset.json").write_text("{not json")
    with pytest.raises(DataError, match="dataset.json: is not valid JSON"):
        load_dataset(folder)
    with pytest.raises(DataError, match="no such folder"):
        load_dataset(tmp_path / "nowhere")


def test_png_label_with_colour_channels_is_rejected(tmp_path):
    from PIL import Image

    png(tmp_path / "x.png", np.full((16, 16), 100, np.uint8))
    Image.fromarray(np.zeros((16, 16, 3), np.uint8) + 1).save(tmp_path / "x_label.png")
    with pytest.raises(DataError, match=r"x_label.png: label has 3 channels"):
        load_dataset(tmp_path, strict=True)


def test_reading_writes_nothing(tmp_path):
    folder = msd_folder(tmp_path / "Task", n_cases=1)
    before = sorted(p for p in tmp_path.rglob("*"))
    load_dataset(folder)
    assert sorted(p for p in tmp_path.rglob("*")) == before
