"""The online guard on a real stream where the old default learning rate (1e-2 for `norm`, the
default before the guard) makes the packaged base clearly worse than frozen (pyradiomics-lung
under scanner-b, 12 object crops, 5 clicks: frozen Dice@3 0.773, unguarded mid+post 0.624).

Measured with the guard: 0.688. The guard removes about 40% of the harm, not all of it (the
issue's bar, "at or above frozen", is missed at this learning rate: docs/engine.md). The test pins
what is true: the stream is harmful without the guard, the guard recovers a clear part of it, and
at the kind's default learning rate (1e-3, chosen on the dev split) mid+post stays within one
Dice@3 point of frozen."""

import numpy as np
import pytest

from fedpoint.client.engine import SiteEngine
from fedpoint.client.stream import run_stream
from fedpoint.shared.config import AdaptationConfig
from fedpoint.simulations.evaluation import EvaluationSpec, load_stream

# found by scanning the built-in datasets and the demo's shifts with the packaged base (docs/engine.md)
STREAM = dict(data="pyradiomics-lung", shift="scanner-b", images=12, size=96, seed=0)
OLD_DEFAULT_LR = 1e-2


@pytest.fixture(scope="module")
def stream():
    samples, _ = load_stream(EvaluationSpec(**STREAM))
    return samples


def _dice3(samples, mode, guard=True, lr=OLD_DEFAULT_LR):
    engine = SiteEngine.create(None, "norm", AdaptationConfig(mode=mode, lr=lr, guard=guard))
    return float(np.mean([r["dice3"] for r in run_stream(engine, samples, clicks=5)]))


@pytest.mark.slow
def test_the_guard_holds_back_a_harmful_learning_rate(stream):
    frozen = _dice3(stream, "frozen")
    unguarded = _dice3(stream, "mid+post", guard=False)
    guarded = _dice3(stream, "mid+post", guard=True)
    assert unguarded < frozen - 0.05, f"the stream no longer shows the harm: unguarded {unguarded:.3f}, frozen {frozen:.3f}"
    assert guarded > unguarded + 0.03, f"the guard recovered too little: {guarded:.3f} vs unguarded {unguarded:.3f}"


@pytest.mark.slow
def test_at_the_default_learning_rate_online_updates_stay_within_a_point_of_frozen(stream):
    frozen = _dice3(stream, "frozen")
    adapted = _dice3(stream, "mid+post", lr=None)
    assert adapted >= frozen - 0.01, f"mid+post {adapted:.3f} vs frozen {frozen:.3f}"
