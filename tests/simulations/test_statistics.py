"""Paired comparisons: schema, intervals that contain their estimate, and verdicts on intervals."""

import numpy as np
import pytest

from fedpoint.simulations.statistics import bootstrap_ci, comparisons, verdict


def _images(effect=0.1, n=30, noise=0.05, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        base = rng.uniform(0.3, 0.7)
        for strategy, value in (("frozen", base), ("fed-banks", base + effect + rng.normal(0, noise)),
                                ("local-online", base + effect / 2 + rng.normal(0, noise))):
            rows.append({"strategy": strategy, "seed": i % 3, "site": f"s{i % 2}", "index": i, "late": False,
                         "shifted": True, "join_round": 0, "round": 1, "dice3": value, "dice5": value,
                         "noc90": 20 * (1 - value)})
    return rows


def test_comparisons_have_the_schema_and_intervals_contain_the_paired_mean():
    comps = comparisons(_images())
    assert {(c["a"], c["b"]) for c in comps} >= {("fed-banks", "frozen"), ("fed-banks", "local-online")}
    for c in comps:
        assert set(c) >= {"a", "b", "metric", "scope", "mean_diff", "ci_low", "ci_high", "n"}
        assert c["ci_low"] <= c["mean_diff"] <= c["ci_high"] and c["n"] == 30
    d3 = next(c for c in comps if (c["a"], c["b"], c["metric"]) == ("fed-banks", "frozen", "dice3"))
    assert d3["mean_diff"] == pytest.approx(0.1, abs=0.03) and d3["ci_low"] > 0.05


def test_the_interval_is_wide_when_the_effect_is_noise():
    x = np.random.default_rng(1).normal(0, 1, 40)
    y = np.random.default_rng(2).normal(0, 1, 40)
    est, low, high = bootstrap_ci(x, y)
    assert low < 0 < high and low < est < high


def test_verdicts_judge_the_whole_interval():
    assert verdict(0.06, 0.2, 0.05) == "held"
    assert verdict(0.01, 0.2, 0.05) == "unresolved"
    assert verdict(-0.2, 0.02, 0.05) == "refuted"
    assert verdict(-1.0, 0.3, 0.5, higher_is_better=False) == "held"
    assert verdict(0.6, 1.0, 0.5, higher_is_better=False) == "refuted"
