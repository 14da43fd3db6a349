"""Aggregation is exact for linear kinds and exact-up-to-truncation for free LoRA, on real adapters."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedpoint.server.aggregate import (
    aggregate,
    aggregation_rule,
    lora_pairs,
    lora_product,
    round_record,
)
from fedpoint.server.checks import Reply
from fedpoint.shared.adapter_kinds import EXACT_UNDER_SECAGG, adapter_kind
from fedpoint.shared.config import AdapterConfig
from fedpoint.shared.payload import from_numpy, to_numpy

WEIGHTS = [1.0, 3.0, 6.0]


def _site_replies(adapter_state, cfg, scale=0.05):
    """Real site adapters trained (perturbed) from the bank; deltas as the ClientApp computes them."""
    bank_adapter, bank, fingerprint = adapter_state(cfg)
    replies, site_states = [], []
    for i, weight in enumerate(WEIGHTS):
        site, _, _ = adapter_state(cfg)
        rng = np.random.default_rng(i)
        site.load_state({k: v + scale * torch.from_numpy(rng.standard_normal(v.shape).astype(np.float32)) for k, v in site.state().items()})
        delta = to_numpy(site.delta(from_numpy(bank)))
        replies.append(Reply(f"site-{i}", "general", delta, weight, fingerprint))
        site_states.append(to_numpy(site.state()))
    return bank_adapter, bank, replies, site_states


@pytest.mark.parametrize("kind", ["norm", "norm+stem"])
def test_linear_kinds_give_the_weighted_mean_of_site_models(adapter_state, kind):
    bank_adapter, bank, replies, sites = _site_replies(adapter_state, kind)
    new = aggregate(bank, replies, kind)
    total = sum(WEIGHTS)
    for name in bank:
        direct = sum(w * s[name].astype(np.float64) for w, s in zip(WEIGHTS, sites)) / total
        np.testing.assert_allclose(new[name], direct, rtol=0, atol=1e-6)
        assert new[name].dtype == np.float32
    bank_adapter.load_state(from_numpy(new))  # loads into a real adapter unchanged
    assert not np.array_equal(new[name], bank[name])


def test_linear_aggregate_needs_only_the_weighted_sum(adapter_state):
    """What secure aggregation reveals (the weighted sum) gives the same bank."""
    _, bank, replies, _ = _site_replies(adapter_state, "norm")
    total = sum(WEIGHTS)
    summed = {k: sum(r.weight * r.delta[k].astype(np.float64) for r in replies) / total for k in bank}
    from_sum = aggregate(bank, [Reply("sum", "general", summed, 1.0, "")], "norm")
    np.testing.assert_allclose(aggregate(bank, replies, "norm")["model.0.conv.unit0.adn.N.weight"], from_sum["model.0.conv.unit0.adn.N.weight"], atol=1e-7)


def test_frozen_a_lora_averages_the_products_exactly(adapter_state):
    cfg = AdapterConfig(kind="lora", lora_rank=2, lora_freeze_a=True)
    bank_adapter, bank, replies, sites = _site_replies(adapter_state, cfg)
    assert all("lora_B" in k for k in bank)  # only B is shared
    new = aggregate(bank, replies, "lora", cfg)
    frozen_a = {n: p.detach().numpy() for n, p in bank_adapter.net.named_parameters() if "lora_A" in n}
    total = sum(WEIGHTS)
    for a_name, a in frozen_a.items():
        b_name = a_name.replace("lora_A", "lora_B")
        mean_product = sum(w * lora_product(a, s[b_name]) for w, s in zip(WEIGHTS, sites)) / total
        np.testing.assert_allclose(lora_product(a, new[b_name]), mean_product, atol=1e-6)


def test_free_lora_is_the_truncated_svd_of_the_mean_product(adapter_state):
    rank = 2
    cfg = AdapterConfig(kind="lora", lora_rank=rank, lora_freeze_a=False)
    bank_adapter, bank, replies, sites = _site_replies(adapter_state, cfg, scale=0.2)
    new = aggregate(bank, replies, "lora", cfg)
    assert set(new) == set(bank) and all(new[k].shape == bank[k].shape for k in bank)
    total = sum(WEIGHTS)
    checked_full_rank = 0
    for a_name, b_name in lora_pairs(bank):
        mean_product = sum(w * lora_product(s[a_name], s[b_name]) for w, s in zip(WEIGHTS, sites)) / total
        u, s, vt = np.linalg.svd(mean_product, full_matrices=False)
        truncated = (u[:, :rank] * s[:rank]) @ vt[:rank]
        result = lora_product(new[a_name], new[b_name])
        np.testing.assert_allclose(result, truncated, atol=2e-5 * max(1.0, np.abs(truncated).max()))
        assert np.linalg.matrix_rank(result, tol=1e-5) <= rank
        if min(mean_product.shape) > rank:
            assert np.linalg.matrix_rank(result, tol=1e-5) == rank  # the bank keeps its full rank
            # averaging the factors separately would not give the mean product
            naive = lora_product(sum(w * s[a_name] for w, s in zip(WEIGHTS, sites)) / total,
                                 sum(w * s[b_name] for w, s in zip(WEIGHTS, sites)) / total)
            assert np.abs(naive - mean_product).max() > 10 * np.abs(result - truncated).max()
            checked_full_rank += 1
    assert checked_full_rank > 0
    bank_adapter.load_state(from_numpy(new))


def test_free_lora_keeps_learnable_factors_when_nothing_moved(adapter_state):
    """B starts at zero: the mean product is zero, but A must not collapse to zero (dead LoRA)."""
    cfg = AdapterConfig(kind="lora", lora_rank=2, lora_freeze_a=False)
    _, bank, _, _ = _site_replies(adapter_state, cfg)
    zero = [Reply("s", "general", {k: np.zeros_like(v) for k, v in bank.items()}, 1.0, "")]
    new = aggregate(bank, zero, "lora", cfg)
    for a_name, b_name in lora_pairs(bank):
        assert np.abs(lora_product(new[a_name], new[b_name])).max() == 0
        assert np.linalg.norm(new[a_name].reshape(2, -1), axis=1).min() > 0


def test_rules_and_secure_aggregation_table():
    assert EXACT_UNDER_SECAGG == {"norm": True, "norm+stem": True, "full": True, "lora-frozen-a": True, "lora-free-a": False}
    assert adapter_kind("lora").variant(AdapterConfig(kind="lora", lora_freeze_a=False)) == "lora-free-a"
    assert adapter_kind("lora").variant(AdapterConfig(**{"kind": "lora"})) == "lora-frozen-a"
    assert aggregation_rule("norm") == aggregation_rule("lora") == "weighted-mean-of-deltas"
    assert "rank-4" in aggregation_rule("lora", AdapterConfig(kind="lora", lora_freeze_a=False))


def test_refuses_empty_rounds_and_non_positive_weights(adapter_state):
    _, bank, replies, _ = _site_replies(adapter_state, "norm")
    with pytest.raises(ValueError, match="no replies"):
        aggregate(bank, [], "norm")
    with pytest.raises(ValueError, match="positive"):
        aggregate(bank, [Reply("s", "general", replies[0].delta, 0.0, "")], "norm")


def test_round_record_weights_metrics_by_cases():
    replies = [Reply("a", "general", {}, 1.0, "", {"dice1": 0.2}), Reply("b", "general", {}, 3.0, "", {"dice1": 0.6, "nof": 2})]
    record = round_record(5, replies, [(Reply("c", "general", {}, 1.0, ""), "bad")])
    assert record["round"] == 5 and record["sites"] == ["a", "b"]
    assert record["counts"] == {"replies": 3, "accepted": 2, "rejected": 1, "accepted_cases": 4.0}
    assert record["metrics"]["dice1"] == pytest.approx(0.5)
    assert record["metrics"]["nof"] == pytest.approx(2.0)


VARIANT_CONFIGS = {
    "norm": AdapterConfig(kind="norm"),
    "norm+stem": AdapterConfig(kind="norm+stem"),
    "full": AdapterConfig(kind="full"),
    "lora-frozen-a": AdapterConfig(kind="lora", lora_rank=2),
    "lora-free-a": AdapterConfig(kind="lora", lora_rank=2, lora_freeze_a=False),
}


@pytest.mark.parametrize("variant", list(VARIANT_CONFIGS))
def test_each_kinds_rules_are_what_aggregation_does(adapter_state, variant):
    """The kind's stated rules (linear, exact under secure aggregation, the manifest string) hold
    on real adapters: a linear kind gives the weighted mean of the site models, and one exact under
    secure aggregation gives the same bank from the weighted sum of the deltas alone."""
    cfg = VARIANT_CONFIGS[variant]
    rules = adapter_kind(cfg.kind)
    assert rules.variant(cfg) == variant and set(VARIANT_CONFIGS) == set(EXACT_UNDER_SECAGG)
    _, bank, replies, sites = _site_replies(adapter_state, cfg)
    new = aggregate(bank, replies, cfg.kind, cfg)
    total = sum(WEIGHTS)
    mean_of_models = {k: sum(w * s[k].astype(np.float64) for w, s in zip(WEIGHTS, sites)) / total for k in bank}
    is_mean = all(np.allclose(new[k], mean_of_models[k], rtol=0, atol=1e-6) for k in bank)
    summed = {k: sum(r.weight * r.delta[k].astype(np.float64) for r in replies) / total for k in bank}
    from_sum = aggregate(bank, [Reply("sum", "general", summed, 1.0, "")], cfg.kind, cfg)
    same_from_sum = all(np.allclose(new[k], from_sum[k], rtol=0, atol=1e-6) for k in bank)
    assert is_mean is rules.is_linear(cfg)
    assert same_from_sum is rules.exact_under_secure_aggregation(cfg) is EXACT_UNDER_SECAGG[variant]
    assert aggregation_rule(cfg.kind, cfg) == rules.aggregation(cfg)
    assert rules.aggregation(cfg).startswith("weighted-mean-of-deltas" if rules.is_linear(cfg) else "weighted-mean-of-lora-products")


def test_the_rules_are_a_registry_of_named_variants(monkeypatch):
    from fedpoint.server import aggregate as A

    assert A.RULES == ("weighted-mean", "trimmed-mean", "median")
    assert [A.rule_named(n).name for n in A.RULES] == list(A.RULES)
    assert A.aggregation_rule("norm", rule="trimmed-mean", trim=0.1) == "coordinate-trimmed-mean-0.1-of-deltas"
    assert not A.exact_under_secure_aggregation("norm", rule="median") and A.exact_under_secure_aggregation("norm")
    with pytest.raises(ValueError, match="unknown aggregation rule 'mean'"):
        A.check_rule("mean", "norm")
    with pytest.raises(ValueError, match="needs a linear adapter"):
        A.check_rule("median", "lora", AdapterConfig(kind="lora", lora_freeze_a=False))

    class Largest(A.CoordinateRule):  # a new rule is one small class in the registry, no switch to edit
        name = "largest"

        def describe(self, kind, cfg, trim):
            return "coordinate-max-of-deltas"

        def center(self, stack, trim):
            return stack.max(axis=0)

    monkeypatch.setitem(A.AGGREGATION_RULES, "largest", Largest())
    bank = {"w": np.zeros(3, np.float32)}
    replies = [Reply(f"s{i}", "general", {"w": np.array(d, np.float32)}, 1.0, "") for i, d in
               enumerate([[1, 0, 0], [0, 2, 0], [0, 0, 3]])]
    np.testing.assert_array_equal(aggregate(bank, replies, "norm", rule="largest")["w"], [1, 2, 3])
    assert A.aggregation_rule("norm", rule="largest") == "coordinate-max-of-deltas"
