"""The claim the engine exists for, on real images: online adaptation beats the frozen model.

Fluorescence nuclei under a strong scanner shift; the same stream, the same simulated user:
`mid+post` at the kind's default learning rate must raise mean Dice@3 above frozen. With the
current base (frozen Dice@3 0.733 here, against 0.504 for the previous one) the measured gain is
small, +1.4 points (0.747): a strong base leaves less to adapt. If the updates did nothing (no
gradient, wrong parameters) the two would be equal and this fails; a wrong sign makes it worse.
"""

import numpy as np
import pytest

from fedpoint.client.engine import SiteEngine
from fedpoint.client.stream import run_stream
from fedpoint.data import SiteSpec, build_site
from fedpoint.shared.config import AdaptationConfig


@pytest.fixture(scope="module")
def shifted_nuclei():
    site = build_site(SiteSpec(name="scanner-b-nuclei", dataset="stardist-nuclei", shift="scanner-b", stream_length=16),
                      size=(96, 96))
    assert len(site.samples) == 16 and site.modality == "microscopy"
    return site.samples


def _mean_dice3(mode, samples, clicks=5):
    engine = SiteEngine.create(None, "norm", AdaptationConfig(mode=mode))
    return float(np.mean([r["dice3"] for r in run_stream(engine, samples, clicks)]))


@pytest.mark.slow
def test_mid_post_beats_frozen_on_shifted_real_images(shifted_nuclei):
    frozen = _mean_dice3("frozen", shifted_nuclei)
    adapted = _mean_dice3("mid+post", shifted_nuclei)
    assert adapted > frozen + 0.005, f"mid+post Dice@3 {adapted:.3f} vs frozen {frozen:.3f}"


@pytest.mark.slow
def test_episodes_mode_runs_on_the_cache_of_real_images(shifted_nuclei, tmp_path):
    cfg = AdaptationConfig(mode="episodes", episode_min_cases=5, episode_epochs=2, episode_iters=5)
    engine = SiteEngine.create(None, "norm", cfg, tmp_path, campaign_size=12, background_episodes=False)
    records = run_stream(engine, shifted_nuclei[:10], clicks=3)
    assert len(records) == 10 and len(engine.scheduler.results) >= 1
    assert engine.store.case_ids() and sum(len(v) for v in engine.store.splits().values()) >= 5
