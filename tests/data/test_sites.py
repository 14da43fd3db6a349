"""Shifts, site specs from TOML, building sites and the contact sheet."""

from __future__ import annotations

import numpy as np
import pytest
from fpdata_files import msd_folder

from fedpoint.data import SHIFTS, DataError, SiteSpec, apply_shift, build_site, build_sites, contact_sheet, load_site_specs


@pytest.fixture(scope="module")
def image2d():
    x, y = np.mgrid[0:48, 0:40]
    disk = (x - 24) ** 2 + (y - 20) ** 2 < 150
    return (0.1 + 0.4 * x / 47 + 0.4 * disk)[None].astype(np.float32)  # a gradient with a bright disk


@pytest.mark.parametrize("shift", sorted(SHIFTS))
def test_every_shift_is_deterministic_and_keeps_shape_and_range(image2d, shift):
    a = apply_shift(image2d, shift, seed=5)
    assert a.shape == image2d.shape and a.dtype == np.float32
    assert 0.0 <= a.min() and a.max() <= 1.0
    assert np.array_equal(a, apply_shift(image2d, shift, seed=5))
    if shift != "none":
        assert not np.allclose(a, image2d, atol=1e-3), "a shift must change the image"


@pytest.mark.parametrize("shift", ["noise", "bias", "gamma-high", "scale"])
def test_random_shifts_vary_with_the_seed(image2d, shift):
    assert not np.allclose(apply_shift(image2d, shift, 1), apply_shift(image2d, shift, 2))


def test_shifts_work_on_3d_images():
    volume = np.random.default_rng(0).uniform(0, 1, (1, 16, 16, 8)).astype(np.float32)
    for shift in ("scanner-b", "scanner-c", "lowres", "blur"):
        assert apply_shift(volume, shift, 0).shape == volume.shape


def test_unknown_shift_lists_known_ones(image2d):
    with pytest.raises(ValueError, match="unknown shift 'fog'.*gamma-low"):
        apply_shift(image2d, "fog", 0)


CONFIG = """
rounds = 5                 # keys of the wider experiment config are ignored
[model]
size = 64

[[sites]]
name = "a"
dataset = "{data}"
cases = ["case_000", "case_001"]
shift = "none"
order = "sorted"

[[sites]]
name = "b"
dataset = "{data}"
cases = ["case_002"]
objects = ["sph*"]
shift = "scanner-b"
seed = 7
stream_length = 3
join_round = 2
"""


def test_sites_from_toml_build_with_shift_order_and_filters(tmp_path):
    data = msd_folder(tmp_path / "Task", n_cases=3)
    config = tmp_path / "exp.toml"
    config.write_text(CONFIG.format(data=data.as_posix()))
    specs = load_site_specs(config)
    assert [s.name for s in specs] == ["a", "b"] and specs[1].join_round == 2
    a, b = build_sites(specs, size=(32, 32))
    assert a.modality == "CT" and a.case_ids == ["case_000", "case_001"]
    keys = [(s.case_id, s.object_name, s.crop.index) for s in a.samples]
    assert keys == sorted(keys)  # "sorted" keeps (case, object, slice) order
    assert len(b.samples) == 3 and {s.object_name for s in b.samples} == {"sphere"}
    again = build_site(specs[1], size=(32, 32))
    assert all(np.array_equal(x.image, y.image) for x, y in zip(b.samples, again.samples))
    unshifted = build_site(specs[1].model_copy(update={"shift": "none"}), size=(32, 32))
    assert not np.allclose(b.samples[0].image, unshifted.samples[0].image)

    sheet = contact_sheet([a, b], tmp_path / "sheet.png", per_site=3)
    assert sheet.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and sheet.stat().st_size > 5_000


