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


@pytest.fixture(scope="module")
def lung_full_slices():
    from fedpoint.data import full_slice_samples, load_dataset

    samples = full_slice_samples(load_dataset("pyradiomics-lung"))
    order = np.random.default_rng(1).permutation(len(samples))
    return [samples[i] for i in order[:8]]


def test_a_box_on_a_real_slice_gives_the_boxed_structure(nuclei_full_slices, lung_full_slices):
    """The packaged base takes a box: its mask holds the structure and stays near the box."""
    from fedpoint.shared.metrics import dice
    from fedpoint.shared.simulated_user import tight_box

    engine = SiteEngine.create(None, "norm", AdaptationConfig(mode="frozen"))
    assert engine.model.model_cfg.takes_box, "the packaged 2D base was trained with box prompts"
    scores = []
    for sample in [*nuclei_full_slices[:6], *lung_full_slices[:6]]:
        box = tight_box(sample.mask)
        mask = engine.open(sample.image).box(box.lo, box.hi)
        margin = [max(3, (h - l) // 5) for l, h in zip(box.lo, box.hi)]
        near = np.zeros_like(mask)
        near[tuple(slice(max(0, l - m), h + m) for l, h, m in zip(box.lo, box.hi, margin))] = True
        assert not (mask & ~near).any(), "the box's mask stays in the box's neighbourhood"
        scores.append(dice(mask, sample.mask))
    assert float(np.mean(scores)) >= 0.7, f"mean Dice after the box {np.mean(scores):.3f} on 12 real structures"
