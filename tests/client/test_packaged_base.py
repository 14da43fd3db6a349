"""The packaged base on real images it never trained on, through the path the site service uses:
whole slices at native resolution and the focus crop."""

from __future__ import annotations

import numpy as np
import pytest

from fedpoint.client.engine import SiteEngine
from fedpoint.client.stream import run_stream
from fedpoint.shared.config import AdaptationConfig


@pytest.fixture(scope="module")
def nuclei_full_slices():
    from fedpoint.data import full_slice_samples, load_dataset

    samples = full_slice_samples(load_dataset("stardist-nuclei"))
    order = np.random.default_rng(0).permutation(len(samples))
    picked = [samples[i] for i in order[:12]]
    assert all(s.image.shape[1:] == (512, 512) for s in picked)
    return picked


@pytest.mark.slow
def test_packaged_base_segments_real_nuclei_on_the_full_field_within_five_clicks(nuclei_full_slices):
    engine = SiteEngine.create(None, "norm", AdaptationConfig(mode="frozen"))
    assert engine.model.model_cfg.arch == "dynunet", "the packaged base is the full-resolution DynUNet"
    records = run_stream(engine, nuclei_full_slices, clicks=5)
    dice5 = float(np.mean([r["dice5"] for r in records]))
    assert dice5 >= 0.8, f"mean Dice@5 {dice5:.3f} on 12 real nuclei (512 x 512 field)"


def test_a_click_on_background_gives_a_mask_not_an_error(nuclei_full_slices):
    engine = SiteEngine.create(None, "norm", AdaptationConfig(mode="mid+post"))
    sample = nuclei_full_slices[0]
    background = np.argwhere(~sample.mask & (sample.image[0] <= np.percentile(sample.image[0], 5)))[0]
    session = engine.open(sample.image)
    mask = session.click(tuple(int(i) for i in background), positive=False)  # on dark background
    assert mask.shape == (512, 512) and not mask[tuple(background)]
    mask = session.click(tuple(int(i) for i in background), positive=True)  # and as a positive click
    assert mask[tuple(background)], "a positive click's pixel is always in the mask"
