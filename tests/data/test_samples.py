"""Normalisation, slicing, cropping/resampling and its inverse."""

from __future__ import annotations

import numpy as np
import pytest

from fedpoint.data import Case, LabelledObject, make_samples, normalize, uncrop


def _case(shape=(60, 50, 8), boxes=((slice(20, 30), slice(10, 25)),), modality="MR", z=slice(2, 6)) -> Case:
    rng = np.random.default_rng(0)
    image = rng.uniform(0, 100, (1, *shape)).astype(np.float32)
    objects = []
    for i, box in enumerate(boxes):
        mask = np.zeros(shape, bool)
        mask[(*box, z) if len(shape) == 3 else box] = True
        image[0][mask] += 200
        objects.append(LabelledObject(f"obj{i}", i + 1, mask))
    return Case("c0", image, (1.0,) * len(shape), modality, objects)


def iou(a, b):
    return (a & b).sum() / max(1, (a | b).sum())


# ------------------------------------------------------------------------------ normalize
def test_ct_window_default_and_named():
    hu = np.array([[-2000, -1000, -300, 400, 3000]], np.float32)
    assert normalize(hu, "CT")[0].tolist() == pytest.approx([0, 0, 0.5, 1, 1])
    assert normalize(hu, "CT", window="soft-tissue")[0, 2] == 0.0
    assert normalize(hu, "CT", window=(-1000, 0))[0, 2] == pytest.approx(0.7)
    with pytest.raises(ValueError, match="unknown CT window"):
        normalize(hu, "CT", window="brain-ish")


def test_percentile_scaling_per_channel_and_modality():
    rng = np.random.default_rng(1)
    image = np.stack([rng.normal(0, 1, 10_000), rng.normal(500, 50, 10_000)]).astype(np.float32)
    image[0, 0] = 1e6  # an outlier must not squash the rest
    out = normalize(image, "MR")
    assert out.dtype == np.float32 and out.min() == 0.0 and out.max() == 1.0
    assert 0.4 < np.median(out[0]) < 0.6 and 0.4 < np.median(out[1]) < 0.6
    micro = normalize(image, "microscopy")
    assert (micro[0] == 1.0).mean() == pytest.approx(0.002, abs=0.001)  # top 0.2 % clipped
    assert not normalize(np.ones((1, 5, 5)), "MR").any()  # constant image: zeros, no NaN


# ------------------------------------------------------------------------------ samples
def test_slices_keep_only_large_enough_object_sections():
    case = _case()
    case.objects[0].mask[:, :, 6] = False
    case.objects[0].mask[20:22, 10:12, 6] = True  # 4 voxels: below min_voxels
    samples = make_samples([case], size=(32, 32), min_voxels=20)
    assert [s.crop.index for s in samples] == [2, 3, 4, 5]
    assert all(s.crop.axis == 2 and s.mask.dtype == bool and s.mask.any() for s in samples)
    assert samples[0].image.shape == (1, 32, 32) and samples[0].image.dtype == np.float32


def test_crop_round_trip_is_exact_at_native_scale():
    case = _case()
    for sample in make_samples([case], size=(32, 32)):
        assert sample.crop.scale == 1.0
        back = uncrop(sample.mask, sample.crop)
        assert np.array_equal(back, case.objects[0].mask[:, :, sample.crop.index])
        full = uncrop(sample.mask, sample.crop, to_case=True)
        assert full.shape == case.spatial_shape and full[:, :, sample.crop.index].sum() == back.sum()


def test_large_object_is_downsampled_and_maps_back():
    case = _case(shape=(200, 180, 4), boxes=((slice(30, 170), slice(40, 150)),), z=slice(0, 4))
    sample = make_samples([case], size=(64, 64), max_per_object=1)[0]
    assert sample.crop.scale == pytest.approx(140 * 2 / 64)  # extent 140 with 0.5 margin each side
    assert 0.2 < sample.mask.mean() < 0.35  # the object fills about half of each side
    back = uncrop(sample.mask, sample.crop)
    # 4.4x down and back up: edges move by at most about half an output voxel
    assert iou(back, case.objects[0].mask[:, :, sample.crop.index]) > 0.93


def test_object_at_edge_is_padded_not_shifted():
    case = _case(boxes=((slice(0, 6), slice(0, 6)),))
    sample = make_samples([case], size=(32, 32), min_voxels=1)[0]
    assert sample.crop.start[0] < 0  # the box runs off the image
    assert sample.image[0, 0, 0] == 0.0  # padding
    assert np.array_equal(uncrop(sample.mask, sample.crop), case.objects[0].mask[:, :, sample.crop.index])


def test_max_per_object_picks_evenly_spaced_slices_in_order():
    case = _case(shape=(40, 40, 30), boxes=((slice(10, 20), slice(10, 20)),), z=slice(0, 30))
    samples = make_samples([case], size=(16, 16), max_per_object=4)
    assert [s.crop.index for s in samples] == [0, 10, 19, 29]


def test_split_components_and_axis_choice():
    case = _case(boxes=((slice(5, 15), slice(5, 15)),))
    case.objects[0].mask[40:50, 30:40, 2:6] = True  # a second blob of the same label
    names = {s.object_name for s in make_samples([case], size=(16, 16), split_components=True)}
    assert names == {"obj0#1", "obj0#2"}
    along_x = make_samples([case], size=(16, 16), axis=0, min_voxels=1)
    assert {s.crop.axis for s in along_x} == {0} and along_x[0].crop.grid_shape == (50, 8)


def test_2d_and_3d_cases_without_slicing():
    case2d = _case(shape=(60, 50), z=slice(None))
    case2d.objects[0].mask[...] = False
    case2d.objects[0].mask[20:30, 10:25] = True
    sample = make_samples([case2d], size=(32, 32))[0]
    assert sample.crop.axis is None and np.array_equal(uncrop(sample.mask, sample.crop), case2d.objects[0].mask)
    case3d = _case()
    sample3d = make_samples([case3d], spatial_dims=3, size=(32, 32, 8))[0]
    assert sample3d.image.shape == (1, 32, 32, 8) and sample3d.crop.scale == 1.0
    assert iou(uncrop(sample3d.mask, sample3d.crop), case3d.objects[0].mask) == 1.0
    with pytest.raises(ValueError, match="3 entries"):
        make_samples([case3d], spatial_dims=3, size=(24, 24))


def test_ct_samples_use_the_ct_window():
    case = _case(modality="CT")
    case.image[...] = -1000.0  # air everywhere
    assert make_samples([case], size=(16, 16))[0].image.max() == 0.0
