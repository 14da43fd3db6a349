"""The online guard on a real stream where the old default learning rate (1e-2 for `norm`, the
default before the guard) makes the packaged base worse than frozen: with the guard, mid+post
stays at or above frozen; without it, it falls below. If the guard stopped rolling back harmful
updates, the first assertion fails; if the stream stopped being harmful, the second does."""

import numpy as np
import pytest

from fedpoint.client.engine import SiteEngine
from fedpoint.client.evaluate import run_stream
from fedpoint.shared.config import AdaptationConfig
from fedpoint.simulations.evaluation import EvaluationSpec, load_stream

# found by scanning the built-in datasets and the demo's shifts with the packaged base (docs/engine.md)
STREAM = dict(data="DATASET", shift="SHIFT", images=12, size=96, seed=0)
OLD_DEFAULT_LR = 1e-2


@pytest.fixture(scope="module")
def stream():
    samples, _ = load_stream(EvaluationSpec(**STREAM))
    return samples


def _dice3(samples, mode, guard=True):
    engine = SiteEngine.create(None, "norm", AdaptationConfig(mode=mode, lr=OLD_DEFAULT_LR, guard=guard))
    return float(np.mean([r["dice3"] for r in run_stream(engine, samples, clicks=5)]))


@pytest.mark.slow
def test_the_guard_keeps_a_harmful_learning_rate_from_making_the_site_worse(stream):
    frozen = _dice3(stream, "frozen")
    guarded = _dice3(stream, "mid+post", guard=True)
    unguarded = _dice3(stream, "mid+post", guard=False)
    assert guarded >= frozen - 0.005, f"guarded {guarded:.3f} < frozen {frozen:.3f}"
    assert unguarded < frozen - 0.01, f"the stream no longer shows the harm: unguarded {unguarded:.3f}, frozen {frozen:.3f}"
