"""One policy object from the run config: every coordinator setting, frozen, with the old key names accepted."""

from __future__ import annotations

import dataclasses

import pytest

from fedpoint.server.policy import QUERY_TIMEOUT_CAP, CoordinatorPolicy
from fedpoint.shared.run_config import CoordinatorConfig, parse_run_config


def test_the_policy_carries_the_run_config_settings():
    fed = parse_run_config({"bank-routing": "general", "aggregation-rule": "median", "clip-norm": 0.5,
                            "norm-factor": 7.0, "drift-window": 0, "outlier-factor": 2.5, "max-share": 0.4,
                            "round-timeout": 1000.0, "min-train-nodes": 3, "images-per-round": 2},
                           reader=CoordinatorConfig)
    policy = CoordinatorPolicy.from_config(fed)
    assert (policy.routing, policy.aggregation_rule, policy.clip_norm, policy.max_share) == ("general", "median", 0.5, 0.4)
    assert (policy.screen.norm_factor, policy.screen.drift_window, policy.screen.outlier_factor) == (7.0, 0, 2.5)
    assert policy.min_train_nodes == 3 and policy.settings["images"] == 2
    assert policy.query_timeout == QUERY_TIMEOUT_CAP  # a long round does not make the identity query wait as long
    assert policy.evaluate_banks is fed.evaluate_banks and policy.adapter == fed.adapter_config()


def test_bank_strategy_is_still_accepted_as_the_old_name_of_bank_routing():
    assert CoordinatorPolicy.from_config(parse_run_config({"bank-strategy": "general"})).routing == "general"
    with pytest.raises(ValueError, match="bank-routing"):
        parse_run_config({"bank-routing": "fedprox"})


def test_the_policy_is_frozen_and_a_probe_never_waits_longer_than_a_query():
    policy = CoordinatorPolicy(query_timeout=10.0, probe_timeout=30.0)
    assert policy.probe_timeout == 10.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        policy.clip_norm = 1.0
    with pytest.raises(TypeError):
        policy.settings["images"] = 99  # the instruction settings are read-only too


def test_an_override_in_the_old_name_wins_over_pyprojects_new_one():
    """Flower merges `--run-config` over pyproject.toml's table, which now says bank-routing: a user's
    `bank-strategy='general'` must not be silently outvoted by the file's default."""
    import tomllib
    from pathlib import Path

    table = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    assert table["bank-routing"] == "banks"
    assert parse_run_config({**table, "bank-strategy": "general"}).bank_routing == "general"
    assert parse_run_config(table, defaults={"bank-strategy": "general"}).bank_routing == "banks"  # the run config wins
