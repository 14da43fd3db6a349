"""The tiny experiment end to end through `fedpoint simulate`: real data, real Flower simulation
engine, every strategy; then the results schema, the report and the plots."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedpoint.simulations.arms import DEFAULT_ARMS, IMAGE_KEYS, ROUND_KEYS

ARM_NAMES = DEFAULT_ARMS

FEDPOINT = [str(Path(sys.executable).with_name("fedpoint"))]
HEADLINE_KEYS = ("noc85", "noc90", "dice3", "dice5", "dice_auc", "bytes_per_round", "late_dice3")


@pytest.fixture(scope="session")  # once per worker: two minutes of Flower, never torn down between its tests
def tiny_run(tiny_base_2d, tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny-experiment")
    env = {**os.environ, "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1", "FLWR_TELEMETRY_ENABLED": "0"}
    done = subprocess.run([*FEDPOINT, "simulate", "--config", "tiny", "--out", str(out), "--base", str(tiny_base_2d)],
                          capture_output=True, text=True, timeout=900, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out, done.stdout


@pytest.mark.slow
@pytest.mark.flower
def test_every_strategy_produces_numbers(tiny_run):
    out, stdout = tiny_run
    results = json.loads((out / "results.json").read_text())
    assert results["schema"] == "fedpoint.results/2"
    assert list(results["headline"]) == list(ARM_NAMES)
    sites = {s["name"] for s in results["data"]["sites"]}
    for name in ARM_NAMES:
        mine = [r for r in results["images"] if r["strategy"] == name]
        # 2 regular sites x 2 rounds x 2 images + the late joiner's 1 round x 2 images
        assert len(mine) == 10, name
        assert {r["site"] for r in mine} == sites
        assert all(set(IMAGE_KEYS) <= set(r) for r in mine)
        assert all(0.0 <= r["dice3"] <= 1.0 and 1 <= r["noc90"] <= 20 and len(r["dices"]) == r["clicks"] for r in mine)
        entry = results["headline"][name]
        for key in HEADLINE_KEYS:
            assert isinstance(entry[key], float) and math.isfinite(entry[key]), (name, key)
        late = [r for r in mine if r["late"]]
        assert late and all(r["round"] == 2 for r in late), "the late joiner misses round 1"
    assert all(set(ROUND_KEYS) <= set(r) for r in results["rounds"])
    head = results["headline"]
    for name in ("frozen", "local-online", "local-full", "local-episodes", "local-online+episodes"):
        assert head[name]["bytes_per_round"] == 0
    # the federated strategies measured their payloads; full-model FedAvg moves far more bytes
    assert 0 < head["fed-general"]["bytes_per_round"] == head["fed-banks"]["bytes_per_round"]
    assert head["fed-full"]["bytes_per_round"] > 20 * head["fed-banks"]["bytes_per_round"]
    fed_rounds = [r for r in results["rounds"] if r["strategy"] == "fed-banks" and r["site"] != "nuclei-late"]
    assert sorted({r["round"] for r in fed_rounds}) == [1, 2] and all(r["bytes_up"] > 0 for r in fed_rounds)
    for name in ("fed-general", "fed-banks", "fed-full"):
        # true joining: the late joiner is sampled from round 2 only, gets that round's bank and sends a delta
        joined = [r for r in results["rounds"] if r["strategy"] == name and r["site"] == "nuclei-late"]
        assert [r["round"] for r in joined] == [2] and joined[0]["bytes_up"] > 0 and joined[0]["status"] == "accepted", name
        late = next(f for f in results["federation"] if f["strategy"] == name)["late"]
        assert [(x["site"], x["round"]) for x in late] == [("nuclei-late", 2)], name
    assert {r["bank"] for r in results["rounds"] if r["strategy"] == "fed-full" and r["round"] == 2} == \
        {r["bank"] for r in results["rounds"] if r["strategy"] == "fed-banks" and r["round"] == 2}  # same routing
    assert {t["name"] for t in results["targets"]} == {"noc90-reduction", "late-joiner-dice3", "bytes-vs-full"}
    assert all(t["held"] in (True, False) for t in results["targets"])
    assert results["episodes"], "the episode strategies ran at least one episode"
    assert "fed-banks" in stdout and "report:" in stdout


@pytest.mark.slow
@pytest.mark.flower
def test_report_opens_with_the_table_and_plots(tiny_run):
    out, _ = tiny_run
    report = (out / "report.md").read_text()
    assert report.splitlines()[0].startswith("# fedpoint experiment `tiny`")
    assert report.index("| strategy |") < report.index("## Targets") < report.index("## Plots") < report.index("## Per site")
    assert report.index("| strategy |") < report.index("## Learning curves") < report.index("## Targets")
    for png in ("learning_curves.png", "dice_vs_images.png", "noc90.png", "clicks_saved.png", "bytes_per_round.png"):
        assert f"]({png})" in report
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    assert "## Data" in report and "stardist-nuclei" in report and "subjects" in report
    # the federated evaluation round: each federated arm's sites scored each new bank version
    assert "## Federated evaluation round" in report
    results = json.loads((out / "results.json").read_text())
    scored = [e for run in results["federation"] for banks in run["outcome"]["evaluation"] for e in banks.values()]
    assert scored and all(e["cases"] >= 1 and 0 <= e["dice_auc"] <= 1 for e in scored)


def test_cli_refuses_a_bad_config_naming_the_field(tmp_path):
    from fedpoint.cli import app

    bad = tmp_path / "bad.toml"
    bad.write_text('rounds = 0\n[[sites]]\nname = "a"\ndataset = "stardist-nuclei"\n'
                   '[[sites]]\nname = "b"\ndataset = "stardist-nuclei"\n')
    result = CliRunner().invoke(app, ["simulate", "--config", str(bad), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "bad.toml: rounds:" in result.output
    result = CliRunner().invoke(app, ["simulate", "--config", "no-such-config", "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and "demo" in result.output
    result = CliRunner().invoke(app, ["simulate", "--config", "tiny", "--strategies", "frozen,warp", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "strategies" in result.output and "warp" in result.output
