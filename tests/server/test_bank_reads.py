"""One round's reads of the bank store: each version read and verified once, answers as the store's."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from fedpoint.server.bank_reads import RoundReads
from fedpoint.server.banks import WEIGHTS, BankIntegrityError, BankNotFoundError, BankStore
from fedpoint.server.routing import GENERAL
from fedpoint.shared.config import AdapterConfig

START = {"norm.weight": np.ones(8, np.float32), "norm.bias": np.zeros(8, np.float32)}


@pytest.fixture
def store(tmp_path):
    store = BankStore(tmp_path / "banks")
    store.init_bank(GENERAL, START, "fp", "norm", AdapterConfig(kind="norm"))
    store.write(GENERAL, {k: v + 0.1 for k, v in START.items()}, {"round": 1, "screen": {"max_norm": 0.4}})
    return store


def counting(monkeypatch, store: BankStore) -> Counter:
    """Count the store's verified reads, per (bank, version)."""
    reads, original = Counter(), store.get

    def get(bank, version):
        reads[(bank, int(version))] += 1
        return original(bank, version)

    monkeypatch.setattr(store, "get", get)
    return reads


def test_each_version_is_read_once_and_answers_as_the_store(store, monkeypatch):
    assert store.banks() == [GENERAL]
    reads = counting(monkeypatch, store)
    view = RoundReads(store)
    for _ in range(3):
        assert view.banks() == [GENERAL]
        assert view.latest(GENERAL).version == 2
        assert view.get(GENERAL, 1).manifest["round"] == 0
        assert view.check(GENERAL, 2) is None and view.recent_max_norms(GENERAL, 10) == [0.0, 0.4]
    assert set(reads.values()) == {1}
    with pytest.raises(BankNotFoundError):
        view.get(GENERAL, 9)


def test_a_round_serves_what_it_verified_and_the_next_round_verifies_again(store):
    view = RoundReads(store)
    assert view.latest(GENERAL).version == 2
    weights = store.root / GENERAL / "v0002" / WEIGHTS
    weights.write_bytes(weights.read_bytes()[:-8] + b"\0" * 8)  # damaged on disk after this round read it
    assert view.latest(GENERAL).version == 2
    fresh = RoundReads(store)
    assert fresh.latest(GENERAL).version == 1  # as BankStore.latest: falls back to the last version that verifies
    assert "sha256" in fresh.check(GENERAL, 2)
    with pytest.raises(BankIntegrityError):
        fresh.get(GENERAL, 2)


def test_a_coordinator_round_reads_each_bank_version_once(tiny_base_2d, tmp_path, task_identity, monkeypatch):
    """Send, screen, rebase, aggregate and commit of a round with two modalities and three banks:
    no bank version is read twice (main read them over a hundred times a round)."""
    from test_strategy import delta_like, make_coordinator, received, reply, send

    c = make_coordinator(tiny_base_2d, tmp_path / "fed")
    sites = {1: "MR", 2: "MR", 3: "CT", 4: "CT"}
    msgs = send(c.strategy, sites)
    bank = received(msgs[1])
    c.strategy.aggregate_train(1, [reply(msgs[n], delta_like(bank, n)) for n in sites])
    c.strategy.reads = RoundReads(c.store)  # round 2 starts (configure_train opens a fresh view)
    reads = counting(monkeypatch, c.store)
    msgs = send(c.strategy, sites, server_round=2)
    c.strategy.aggregate_train(2, [reply(msgs[n], delta_like(bank, 10 + n)) for n in sites])
    assert reads and max(reads.values()) == 1, reads
    assert c.store.versions(GENERAL) == [1, 2, 3] and len(c.store.banks()) == 3
