"""3D annotation: sessions on anisotropic volumes through the focus crop, and bad 3D input."""

import numpy as np
import pytest

from fedpoint.client.engine import SiteEngine
from fedpoint.client.stream import annotate
from fedpoint.client.session import InputError
from fedpoint.shared.config import AdaptationConfig, AdapterConfig


def _volume(shape=(48, 40, 10)):
    """A slab-like object (an ellipsoid flattened along the thick axis), as on 5 mm CT."""
    grid = np.indices(shape).astype(np.float32)
    centre = np.array(shape) / 2
    radii = np.array([12.0, 10.0, 3.0])
    mask = (((grid - centre[:, None, None, None]) / radii[:, None, None, None]) ** 2).sum(0) <= 1
    rng = np.random.default_rng(0)
    image = 0.2 + 0.05 * rng.standard_normal(shape) + 0.5 * mask
    return image[None].astype(np.float32), mask


@pytest.fixture
def engine(tiny_base_3d, tmp_path):
    return SiteEngine.create(str(tiny_base_3d), AdapterConfig(kind="norm"), AdaptationConfig(mode="mid+post"),
                             tmp_path / "store", background_episodes=False)


def test_a_click_on_one_slice_changes_the_mask_on_its_neighbours(engine):
    image, mask = _volume()
    session = engine.open(image, "vol", spacing=(0.8, 0.8, 4.0))
    point = tuple(int(c) for c in np.argwhere(mask).mean(0).round())
    out = session.click(point, True)
    assert out.shape == mask.shape and out[point]
    window = session.steps[-1].window
    assert window.size[2] < window.size[0], "the window counts fewer thick slices than fine rows"
    assert window.scale[2] > window.scale[0], "thick slices are upsampled to near-cubic working voxels"
    # one 3D prediction: the mask reaches the slices next to the clicked one (the click rule alone
    # would mark a single voxel of one slice)
    k = point[2]
    assert out[..., k - 1].any() or out[..., k + 1].any()
    session.click(point, True)
    assert session.mask.shape == mask.shape
    assert session.accept().shape == mask.shape


def test_the_simulated_user_annotates_a_volume_in_millimetres(engine):
    image, mask = _volume()
    rec = annotate(engine, image, mask, clicks=3, case_id="vol", spacing=(0.8, 0.8, 4.0))
    assert len(rec["dices"]) >= 1 and 0.0 <= rec["dice1"] <= 1.0
    assert rec["windows"][0]["size"][2] < rec["windows"][0]["size"][0]


@pytest.mark.parametrize("shape", [(48, 40), (1, 48, 40)])
def test_a_2d_image_given_to_a_3d_base_gets_a_clear_error(engine, shape):
    with pytest.raises(InputError, match="3D base|3D image"):
        engine.open(np.random.default_rng(0).random(shape).astype(np.float32))


@pytest.mark.parametrize("spacing", [(0.8, 0.0, 4.0), (0.8, 0.8)])
def test_missing_or_zero_spacing_is_refused(engine, spacing):
    image, _ = _volume()
    with pytest.raises(InputError, match="spacing"):
        engine.open(image, spacing=spacing)
