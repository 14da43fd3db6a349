"""Learning curves in results.json: their schema (as docs/results-schema.md states it), their
intervals, and the plot and report section made from them (hand-made records, no model runs)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from fedpoint.simulations.curves import learning_curves
from fedpoint.simulations.plots import learning_curves as plot_curves
from fedpoint.simulations.report import curves_markdown

DOCS = Path(__file__).resolve().parents[2] / "docs" / "results-schema.md"


def _documented_keys(heading: str) -> set[str]:
    """The keys of the table that follows `heading` in docs/results-schema.md."""
    text = DOCS.read_text()
    start = text.index(heading)
    table = next(chunk for chunk in text[start + len(heading):].split("\n\n") if chunk.startswith("| key"))
    keys = set()
    for line in table.splitlines()[2:]:
        keys |= set(re.findall(r"`([a-z_0-9]+)`", line.split("|")[1]))
    return keys


def _images(seeds=(0, 1), length=20, sites=("a", "b")):
    """frozen needs 10 clicks throughout; local-online learns: 10 clicks on the first half, 5 on the second."""
    rng = np.random.default_rng(0)
    out = []
    for seed in seeds:
        for site in sites:
            for i in range(length):
                noise = int(rng.integers(-1, 2))
                for arm, noc in (("frozen", 10 + noise), ("local-online", (10 if i < length // 2 else 5) + noise)):
                    out.append({"strategy": arm, "seed": seed, "site": site, "index": i, "late": False,
                                "noc90": noc, "noc85": noc - 1, "dice1": 0.5 if arm == "frozen" or i < length // 2 else 0.7})
    # a late joiner is not on the curves
    out.append({"strategy": "frozen", "seed": 0, "site": "late", "index": 0, "late": True, "noc90": 99, "noc85": 99,
                "dice1": 0.0})
    return out


def test_curves_follow_the_documented_schema():
    curves = learning_curves(_images())
    assert set(curves) == _documented_keys("## `curves`")
    point_keys = _documented_keys("`points[]`:")
    for p in curves["points"]:
        assert set(p) <= point_keys and {"strategy", "metric", "bin", "mean", "low", "high", "n"} <= set(p)
        assert p["low"] <= p["mean"] <= p["high"]
        assert ("vs_frozen" in p) == (p["strategy"] != "frozen")
    half_keys = _documented_keys("`second_half[]`")
    for row in curves["second_half"]:
        assert set(row) <= half_keys and row["strategy"] != "frozen"
    assert curves["metrics"] == ["noc90", "noc85", "dice1"] and curves["bin_width"] == 3


def test_curves_show_what_the_records_hold():
    curves = learning_curves(_images(), width=5)
    noc = {p["bin"]: p for p in curves["points"] if p["strategy"] == "local-online" and p["metric"] == "noc90"}
    assert noc[0]["n"] == 20 and noc[0]["seeds"] == 2  # 5 images x 2 sites x 2 seeds
    assert abs(noc[0]["vs_frozen"]) < 0.01 and noc[3]["vs_frozen"] == 5.0  # clicks saved on the same images
    assert not any(p["n"] > 20 for p in curves["points"])  # the late joiner's image is left out
    half = {r["metric"]: r for r in curves["second_half"]}
    assert 0.45 < half["noc90"]["reduction_low"] < half["noc90"]["reduction"] < half["noc90"]["reduction_high"] < 0.6
    assert half["dice1"]["gain"] > 0.19 and half["dice1"]["gain_low"] > 0.19
    assert half["noc90"]["n"] == 40


def test_the_curves_are_plotted_and_reported(tmp_path):
    curves = learning_curves(_images())
    path = plot_curves(curves, tmp_path / "learning_curves.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = "\n".join(curves_markdown(curves))
    assert "## Learning curves" in text
    assert re.search(r"\| local-online \| NoC@90 \| 5\.20 vs 10\.20 \| \+49% fewer \[\+4\d, \+5\d\] \| 40 \|", text), text
    assert curves_markdown(learning_curves([r for r in _images() if r["strategy"] == "local-online"])) == []
