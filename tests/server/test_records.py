"""A reply's norm is measured once per delta: kept when only its weight changes, new for a new delta."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from fedpoint.server import records
from fedpoint.server.records import Reply, delta_norm


@pytest.fixture
def counted_norms(monkeypatch):
    calls = []
    original = records.delta_norm

    def counting(delta):
        calls.append(delta)
        return original(delta)

    monkeypatch.setattr(records, "delta_norm", counting)
    return calls


def test_the_norm_is_measured_once_and_kept_while_the_delta_is_the_same(counted_norms):
    reply = Reply("a", "general", {"w": np.full(4, 3.0, np.float32), "b": np.full(1, 4.0, np.float32)}, 2.0, "fp")
    assert reply.norm == pytest.approx(np.sqrt(4 * 9 + 16)) == delta_norm(reply.delta)
    assert reply.norm == reply.norm and len(counted_norms) == 1
    lighter = replace(reply, weight=1.0)  # the screens lower weights with dataclasses.replace
    assert lighter.norm == reply.norm and len(counted_norms) == 1


def test_a_new_delta_is_measured_anew(counted_norms):
    reply = Reply("a", "general", {"w": np.ones(4, np.float32)}, 2.0, "fp")
    assert reply.norm == pytest.approx(2.0)
    clipped = replace(reply, delta={"w": np.full(4, 0.5, np.float32)})
    assert clipped.norm == pytest.approx(1.0) and len(counted_norms) == 2
    assert reply.source == ("general", None) and replace(reply, bank_version=3).source == ("general", 3)