def test_site_spec_errors_name_the_file_and_field(tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text('[[sites]]\nname = "a"\ndataset = "x"\n\n[[sites]]\nname = "b"\ndataset = "x"\nshift = "fog"\n')
    with pytest.raises(DataError, match=r"bad.toml: sites\[1\].shift: .*unknown shift 'fog'"):
        load_site_specs(config)
    config.write_text('[[sites]]\nname = "a"\n')
    with pytest.raises(DataError, match=r"sites\[0\].dataset: Field required"):
        load_site_specs(config)
    config.write_text('title = "no sites"\n')
    with pytest.raises(DataError, match="defines no sites"):
        load_site_specs(config)
    config.write_text("[[sites]\n")
    with pytest.raises(DataError, match="not valid TOML"):
        load_site_specs(config)


def test_site_errors_for_unknown_cases_objects_and_duplicate_names(tmp_path):
    data = msd_folder(tmp_path / "Task", n_cases=1).as_posix()
    with pytest.raises(DataError, match="no cases"):
        build_site(SiteSpec(name="a", dataset=data, cases=["nope"]))
    with pytest.raises(DataError, match="no object matches"):
        build_site(SiteSpec(name="a", dataset=data, objects=["liver"]))
    with pytest.raises(ValueError, match="unique"):
        build_sites([SiteSpec(name="a", dataset=data), SiteSpec(name="a", dataset=data)])


# ------------------------------------------------------------------------------ regions and overlap
def _volume_dataset():
    from fedpoint.data import Case, Dataset, LabelledObject

    image = np.random.default_rng(0).uniform(0, 1, (1, 32, 32, 20)).astype(np.float32)
    blob = np.zeros((32, 32, 20), bool)
    blob[8:20, 8:20, :] = True  # an object on every slice
    return Dataset("vol", "MR", [Case("v1", image, (1.0, 1.0, 1.0), "MR", [LabelledObject("blob", 1, blob)])])


def _field_dataset():
    from fedpoint.data import Case, Dataset, LabelledObject

    image = np.random.default_rng(1).uniform(0, 1, (1, 64, 64)).astype(np.float32)
    objects = []
    for k, (x, y) in enumerate([(8, 8), (40, 8), (8, 40), (40, 40), (28, 28)]):  # the last straddles x = 32
        m = np.zeros((64, 64), bool)
        m[x:x + 8, y:y + 8] = True
        objects.append(LabelledObject(f"cell-{k}", k + 1, m))
    return Dataset("field", "microscopy", [Case("f", image, (1.0, 1.0), "microscopy", objects)])


def test_slices_keep_only_samples_from_the_range():
    data = _volume_dataset()
    site = build_site(SiteSpec(name="a", dataset="vol", slices=[5, 12], order="sorted"), size=(16, 16), dataset=data)
    assert sorted(s.crop.index for s in site.samples) == list(range(5, 12))
    with pytest.raises(DataError, match="slices applies to volumes"):
        build_site(SiteSpec(name="b", dataset="field", slices=[0, 3]), size=(16, 16), dataset=_field_dataset())


def test_a_box_crops_the_case_and_leaves_out_the_objects_it_cuts():
    data = _field_dataset()
    site = build_site(SiteSpec(name="a", dataset="field", box=[[0, 32], [0, 64]], order="sorted"), size=(16, 16),
                      dataset=data)
    assert [s.object_name for s in site.samples] == ["cell-0", "cell-2"]  # cell-4 is cut by x = 32
    assert all(s.crop.grid_shape == (32, 64) for s in site.samples)  # pixels outside the box are never seen
    with pytest.raises(DataError, match="no whole object"):
        build_site(SiteSpec(name="b", dataset="field", box=[[60, 64], [60, 64]]), size=(16, 16), dataset=data)


def test_whole_slices_keep_native_slices_and_boxes_with_the_same_selection():
    volume = _volume_dataset()
    spec = dict(name="a", dataset="vol", slices=[5, 12], order="sorted")
    crops = build_site(SiteSpec(**spec), size=(16, 16), dataset=volume)
    whole = build_site(SiteSpec(**spec, whole_slices=True), size=(16, 16), dataset=volume)
    assert [s.crop.index for s in whole.samples] == [s.crop.index for s in crops.samples]  # same slices
    assert all(s.image.shape == (1, 32, 32) and s.mask.shape == (32, 32) for s in whole.samples)
    assert all(s.mask[8:20, 8:20].all() and s.mask.sum() == 144 for s in whole.samples)  # the object, in place
    field = build_site(SiteSpec(name="b", dataset="field", box=[[0, 32], [0, 64]], whole_slices=True,
                                order="sorted"), size=(16, 16), dataset=_field_dataset())
    assert [s.object_name for s in field.samples] == ["cell-0", "cell-2"]
    assert all(s.image.shape == (1, 32, 64) for s in field.samples)  # the whole box, nothing outside it


def test_a_built_stream_saves_and_loads_unchanged(tmp_path):
    from fedpoint.data import load_site_stream, save_site_stream

    spec = SiteSpec(name="a", dataset="vol", slices=[5, 12], shift="noise", seed=3)
    site = build_site(spec, size=(16, 16), dataset=_volume_dataset())
    save_site_stream(site, tmp_path)
    again = load_site_stream(tmp_path, spec)
    assert (again.name, again.modality, again.shift) == ("a", "MR", "noise")
    for x, y in zip(site.samples, again.samples, strict=True):
        assert np.array_equal(x.image, y.image) and np.array_equal(x.mask, y.mask)
        assert (x.crop, x.case_id, x.object_name, x.spacing) == (y.crop, y.case_id, y.object_name, y.spacing)
    assert load_site_stream(tmp_path, SiteSpec(name="other", dataset="vol")) is None


def test_check_disjoint_names_both_sites_and_the_overlap():
    from fedpoint.data.sites import SiteOverlapError, check_disjoint

    a = SiteSpec(name="a", dataset="vol", slices=[0, 10])
    with pytest.raises(SiteOverlapError, match=r"sites a and b overlap: both draw every case of vol, a: slices 0-9"):
        check_disjoint([a, SiteSpec(name="b", dataset="vol", slices=[9, 20])])
    with pytest.raises(SiteOverlapError, match="at least 2 slices apart"):
        check_disjoint([a, SiteSpec(name="b", dataset="vol", slices=[11, 20])])
    check_disjoint([a, SiteSpec(name="b", dataset="vol", slices=[12, 20])])
    check_disjoint([SiteSpec(name="b", dataset="vol", box=[[0, 16], [0, 32]]),  # disjoint boxes, any slices
                    SiteSpec(name="c", dataset="vol", slices=[0, 10], box=[[16, 32], [0, 32]])])
    check_disjoint([SiteSpec(name="a", dataset="vol", cases=["v1"]), SiteSpec(name="b", dataset="vol", cases=["v2"])])
    check_disjoint([SiteSpec(name="a", dataset="vol"), SiteSpec(name="b", dataset="other")])
    with pytest.raises(ValueError, match="lo < hi"):
        SiteSpec(name="a", dataset="vol", slices=[5, 5])
