"""The packaged scenarios where the field sees large gains: each loads, carries its frozen and
local baselines, and routes its sites to the banks the scenario is about."""

from __future__ import annotations

import pytest

from fedpoint.server.routing import GENERAL, banks_to_update, modality_bank, route, task_bank
from fedpoint.simulations.experiment import ExperimentError, experiment_from_dict, load_experiment
from fedpoint.simulations.source_base import SourceBase

SCENARIOS = ("specialise", "label-protocol", "modality-change")


@pytest.mark.parametrize("name", SCENARIOS)
def test_each_scenario_has_its_frozen_and_local_baselines(name):
    config = load_experiment(name)
    assert {"frozen", "local-online"} <= set(config.strategies)
    assert all(site.task for site in config.sites)


def test_class_specialisation_streams_are_long():
    config = load_experiment("specialise")
    assert {config.stream_length(s) for s in config.sites} == {40}
    assert len({s.task for s in config.sites}) == 1


def test_the_label_protocol_groups_get_different_banks():
    config = load_experiment("label-protocol")
    groups = {}
    for site in config.sites:
        groups.setdefault((site.task, site.label_margin), []).append(site)
    assert len(groups) == 2 and all(len(g) == 2 for g in groups.values())
    modality = "microscopy"
    every = {GENERAL, modality_bank(modality)} | {task_bank(s.task) for s in config.sites}
    received = {s.name: route(modality, "banks", every, s.task)[0] for s in config.sites}
    core, margin = (list(g) for g in groups.values())
    assert received[core[0].name] == received[core[1].name] != received[margin[0].name] == received[margin[1].name]
    assert all(b.startswith("task-") for b in received.values())
    # a reply of one convention never updates the other's task bank
    for site in config.sites:
        other = {task_bank(s.task) for s in config.sites if s.task != site.task}
        assert not other & set(banks_to_update(modality, "banks", site.task))


def test_the_change_of_modality_base_is_trained_on_brain_mr_only():
    config = load_experiment("modality-change")
    assert config.source_base is not None and config.source_base.steps <= 1000
    assert {s.dataset for s in config.sites} == {"pyradiomics-lung", "stardist-nuclei"}
    with pytest.raises(ValueError, match="never enter pre-training"):
        SourceBase(sources=["stardist-nuclei"])
    table = {"name": "x", "sites": [{"name": "a", "dataset": "stardist-nuclei", "box": [[0, 256], [0, 512]]},
                                    {"name": "b", "dataset": "stardist-nuclei", "box": [[256, 512], [0, 512]]}],
             "source_base": {"sources": ["pyradiomics-lung"]}}
    with pytest.raises(ExperimentError, match="source_base.sources"):
        experiment_from_dict(table)


def test_a_source_base_is_reused_when_its_card_matches(tmp_path):
    import json

    from fedpoint.simulations.source_base import ensure_source_base

    spec = SourceBase(name="tiny-src", sources=["dipy-t1"], steps=3, batch=2)
    out = spec.path(tmp_path)
    out.parent.mkdir(parents=True)
    out.with_suffix(".safetensors").write_bytes(b"weights")
    out.with_suffix(".json").write_text(json.dumps({"training": {"sources": ["dipy-t1"], "steps": 3, "batch": 2}}))
    assert ensure_source_base(spec, tmp_path) == out
    assert not spec.matches({"training": {"sources": ["dipy-t1"], "steps": 4, "batch": 2}})


def test_the_demo_runs_a_scenario_where_adaptation_should_pay_beside_the_realistic_one():
    demo, full = load_experiment("demo"), load_experiment("demo", full=True)
    assert demo.companions == ["demo-specialise"] and full.companions == ["specialise"]
    for name in (*demo.companions, *full.companions):
        companion = load_experiment(name)
        assert {"frozen", "local-online", "fed-banks"} <= set(companion.strategies)
        assert len({s.task for s in companion.sites}) == 1 and all(s.task for s in companion.sites)
        assert not companion.companions
    assert load_experiment("demo-specialise").stream_length(load_experiment("demo-specialise").sites[0]) >= 16


def test_the_report_shows_each_companions_curves():
    from fedpoint.simulations.report import companions_markdown

    row = {"strategy": "local-online", "metric": "noc90", "n": 16, "seeds": 1, "mean": 6.0, "frozen": 10.0,
           "reduction": 0.4, "reduction_low": 0.2, "reduction_high": 0.55}
    text = "\n".join(companions_markdown([{"name": "demo-specialise", "description": "d", "folder": "demo-specialise",
                                           "seconds": 100.0, "second_half": [row], "headline": {}}]))
    assert "![learning curves of demo-specialise](demo-specialise/learning_curves.png)" in text
    assert "| local-online | NoC@90 | 6.00 vs 10.00 | +40% fewer [+20, +55] | 16 |" in text
