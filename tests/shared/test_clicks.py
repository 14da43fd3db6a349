import numpy as np
import pytest

from fedpoint.shared.clicker import Clicker, deepest_point, error_components
from fedpoint.shared.clicks import Click, check_point, encode_clicks


@pytest.mark.parametrize("shape", [(32, 40), (16, 18, 20)])
def test_encoding_peaks_at_click_and_is_truncated(shape):
    point = tuple(s // 2 for s in shape)
    maps = encode_clicks([Click(point, True)], shape, sigma=2.0)
    assert maps.shape == (2, *shape)
    assert maps[0][point] == pytest.approx(1.0)
    assert maps[1].max() == 0.0
    far = tuple(p + 5 for p in point)  # beyond 3 sigma = 6 voxels (Euclidean)
    assert maps[0][far] == 0.0
    near = tuple(p + 1 for p in point)
    assert 0.0 < maps[0][near] < 1.0


def test_overlapping_clicks_do_not_exceed_one_and_negatives_go_to_their_channel():
    maps = encode_clicks([Click((10, 10), True), Click((11, 10), True), Click((3, 3), False)], (24, 24), sigma=3.0)
    assert maps[0].max() <= 1.0 + 1e-6
    assert maps[1][3, 3] == pytest.approx(1.0)


def test_click_outside_the_image_is_refused_with_the_shape_in_the_message():
    with pytest.raises(ValueError, match="outside the image"):
        check_point((40, 2), (32, 32))
    with pytest.raises(ValueError, match="finite"):
        check_point((float("nan"), 2), (32, 32))
    with pytest.raises(ValueError, match="coordinates"):
        check_point((4, 2, 1), (32, 32))


def test_deepest_point_is_the_centre_of_a_square():
    region = np.zeros((21, 21), bool)
    region[5:16, 5:16] = True
    assert deepest_point(region) == (10, 10)


def test_clicker_clicks_the_largest_error_and_sets_its_sign():
    gt = np.zeros((40, 40), bool)
    gt[5:25, 5:25] = True            # 400 voxels missed: false negative
    pred = np.zeros_like(gt)
    pred[30:35, 30:35] = True        # 25 voxels false positive
    click = Clicker(gt).next_click(pred)
    assert click.positive and click.point == (14, 14)
    pred2 = gt.copy()
    pred2[28:38, 28:38] = True       # only a false positive remains
    click2 = Clicker(gt).next_click(pred2)
    assert not click2.positive and pred2[click2.point] and not gt[click2.point]


def test_clicker_returns_none_for_a_perfect_mask_and_refuses_bad_masks():
    gt = np.zeros((10, 10), bool)
    gt[2:5, 2:5] = True
    assert Clicker(gt).next_click(gt) is None
    with pytest.raises(ValueError, match="empty"):
        Clicker(np.zeros((5, 5)))
    with pytest.raises(ValueError, match="binary"):
        Clicker(np.full((5, 5), 3))


def test_random_clicker_is_seeded_and_stays_inside_the_error_3d():
    gt = np.zeros((10, 12, 14), bool)
    gt[2:8, 3:9, 4:10] = True
    a = [Clicker(gt, "random", seed=3).next_click(None) for _ in range(2)]
    assert a[0] == a[1] and gt[a[0].point] and a[0].positive
    b = Clicker(gt, "random", seed=4).next_click(None)
    assert gt[b.point]


def test_error_components_are_sorted_and_limited():
    gt = np.zeros((30, 30), bool)
    gt[0:10, 0:10] = True
    gt[20:23, 20:23] = True
    comps = error_components(np.zeros_like(gt), gt, limit=1)
    assert len(comps) == 1 and comps[0][0].sum() == 100
    assert [c[0].sum() for c in error_components(np.zeros_like(gt), gt)] == [100, 9]


def test_mask_bounds_are_the_voxels_first_and_last_index_per_axis():
    from fedpoint.shared.clicker import mask_bounds

    rng = np.random.default_rng(3)
    for shape in ((30, 41), (12, 17, 9)):
        for density in (0.002, 0.3):
            m = rng.random(shape) < density
            m.flat[rng.integers(m.size)] = True
            idx = np.nonzero(m)
            lo, hi = mask_bounds(m)
            assert lo.tolist() == [int(i.min()) for i in idx] and hi.tolist() == [int(i.max()) for i in idx]
        assert mask_bounds(np.zeros(shape, np.uint8)) is None
    assert mask_bounds(np.pad(np.ones((1, 1, 1), np.float32), ((2, 3), (0, 4), (5, 0))))[0].tolist() == [2, 0, 5]
