"""Real adapters on the tiny random base, and replies made from them as a site would."""

from __future__ import annotations

import numpy as np
import pytest

from fedpoint.server.checks import Reply
from fedpoint.shared.payload import to_numpy


@pytest.fixture(scope="session")
def tiny_model(tiny_base_2d):
    from fedpoint.shared.model import base_fingerprint, load_base

    model, _, _ = load_base(tiny_base_2d)
    return model, base_fingerprint(model)


def trained_state(bank_state: dict, seed: int, scale: float = 0.01) -> dict[str, np.ndarray]:
    """A site's adapter after "training": the bank's state plus seeded noise."""
    rng = np.random.default_rng(seed)
    return {k: (v + scale * rng.standard_normal(v.shape)).astype(np.float32) for k, v in bank_state.items()}


def make_reply(bank_state: dict, fingerprint: str, site: str, seed: int, weight: float = 4.0, scale: float = 0.01) -> Reply:
    trained = trained_state(bank_state, seed, scale)
    delta = {k: (trained[k] - bank_state[k]).astype(np.float32) for k in bank_state}
    return Reply(site_id=site, bank="general", delta=delta, weight=weight, fingerprint=fingerprint, metrics={"dice1": 0.5, "num-examples": weight})


@pytest.fixture(name="make_reply")
def make_reply_fixture():
    return make_reply


@pytest.fixture(name="trained_state")
def trained_state_fixture():
    return trained_state


@pytest.fixture
def adapter_state(tiny_model):
    """(adapter, its state as numpy, fingerprint) for a kind or an AdapterConfig."""
    from fedpoint.shared.adapters import make_adapter

    model, fingerprint = tiny_model

    def build(cfg="norm"):
        adapter = make_adapter(model, cfg, fingerprint)
        return adapter, to_numpy(adapter.state()), fingerprint

    return build
