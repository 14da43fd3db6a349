"""How the site service fits an image's channels to the model's: kept when they agree, an RGB(A)
picture turned grey for a one-channel model, every other mismatch refused naming the file."""

from __future__ import annotations

import numpy as np
import pytest

from fedpoint.client.service.images import ImageError, open_image


def _png(path, rows_cols_channels: np.ndarray):
    from PIL import Image

    Image.fromarray(rows_cols_channels).save(path)
    return path


def _nifti(path, array: np.ndarray):
    import nibabel as nib

    nib.save(nib.Nifti1Image(array, np.eye(4)), str(path))
    return path


def _picture(channels: int) -> np.ndarray:
    """30 rows x 40 columns; a patch at rows 10-19, columns 5-14 of colour (200, 180, 160)."""
    picture = np.zeros((30, 40, channels), np.uint8)
    picture[10:20, 5:15, :3] = (200, 180, 160)
    if channels == 4:
        picture[..., 3] = 255
        picture[:, 30:, 3] = 0  # transparent columns: alpha says nothing about intensity
    return picture


@pytest.mark.parametrize("channels", [3, 4])
def test_rgb_and_rgba_pictures_become_luminance_for_a_one_channel_model(tmp_path, channels):
    from PIL import Image

    path = _png(tmp_path / f"photo{channels}.png", _picture(channels))
    loaded = open_image("photo", path, "microscopy", 1, None)
    assert loaded.model_input.shape == (1, 40, 30) and loaded.display.shape == (40, 30)  # (x, y)
    grey = 0.299 * 200 + 0.587 * 180 + 0.114 * 160
    assert loaded.display[7, 12] == pytest.approx(grey, abs=1e-3)  # x = column 7, y = row 12
    assert loaded.display[35, 12] == 0.0  # the transparent, black columns stay black
    pillow = np.asarray(Image.open(path).convert("L"), np.float32).T
    assert np.abs(loaded.display - pillow).max() <= 1.0  # what Pillow calls grey, to its rounding


def test_channels_equal_to_the_model_are_kept(tmp_path):
    picture = np.zeros((30, 40, 3), np.uint8)
    picture[:10, :, 0], picture[20:, :, 2] = 250, 120  # red on top, blue below
    loaded = open_image("photo", _png(tmp_path / "photo.png", picture), "microscopy", 3, None)
    assert loaded.model_input.shape == (3, 40, 30)
    red, blue = loaded.model_input[0], loaded.model_input[2]
    assert red[:, :10].min() > 0.5 and red[:, 20:].max() == 0 and blue[:, 20:].min() > 0.5 and blue[:, :10].max() == 0
    volume = np.random.default_rng(0).normal(100, 10, (12, 10, 6, 2)).astype(np.float32)
    mr = open_image("mr", _nifti(tmp_path / "mr.nii.gz", volume), "MR", 2, None)
    assert mr.model_input.shape == (2, 12, 10, 6)


@pytest.mark.parametrize("name, channels", [("two-sequences.nii.gz", 2), ("three-sequences.nii.gz", 3)])
def test_multi_sequence_nifti_is_refused_by_a_one_channel_model(tmp_path, name, channels):
    volume = np.random.default_rng(1).normal(100, 10, (12, 10, 6, channels)).astype(np.float32)
    path = _nifti(tmp_path / name, volume)
    with pytest.raises(ImageError) as err:
        open_image("mr", path, "MR", 1, None)
    message = str(err.value)
    assert name in message and f"has {channels} channels" in message and "the model takes 1" in message


def test_grey_alpha_picture_and_rgb_for_a_two_channel_model_are_refused(tmp_path):
    from PIL import Image

    grey_alpha = tmp_path / "grey-alpha.png"
    Image.fromarray(_picture(4)[..., [0, 3]], mode="LA").save(grey_alpha)
    with pytest.raises(ImageError, match=r"grey-alpha.png: has 2 channels, the model takes 1"):
        open_image("ga", grey_alpha, "microscopy", 1, None)
    with pytest.raises(ImageError, match=r"photo.png: has 3 channels, the model takes 2"):
        open_image("photo", _png(tmp_path / "photo.png", _picture(3)), "microscopy", 2, None)
