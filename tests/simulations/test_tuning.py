"""Choosing defaults on the dev split: the ablation's paired statistics, its arms and its guard rails."""

import numpy as np
import pytest
from pydantic import ValidationError

from fedpoint.shared.adapter_kinds import adapter_kind
from fedpoint.simulations.evaluation import EvaluationSpec
from fedpoint.simulations.tuning import ABLATION_ARMS, _ablation_spec, _paired_rows, main


def _records(noc90, dice=0.5):
    return [{"case_id": f"c{i}", "noc90": n, "noc85": n - 1, "dice1": dice, "dice3": dice + 0.1, "guard_rejected": 1}
            for i, n in enumerate(noc90)]


def test_paired_rows_measure_the_second_half_against_frozen():
    frozen = _records([10] * 20)
    arm = _records([10] * 10 + [8] * 10, dice=0.6)  # the second half needs two clicks fewer
    row = _paired_rows(arm, frozen)
    assert row["whole"]["noc90"]["change"] == pytest.approx(-1.0)
    second = row["second"]
    assert second["noc90"]["change"] == pytest.approx(-2.0) and second["noc90"]["high"] == pytest.approx(-2.0)
    assert second["noc90_saved"]["change"] == pytest.approx(0.2)
    assert second["dice1"]["change"] == pytest.approx(0.1)
    assert row["rejected"] == 20


def test_paired_rows_interval_covers_zero_when_nothing_changes_on_average():
    rng = np.random.default_rng(0)
    frozen = _records(list(rng.integers(5, 15, 40)))
    arm = _records([r["noc90"] + d for r, d in zip(frozen, np.tile([-1, 1], 20))])
    cell = _paired_rows(arm, frozen)["second"]["noc90"]
    assert cell["low"] < 0 < cell["high"]


def test_paired_rows_refuse_streams_that_differ():
    arm = _records([5, 5])
    arm[1]["case_id"] = "other"
    with pytest.raises(RuntimeError, match="another stream"):
        _paired_rows(arm, _records([5, 5]))


def test_each_arm_is_a_valid_change_from_the_defaults():
    common = {"mode": "mid+post", "data": "dev-split", "images": 2, "clicks": 2, "seed": 0, "base": None, "size": 64}
    assert _ablation_spec(ABLATION_ARMS["lr-x3"], common)["lr"] == pytest.approx(3 * adapter_kind("norm").lr)
    for name, arm in ABLATION_ARMS.items():
        spec = EvaluationSpec(**_ablation_spec(arm, common))
        changed = {k for k, v in spec.model_dump().items() if v != EvaluationSpec(**common).model_dump()[k]}
        assert bool(changed) == (name != "defaults"), name


def test_tune_takes_adaptation_fields_and_refuses_the_rest():
    assert EvaluationSpec(data="dev-split", tune={"judge": True, "mid_steps": 3}).tune == {"judge": True, "mid_steps": 3}
    with pytest.raises(ValidationError, match="nope"):
        EvaluationSpec(data="dev-split", tune={"nope": 1})
    with pytest.raises(ValidationError, match="lr: a field of the spec"):
        EvaluationSpec(data="dev-split", tune={"lr": 1e-3})
    with pytest.raises(ValidationError, match="mid_steps"):
        EvaluationSpec(data="dev-split", tune={"mid_steps": -1})


def test_ablations_run_on_the_dev_split_only(capsys):
    with pytest.raises(SystemExit):
        main(["ablation", "--data", "stardist-nuclei"])
    assert "dev split only" in capsys.readouterr().err
