"""The federation benchmark runs and reports what the README quotes (small reply counts here)."""

from __future__ import annotations

from fedpoint.benchmarks.federation import run


def test_federation_benchmark_reports_bytes_and_aggregation_costs():
    result = run(repeats=1, counts=(2, 8))
    ratios = result["bytes_ratio_vs_full"]
    assert ratios["full"] == 1.0
    assert ratios["norm"] < ratios["norm+stem"] < 0.05 and ratios["lora-frozen-a"] < ratios["lora-free-a"] < 0.1
    assert result["bytes_per_site_per_round"]["norm"] == 4 * result["parameters_per_site_per_round"]["norm"]
    assert set(result["aggregate_s"]) == {"2", "8"}
    for kind in ("norm", "lora-frozen-a", "lora-free-a", "full"):
        assert all(row["aggregate_s"] >= 0 and row["peak_mb"] >= 0 for row in result["per_kind"][kind].values())
    assert "norm_time_ratio_8_vs_2" in result["growth"]
