"""Millimetres, not voxels: the simulated user and the focus crop on anisotropic grids."""

import numpy as np
import pytest

from fedpoint.shared.clicker import Clicker, check_spacing, deepest_point
from fedpoint.shared.config import ModelConfig
from fedpoint.shared.focus import first_click_window, zoom_window
from fedpoint.shared.clicks import Click

CFG3 = ModelConfig(spatial_dims=3, channels=(8, 16, 32), strides=(2, 2), num_res_units=0, input_size=32)


def _two_boxes():
    """A square of 11 x 11 voxels and a bar of 7 x 31 voxels, apart."""
    region = np.zeros((40, 60), bool)
    region[2:13, 2:13] = True    # deepest in voxels (6)
    region[20:27, 10:41] = True  # 4 voxels deep, but 12 mm when a row is 3 mm
    return region


def test_deepest_point_is_measured_in_millimetres():
    region = _two_boxes()
    assert deepest_point(region)[0] < 13                     # voxels: the square wins
    assert 20 <= deepest_point(region, spacing=(3.0, 1.0))[0] < 27  # 3 mm rows: the bar is deeper


def test_ties_go_to_the_centre_of_the_region():
    region = np.zeros((9, 41), bool)
    region[2:7, 3:38] = True  # every voxel of row 4 from column 5 to 35 is equally deep
    assert deepest_point(region) == (4, 20)


def test_clicker_on_an_anisotropic_box_clicks_the_physical_centre():
    gt = np.zeros((30, 30, 12), bool)
    gt[3:27, 5:25, 2:10] = True  # 24 x 20 x 8 voxels at 1 x 1 x 4 mm: 24 x 20 x 32 mm
    click = Clicker(gt, spacing=(1.0, 1.0, 4.0)).next_click()
    assert click.positive and gt[click.point]
    assert click.point == (14, 14, 5)
    # a false positive far away is clicked negatively once the object is found
    pred = gt.copy()
    pred[0:2, 0:30, :] = True
    nxt = Clicker(gt, spacing=(1.0, 1.0, 4.0)).next_click(pred)
    assert not nxt.positive and nxt.point[0] < 2


def test_deepest_point_in_3d_prefers_the_physically_deeper_part():
    gt = np.zeros((40, 40, 16), bool)
    gt[2:11, 2:11, 2:11] = True      # 9 voxels a side: 5 voxels deep, 5 mm at 1 x 1 x 4 mm
    gt[15:35, 15:35, 12:15] = True   # a 3-slice slab: 2 voxels deep, but 8 mm
    assert deepest_point(gt) == (6, 6, 6)
    x, y, z = deepest_point(gt, spacing=(1.0, 1.0, 4.0))
    assert z == 13 and 22 <= x <= 27 and 22 <= y <= 27  # 8 mm from every face of the slab


@pytest.mark.parametrize("spacing", [(1.0, 0.0, 1.0), (1.0, 1.0), (1.0, float("nan"), 2.0), (-1.0, 1.0, 1.0)])
def test_bad_spacing_is_refused_with_a_clear_message(spacing):
    with pytest.raises(ValueError, match="spacing"):
        check_spacing(spacing, 3)


def test_first_click_window_is_a_cube_in_millimetres():
    w = first_click_window((100, 100, 10), (256, 256, 24), 64, CFG3, spacing=(0.8, 0.8, 4.0))
    assert w.size[0] == w.size[1] and w.size[2] < w.size[0] / 3    # fewer slices than rows
    mm = [n * s / o for n, s, o in zip(w.size, (0.8, 0.8, 4.0), w.out_size)]
    assert max(mm) / min(mm) < 1.25, f"working voxels should be near-cubic in mm, got {mm}"
    assert all(o % CFG3.size_multiple == 0 for o in w.out_size) and max(w.out_size) <= CFG3.input_size
    assert w.contains((100, 100, 10))
    # isotropic spacing is exactly the voxel behaviour
    assert first_click_window((100, 100, 10), (256, 256, 24), 64, CFG3, spacing=(2.0, 2.0, 2.0)) == \
        first_click_window((100, 100, 10), (256, 256, 24), 64, CFG3)


def test_zoom_window_holds_a_thin_slab_object():
    mask = np.zeros((200, 200, 30), bool)
    mask[60:140, 70:130, 12:16] = True
    clicks = [Click((100, 100, 14), True)]
    w = zoom_window(mask, clicks, mask.shape, CFG3, spacing=(0.7, 0.7, 5.0))
    for lo, hi, st, sp in zip((60, 70, 12), (140, 130, 16), w.start, w.stop):
        assert st <= lo and hi <= sp
    assert w.size[2] < 30  # not the whole stack: the box is cubic in mm


def test_a_3d_first_click_window_is_sized_in_millimetres():
    from fedpoint.shared.focus import CONTEXT_MM_3D, FocusConfig

    focus = FocusConfig().resolve(CFG3)
    assert focus.context_for((0.5, 0.5, 2.0)) == round(CONTEXT_MM_3D / 0.5)
    assert focus.context_for((2.0, 2.0, 2.0)) == round(CONTEXT_MM_3D / 2.0)
    assert focus.context_for(None) == focus.context  # no spacing: voxels, as in 2D
    assert FocusConfig(context=40).resolve(CFG3).context_for((0.5, 0.5, 2.0)) == 40  # explicit voxels win
    assert FocusConfig().resolve(ModelConfig()).context_mm is None  # 2D bases stay in voxels
