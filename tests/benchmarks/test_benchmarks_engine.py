"""The engine benchmark's JSON has the fields the issue promises (no timing is asserted here)."""

import json

from typer.testing import CliRunner

from fedpoint.cli import app


def test_engine_bench_json_schema():
    result = CliRunner().invoke(app, ["bench", "engine", "--json", "--size", "64", "--repeats", "5", "--no-volumes"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    for key in ("forward_ms", "click_to_mask_ms", "click_to_mask_512_ms"):
        assert set(data[key]) == {"p50", "p95"} and data[key]["p95"] >= data[key]["p50"] > 0
    kinds = {"norm", "norm+stem", "lora", "full"}
    assert set(data["step_ratio_vs_full"]) == kinds and data["step_ratio_vs_full"]["full"] == 1.0
    assert set(data["bytes_ratio_vs_full"]) == kinds and data["bytes_ratio_vs_full"]["full"] == 1.0
    assert data["bytes_ratio_vs_full"]["norm"] < data["bytes_ratio_vs_full"]["norm+stem"] < 1.0
    assert isinstance(data["targets"]["norm_bytes_le_1pct"], bool)
    assert data["click_to_mask_512"]["clicks"] >= 20 and data["click_to_mask_512"]["mode"] == "mid+post"
    assert data["click_to_mask_3d_ms"] is None  # --no-volumes


def test_3d_click_to_mask_is_timed_on_a_96_crop_and_a_128_volume():
    from fedpoint.benchmarks.engine import click_to_mask_3d

    data = click_to_mask_3d("cpu", clicks=2)
    for label, side in (("crop96", 96), ("volume128", 128)):
        d = data[label]
        assert d["p95"] >= d["p50"] > 0 and d["clicks"] == 2 and d["ratio_to_forward"]["p50"] > 0
        assert [side] * 3 in d["windows"]  # the first click's window (a large mask can widen later ones)
        assert max(d["working_size"]) <= 64


def test_the_replay_judges_cost_per_accept_is_timed_beside_the_post_update(tiny_base_2d):
    from fedpoint.benchmarks.engine import accept_cost
    from fedpoint.shared.model import load_base

    net, cfg, _ = load_base(tiny_base_2d)
    data = accept_cost(net, cfg, "cpu", accepts=2)
    assert data["accepts"] == 2 and data["judge_cases"] >= 1
    assert data["judge_ms"]["p95"] >= data["judge_ms"]["p50"] > 0 and data["post_ms"]["p50"] > 0
    assert data["judge_to_post_ratio"]["p50"] > 0
