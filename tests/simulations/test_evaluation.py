"""`fedpoint evaluate --route propagate|3d`: the same volumes and the same 3D simulated user by both routes."""

import json

import pytest
from typer.testing import CliRunner

from fedpoint.simulations.evaluation import EvaluationSpec, run_evaluation

from test_volumes_pretrain_eval import _msd


@pytest.fixture
def volumes(tmp_path):
    return _msd(tmp_path / "Task01", (0.8, 0.8, 3.0))


def test_both_routes_report_3d_figures_on_the_same_volumes(volumes, tiny_base_2d, tiny_base_3d, tmp_path):
    out = {}
    for route, base in (("propagate", tiny_base_2d), ("3d", tiny_base_3d)):
        out[route] = run_evaluation(EvaluationSpec(data=str(volumes), base=str(base), route=route, mode="frozen",
                                                   clicks=3, images=2), tmp_path / route)
    for route, result in out.items():
        summary = result["summary"]
        assert summary["images"] == 2 and {"dice_auc", "interaction_p95_ms", "noc85", "noc90"} <= set(summary)
        for rec in result["images"]:
            assert rec["route"] == route and 1 <= len(rec["dices"]) <= 3 == len(rec["interaction_ms"]) or rec["dices"][-1] == 1.0
            assert all(len(p) == 3 for p in rec["clicks_at"]), "an interaction is a click on a voxel of the volume"
    assert [r["case_id"] for r in out["propagate"]["images"]] == [r["case_id"] for r in out["3d"]["images"]]
    assert max(n for r in out["propagate"]["images"] for n in r["slices_predicted"]) >= 1


def test_a_route_and_a_base_that_do_not_fit_are_refused(volumes, tiny_base_2d, tiny_base_3d, tmp_path):
    with pytest.raises(ValueError, match="2D base"):
        run_evaluation(EvaluationSpec(data=str(volumes), base=str(tiny_base_3d), route="propagate", clicks=1, images=1),
                       tmp_path / "a")
    with pytest.raises(ValueError, match="3D base"):
        run_evaluation(EvaluationSpec(data=str(volumes), base=str(tiny_base_2d), route="3d", clicks=1, images=1),
                       tmp_path / "b")
    with pytest.raises(ValueError, match="route"):
        EvaluationSpec(data=str(volumes), route="slices")
    with pytest.raises(ValueError, match="needs volumes"):
        run_evaluation(EvaluationSpec(data="stardist-nuclei", route="propagate", clicks=1, images=1), tmp_path / "c")


def test_the_cli_evaluates_volumes_by_route(volumes, tiny_base_2d, tmp_path):
    from fedpoint.cli import app

    result = CliRunner().invoke(app, ["evaluate", "--data", str(volumes), "--base", str(tiny_base_2d), "--route",
                                      "propagate", "--mode", "frozen", "--clicks", "2", "--images", "1", "--json",
                                      "--store", str(tmp_path / "store")])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["images"][0]["route"] == "propagate"
    bad = CliRunner().invoke(app, ["evaluate", "--data", str(volumes), "--route", "sideways"])
    assert bad.exit_code != 0 and "sideways" in bad.output
