"""`fedpoint evaluate` on a Medical Segmentation Decathlon folder the test writes itself."""

import json

import nibabel as nib
import numpy as np
from typer.testing import CliRunner

from fedpoint.cli import app


def _write_msd(root, cases=3):
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    training = []
    rng = np.random.default_rng(0)
    for i in range(cases):
        grid = np.indices((40, 40, 6)).astype(np.float32)
        label = (((grid[0] - 20 - i) / 9) ** 2 + ((grid[1] - 18) / 7) ** 2 <= 1).astype(np.uint8)
        image = (100 + 300 * label.astype(np.float32) + 20 * rng.standard_normal(label.shape)).astype(np.int16)
        affine = np.diag([0.8, 0.8, 3.0, 1.0])
        nib.save(nib.Nifti1Image(image, affine), root / "imagesTr" / f"spleen_{i}.nii.gz")
        nib.save(nib.Nifti1Image(label, affine), root / "labelsTr" / f"spleen_{i}.nii.gz")
        training.append({"image": f"./imagesTr/spleen_{i}.nii.gz", "label": f"./labelsTr/spleen_{i}.nii.gz"})
    (root / "dataset.json").write_text(json.dumps({
        "name": "Spleen", "modality": {"0": "CT"}, "labels": {"0": "background", "1": "spleen"},
        "numTraining": cases, "training": training,
    }))


def test_msd_folder_runs_through_evaluate(tmp_path, tiny_base_2d):
    _write_msd(tmp_path / "Task09_Spleen")
    out = tmp_path / "eval.json"
    result = CliRunner().invoke(app, [
        "evaluate", "--data", str(tmp_path / "Task09_Spleen"), "--base", str(tiny_base_2d), "--mode", "mid+post",
        "--clicks", "3", "--size", "32", "--images", "4", "--out", str(out),
    ])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert len(data["images"]) == 4
    assert all(len(r["dices"]) >= 1 and 0.0 <= r["dice3"] <= 1.0 for r in data["images"])
    assert data["summary"]["images"] == 4 and "noc90" in data["summary"]
    assert "mid+post" in result.output


def test_evaluate_names_the_bad_option(tmp_path, tiny_base_2d):
    result = CliRunner().invoke(app, ["evaluate", "--data", str(tmp_path), "--mode", "sometimes", "--base", str(tiny_base_2d)])
    assert result.exit_code == 2
    assert "mode" in result.output


def _write_two_blobs(root, shape=(160, 150, 3)):
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    grid = np.indices(shape).astype(np.float32)
    label = ((((grid[0] - 40) / 12) ** 2 + ((grid[1] - 40) / 10) ** 2 <= 1)
             | (((grid[0] - 120) / 10) ** 2 + ((grid[1] - 110) / 14) ** 2 <= 1)).astype(np.uint8)
    image = (100 + 300.0 * label + 20 * np.random.default_rng(0).standard_normal(shape)).astype(np.int16)
    nib.save(nib.Nifti1Image(image, np.eye(4)), root / "imagesTr" / "blobs_0.nii.gz")
    nib.save(nib.Nifti1Image(label, np.eye(4)), root / "labelsTr" / "blobs_0.nii.gz")
    (root / "dataset.json").write_text(json.dumps({
        "name": "Blobs", "modality": {"0": "CT"}, "labels": {"0": "background", "1": "blob"}, "numTraining": 1,
        "training": [{"image": "./imagesTr/blobs_0.nii.gz", "label": "./labelsTr/blobs_0.nii.gz"}],
    }))


def test_full_slice_samples_are_whole_slices_one_per_component(tmp_path):
    from fedpoint.data import full_slice_samples, load_dataset, make_samples, uncrop

    _write_two_blobs(tmp_path / "Task01_Blobs")
    dataset = load_dataset(str(tmp_path / "Task01_Blobs"))
    whole = full_slice_samples(dataset, split_components=True)
    assert len(whole) == 2 * 3  # two components on each of three slices
    assert all(s.image.shape == (1, 160, 150) and s.mask.shape == (160, 150) for s in whole)
    assert {s.object_name.split("#")[-1] for s in whole} == {"1", "2"}
    first = whole[0]
    assert np.array_equal(uncrop(first.mask, first.crop), first.mask)  # the crop is the identity
    assert len(full_slice_samples(dataset)) == len(make_samples(dataset, size=(32, 32))) == 3


def test_evaluate_full_slice(tmp_path, tiny_base_2d):
    _write_two_blobs(tmp_path / "Task01_Blobs")
    out = tmp_path / "eval.json"
    result = CliRunner().invoke(app, [
        "evaluate", "--data", str(tmp_path / "Task01_Blobs"), "--base", str(tiny_base_2d), "--mode", "mid+post",
        "--clicks", "2", "--images", "2", "--full-slice", "--split-components", "--out", str(out),
    ])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert data["spec"]["full_slice"] and len(data["images"]) == 2
    assert set(data["summary"]) >= {"dice1", "dice3", "noc85", "noc90", "nof", "predict_ms", "update_ms", "images"}
    assert "Dice@3" in result.output and "mid+post" in result.output
