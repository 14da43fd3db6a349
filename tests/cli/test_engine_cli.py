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
