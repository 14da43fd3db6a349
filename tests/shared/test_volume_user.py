"""The 3D simulated user: interactions over a volume, the next at the largest 3D error, deterministic."""

import numpy as np
import pytest

from fedpoint.shared.clicks import Click
from fedpoint.shared.volume_user import INTERACTION_P95, simulate_volume, volume_metrics


def _two_blobs(shape=(40, 40, 12)):
    """A large and a small box, far apart: the large one is the largest 3D error at the start."""
    gt = np.zeros(shape, bool)
    gt[4:20, 4:20, 2:10] = True     # 16 x 16 x 8
    gt[28:34, 28:34, 4:7] = True    # 6 x 6 x 3
    return gt


class _SliceFiller:
    """A route whose click on slice z marks the truth of the clicked component on z and on its
    neighbours z-1 and z+1 (a crude propagation), and a negative click clears its slice."""

    def __init__(self, gt):
        from scipy import ndimage

        self.gt, self.labels = gt, ndimage.label(gt)[0]
        self.mask = np.zeros_like(gt)

    def __call__(self, click: Click) -> np.ndarray:
        x, y, z = click.point
        label = self.labels[x, y, z]
        for k in range(max(0, z - 1), min(self.gt.shape[2], z + 2)):
            self.mask[..., k] |= (self.labels[..., k] == label) & click.positive
        return self.mask.copy()


def test_each_interaction_goes_to_the_largest_3d_error_and_counts_one():
    gt = _two_blobs()
    steps = simulate_volume(_SliceFiller(gt), gt, budget=10, spacing=(1.0, 1.0, 1.0))
    first = steps[0].click
    assert first.positive and gt[first.point] and first.point[0] < 20, "the first click is in the large blob"
    # a click fills three slices: the large blob's 8 slices need 3 clicks, then the small one's 3 slices 1
    assert len(steps) == 4 and steps[-1].dice == 1.0
    assert [s.click.point[0] < 20 for s in steps] == [True, True, True, False]
    assert all(b.dice > a.dice for a, b in zip(steps, steps[1:]))
    metrics = volume_metrics(steps)
    assert metrics["noc90"] == next(k for k, s in enumerate(steps, 1) if s.dice >= 0.9) <= 4
    assert metrics["dice1"] == steps[0].dice and metrics["dice_auc"] == pytest.approx(np.mean([s.dice for s in steps]))
    assert metrics[INTERACTION_P95] >= 0


def test_the_3d_simulated_user_is_deterministic():
    gt = _two_blobs()
    runs = [simulate_volume(_SliceFiller(gt), gt, budget=6, spacing=(0.7, 0.7, 5.0)) for _ in range(2)]
    assert [(s.click, s.dice) for s in runs[0]] == [(s.click, s.dice) for s in runs[1]]


def test_depth_is_measured_in_millimetres():
    """A slab 10 voxels wide in x, 4 thick slices (5 mm each) in z: at 1 mm in-plane the slab is
    deepest in x's middle; the chosen voxel is the centre of the thick axis too."""
    gt = np.zeros((30, 30, 8), bool)
    gt[10:20, 5:25, 2:6] = True
    steps = simulate_volume(lambda c: np.zeros_like(gt), gt, budget=1, spacing=(1.0, 1.0, 5.0))
    assert steps[0].click.point[0] in (14, 15) and steps[0].click.point[2] in (3, 4)


def test_a_route_that_returns_the_wrong_shape_or_a_2d_mask_is_refused():
    gt = _two_blobs()
    with pytest.raises(ValueError, match="shape"):
        simulate_volume(lambda c: np.zeros((4, 4, 4), bool), gt, budget=2)
    with pytest.raises(ValueError, match="volume"):
        simulate_volume(lambda c: gt[..., 0], gt[..., 0], budget=2)
