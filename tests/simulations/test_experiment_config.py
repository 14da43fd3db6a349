"""Experiment configs: packaged ones load, bad values are refused with the field's name."""

from __future__ import annotations

import pytest

from fedpoint.simulations.experiment import ExperimentError, experiment_from_dict, load_experiment
from fedpoint.simulations.strategies import STRATEGY_NAMES

SITES = [
    {"name": "a", "dataset": "stardist-nuclei", "shift": "noise"},
    {"name": "b", "dataset": "pyradiomics-brain"},
    {"name": "late", "dataset": "stardist-nuclei", "join_round": 1},
]


def config(**fields):
    return experiment_from_dict({"rounds": 2, "sites": SITES, **fields}, source="x.toml")


@pytest.mark.parametrize("name", ["demo", "tiny"])
def test_packaged_configs_load_with_all_strategies_and_late_joiners(name):
    exp = load_experiment(name)
    assert exp.strategies == list(STRATEGY_NAMES)
    assert exp.late_sites, "every packaged experiment measures cold start"
    assert len({s.modality or s.dataset for s in exp.sites}) >= 2


def test_demo_has_two_modalities_four_sites_and_a_late_joiner_per_modality():
    from fedpoint.data import list_datasets

    exp = load_experiment("demo")
    regular = [s for s in exp.sites if s.join_round == 0]
    assert len(regular) >= 4
    datasets = {s.dataset for s in exp.sites}
    modality = {i.name: i.modality for i in list_datasets()} | {
        "pyradiomics-lung": "CT", "pyradiomics-brain": "MR", "stardist-nuclei": "microscopy", "mni152": "MR"}
    regular_modalities = {s.modality or modality[s.dataset] for s in regular}
    late_modalities = {s.modality or modality[s.dataset] for s in exp.late_sites}
    assert len(regular_modalities) >= 2 and late_modalities == regular_modalities
    assert datasets <= set(modality)


def test_full_overrides_and_keyword_overrides():
    quick = load_experiment("demo")
    full = load_experiment("demo", full=True)
    assert len(full.seeds) > len(quick.seeds)
    assert full.stream_length(full.sites[0]) >= quick.stream_length(quick.sites[0])
    picked = load_experiment("demo", strategies=["fed-banks", "frozen"], seeds=[3])
    assert picked.strategies == ["frozen", "fed-banks"]  # canonical order
    assert picked.seeds == [3]


@pytest.mark.parametrize("fields, where", [
    ({"rounds": 0}, "rounds"),
    ({"strategies": ["frozen", "fed-magic"]}, "strategies"),
    ({"adapter": "huge"}, "adapter"),
    ({"seeds": [0, 0]}, "seeds"),
    ({"clicks": 0}, "clicks"),
    ({"lr": -1}, "lr"),
    ({"adaptation": {"episode_epochs": 0}}, "adaptation"),
    ({"adaptation": {"mode": "frozen"}}, "adaptation"),
    ({"adaptation": {"mid_steps": 3}}, "adaptation"),
    ({"colour": "red"}, "colour"),
])
def test_bad_values_name_the_field(fields, where):
    with pytest.raises(ExperimentError) as err:
        config(**fields)
    message = str(err.value)
    assert message.startswith("x.toml: ")
    assert f"{where}:" in message or f"{where}." in message


def test_adaptation_error_names_the_inner_field():
    with pytest.raises(ExperimentError, match=r"adaptation: episode_epochs: Input should be greater than or equal to 1"):
        config(adaptation={"episode_epochs": 0})


def test_bad_site_names_the_site_index_and_field():
    with pytest.raises(ExperimentError, match=r"sites\.1\.shift"):
        config(sites=[SITES[0], {**SITES[1], "shift": "x-ray-vision"}])


def test_late_joiner_must_join_before_the_last_round():
    with pytest.raises(ExperimentError, match=r"sites\.2\.join_round"):
        config(rounds=1)


def test_two_sites_must_start_in_round_zero():
    with pytest.raises(ExperimentError, match="at least two sites"):
        config(sites=[SITES[0], SITES[2]])


def test_repeated_site_names_are_refused():
    with pytest.raises(ExperimentError, match="repeated: a"):
        config(sites=[SITES[0], SITES[0], SITES[1]])


def test_full_table_may_not_change_sites():
    with pytest.raises(ExperimentError, match=r"full\.sites"):
        experiment_from_dict({"sites": SITES, "full": {"sites": []}}, source="x.toml")


def test_streams_follow_rounds_and_seeds():
    exp = config(rounds=3, images_per_round=4)
    a0, b0, late0 = exp.sites_for_seed(0)
    a1, _, _ = exp.sites_for_seed(1)
    assert (a0.stream_length, late0.stream_length) == (12, 8)  # the late joiner misses one round
    assert a0.seed != a1.seed  # another seed, another order and shift realisation
    capped = config(sites=[{**SITES[0], "stream_length": 5}, SITES[1]], rounds=3, images_per_round=4)
    assert capped.sites_for_seed(0)[0].stream_length == 5


def test_unknown_config_name_lists_the_packaged_ones():
    with pytest.raises(FileNotFoundError, match="demo"):
        load_experiment("no-such-experiment")
