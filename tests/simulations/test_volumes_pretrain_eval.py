"""3D pre-training and 3D evaluation on small volumes written to disk."""

import json
from dataclasses import replace

import numpy as np
import pytest

from fedpoint.shared.config import ModelConfig
from fedpoint.simulations.evaluation import EvaluationSpec, run_evaluation
from fedpoint.simulations.objects import ObjectSampler, SamplerConfig
from fedpoint.simulations.pretrain import pretrain
from fedpoint.simulations.pretrain_config import PRETRAIN3D_DEFAULTS

from test_pretrain import _volume

TINY3D = ModelConfig(arch="unet", spatial_dims=3, channels=(4, 8, 16), strides=(2, 2), num_res_units=0, input_size=16)


def test_3d_draws_are_volumes_with_the_click_inside_and_deterministic():
    vol = _volume()
    vol.spacing = (1.0, 1.0, 2.0)
    cfg = SamplerConfig(size=16, spatial_dims=3, synthetic=0.3, min_pixels=20, spacing_mm=1.5, context_range=(1.0, 2.0))
    a = ObjectSampler([vol], cfg, seed=1).batch(8)
    b = ObjectSampler([vol], cfg, seed=1).batch(8)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.image, y.image)
    for d in a:
        assert d.image.shape == (1, 16, 16, 16) and d.mask.shape == (16, 16, 16)
        assert d.mask[d.click] and 0.0 <= d.image.min() and d.image.max() <= 1.0
    assert {"synthetic", "test"} <= {d.source for d in a}


def test_a_3d_sampler_refuses_to_run_without_volumes():
    vol = _volume()
    vol.image, vol.labels = vol.image[:, :, 0], vol.labels[:, :, 0]
    with pytest.raises(ValueError, match="at least one image"):
        ObjectSampler([vol], SamplerConfig(size=16, spatial_dims=3, synthetic=0.0))


@pytest.mark.slow
def test_3d_pretraining_writes_a_3d_base_and_its_card(tmp_path):
    vols = [_volume(0), _volume(1)]
    for v in vols:
        v.spacing = (1.5, 1.5, 1.5)
    cfg = replace(PRETRAIN3D_DEFAULTS, steps=3, batch=2, max_clicks=3, val_objects=2, val_clicks=2, threads=1,
                  min_voxels=20, seed=3)
    card = pretrain(cfg, tmp_path / "b3", TINY3D, images=vols, dev_images=vols[:1])
    saved = json.loads((tmp_path / "b3.json").read_text())
    assert saved["model"]["spatial_dims"] == 3 and "--spatial-dims 3" in card["reproduce"]
    assert card["validation"]["dev_split_crops"]["objects"] == 2
    with pytest.raises(ValueError, match="2D but the training config asks for 3D"):
        pretrain(cfg, tmp_path / "bad", ModelConfig(), images=vols, dev_images=vols)


def _msd(root, spacing):
    import nibabel as nib

    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    training = []
    for i in range(2):
        vol = _volume(i)
        name = f"case_{i}.nii.gz"
        affine = np.diag([*spacing, 1.0])
        nib.save(nib.Nifti1Image(vol.image.astype(np.float32), affine), str(root / "imagesTr" / name))
        nib.save(nib.Nifti1Image(vol.labels.astype(np.uint8), affine), str(root / "labelsTr" / name))
        training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
    (root / "dataset.json").write_text(json.dumps({
        "name": "Vol", "modality": {"0": "MR"}, "labels": {"0": "background", "1": "a", "2": "b"},
        "numTraining": 2, "training": training}))
    return root


@pytest.mark.slow
def test_evaluate_with_a_3d_base_annotates_whole_volumes(tiny_base_3d, tmp_path):
    data = _msd(tmp_path / "Task01", (0.8, 0.8, 3.0))
    out = run_evaluation(EvaluationSpec(data=str(data), base=str(tiny_base_3d), mode="mid+post", clicks=2, images=3),
                         tmp_path / "store")
    assert out["summary"]["images"] == 3
    first = out["images"][0]["windows"][0]
    assert len(first["size"]) == 3 and first["size"][2] < first["size"][0]  # 3D windows, cubic in mm


def test_evaluate_takes_the_first_click_cube_in_mm(tiny_base_3d, tmp_path):
    """`context_mm` is how bench/base_eval.py compares first-click cubes on the dev volumes."""
    data = _msd(tmp_path / "Task01", (1.0, 1.0, 2.0))
    sides = {}
    for mm in (12.0, 20.0):
        out = run_evaluation(EvaluationSpec(data=str(data), base=str(tiny_base_3d), mode="frozen", clicks=1, images=1,
                                            context_mm=mm), tmp_path / f"store{mm:g}")
        sides[mm] = out["images"][0]["windows"][0]["size"]
    # a cube in mm: 12 mm is 12 voxels in-plane and 6 slices at 2 mm (clipped where the volume is smaller)
    assert sides[12.0][0] < sides[20.0][0] and sides[12.0][2] <= sides[12.0][0] // 2 + 1


def test_evaluate_with_a_3d_base_refuses_2d_data(tiny_base_3d, tmp_path):
    with pytest.raises(ValueError, match="no volumes|3D"):
        run_evaluation(EvaluationSpec(data="stardist-nuclei", base=str(tiny_base_3d), mode="frozen", clicks=1, images=1),
                       tmp_path / "store")


def test_a_3d_experiment_defaults_to_the_3d_base_and_builds_whole_volume_sites(tiny_base_3d, tiny_base_2d):
    from fedpoint.simulations.experiment import ExperimentError, experiment_from_dict, load_experiment
    from fedpoint.simulations.runner import build_experiment_sites

    assert load_experiment("demo3d").base == "base3d"
    table = {"name": "vol", "spatial_dims": 3, "rounds": 1, "images_per_round": 1, "base": str(tiny_base_3d),
             "sites": [{"name": "a", "dataset": "pyradiomics-lung", "cases": ["lung1"]},
                       {"name": "b", "dataset": "pyradiomics-breast"}]}
    config = experiment_from_dict(table)
    sites, _ = build_experiment_sites(config, seed=0)
    for site in sites:
        sample = site.samples[0]
        assert sample.image.ndim == 4 and sample.spacing is not None and len(sample.spacing) == 3
    with pytest.raises(ExperimentError, match="is 2D"):
        build_experiment_sites(experiment_from_dict({**table, "base": str(tiny_base_2d)}), seed=0)
