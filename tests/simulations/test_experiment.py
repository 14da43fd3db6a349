"""Experiment configs: packaged ones load, bad values are refused with the field's name."""

from __future__ import annotations

import pytest

from fedpoint.simulations.experiment import ExperimentError, experiment_from_dict, load_experiment
from fedpoint.simulations.arms import ABLATIONS, DEFAULT_ARMS

SITES = [
    {"name": "a", "dataset": "stardist-nuclei", "shift": "noise", "box": [[0, 256], [0, 512]]},
    {"name": "b", "dataset": "pyradiomics-brain"},
    {"name": "late", "dataset": "stardist-nuclei", "join_round": 1, "box": [[256, 512], [0, 512]]},
]


def config(**fields):
    return experiment_from_dict({"rounds": 2, "sites": SITES, **fields}, source="x.toml")


@pytest.mark.parametrize("name, full", [("demo", True), ("tiny", False)])
def test_packaged_configs_load_with_all_strategies_and_late_joiners(name, full):
    exp = load_experiment(name, full=full)
    assert exp.strategies == list(DEFAULT_ARMS)
    assert exp.late_sites, "every packaged experiment measures cold start"
    assert len({s.modality or s.dataset for s in exp.sites}) >= 2


def test_scenario_configs_load_with_what_they_promise():
    from fedpoint.configs import named_configs

    assert {"data-poor", "modalities", "many-sites"} <= set(named_configs())
    poor = load_experiment("data-poor")
    assert len(poor.sites) >= 8 and all(3 <= poor.stream_length(s) <= 6 for s in poor.sites)
    assert {"local-online", "fed-general", "fed-banks"} <= set(poor.strategies)
    mixed = load_experiment("modalities")
    assert {"pyradiomics-lung", "stardist-nuclei"} <= {s.dataset for s in mixed.sites}
    assert {"mni152", "pyradiomics-brain"} & {s.dataset for s in mixed.sites}  # MR
    many = load_experiment("many-sites")
    assert len(many.sites) >= 50 and many.rounds == 1 and many.size <= 48
    clopa = load_experiment("clopa")  # CLoPA's claims: episodes 1 vs 3, true vs pseudo labels
    assert {"local-episodes-1", "local-episodes-3", "local-episodes-true"} <= set(clopa.strategies)
    assert all(clopa.stream_length(s) >= 15 for s in clopa.sites)
    for name in ("data-poor", "modalities", "many-sites", "clopa"):
        load_experiment(name, full=True)  # --full must load too


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


def test_demo_runs_whole_slices_two_seeds_and_the_arms_its_comparisons_need():
    exp = load_experiment("demo")  # two seeds leave minutes for its companion scenario; --full runs three
    assert exp.whole_slices and len(exp.seeds) >= 2 and len(load_experiment("demo", full=True).seeds) >= 3
    assert exp.clicks == 20
    assert {"frozen", "local-online", "fed-general", "fed-banks", "fed-full"} <= set(exp.strategies)
    assert all(s.whole_slices for s in exp.sites_for_seed(0))  # what the ClientApps rebuild from sites.toml
    assert not any(s.whole_slices for s in config().sites_for_seed(0))  # object crops unless asked


def test_ablation_arms_run_when_asked_for():
    assert not set(ABLATIONS) & set(config().strategies)
    assert set(ABLATIONS) <= set(config(ablations=True).strategies)
    named = config(strategies=["local-online", "local-post"])
    assert named.strategies == ["local-online", "local-post"]


def test_full_overrides_and_keyword_overrides():
    quick = load_experiment("demo")
    full = load_experiment("demo", full=True)
    assert len(full.strategies) > len(quick.strategies) and full.rounds > quick.rounds
    assert full.stream_length(full.sites[0]) > quick.stream_length(quick.sites[0])
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


# ------------------------------------------------------------------------------ disjoint sites
CT = {"dataset": "pyradiomics-lung", "cases": ["lung2"]}


def test_two_sites_on_the_same_slices_are_refused_naming_both_and_the_overlap():
    sites = [{"name": "ct-a", **CT, "slices": [0, 30]}, {"name": "ct-b", **CT, "slices": [10, 40]}, SITES[1]]
    with pytest.raises(ExperimentError) as err:
        config(sites=sites)
    message = str(err.value)
    assert message.startswith("x.toml: sites: sites ct-a and ct-b overlap")
    assert "case lung2 of pyradiomics-lung" in message and "slices 0-29" in message and "slices 10-39" in message


def test_slice_ranges_need_a_gap_of_two_slices():
    touching = [{"name": "ct-a", **CT, "slices": [0, 30]}, {"name": "ct-b", **CT, "slices": [31, 40]}, SITES[1]]
    with pytest.raises(ExperimentError, match="at least 2 slices apart"):
        config(sites=touching)  # one slice between them: too close
    apart = [touching[0], {**touching[1], "slices": [32, 40]}, SITES[1]]
    assert [s.slices for s in config(sites=apart).sites[:2]] == [(0, 30), (32, 40)]


def test_sites_without_a_region_on_a_shared_case_are_refused():
    # no `cases` means every case, no `slices` every slice: the old demo's late joiner
    sites = [{"name": "ct-a", **CT}, {"name": "ct-late", "dataset": "pyradiomics-lung", "join_round": 1}, SITES[1]]
    with pytest.raises(ExperimentError, match="sites ct-a and ct-late overlap: both draw case lung2"):
        config(sites=sites)
    other_patient = [{"name": "ct-a", **CT}, {"name": "ct-b", "dataset": "pyradiomics-lung", "cases": ["lung1"]}, SITES[1]]
    assert len(config(sites=other_patient).sites) == 3


def test_overlapping_pixel_boxes_are_refused_disjoint_tiles_pass():
    tile = {"dataset": "stardist-nuclei"}
    overlapping = [{"name": "n-a", **tile, "box": [[0, 300], [0, 256]]},
                   {"name": "n-b", **tile, "box": [[256, 512], [0, 256]]}, SITES[1]]
    with pytest.raises(ExperimentError, match=r"sites n-a and n-b overlap.*box 0-299 x 0-255.*box 256-511 x 0-255"):
        config(sites=overlapping)
    tiles = [{**overlapping[0], "box": [[0, 256], [0, 256]]}, overlapping[1], SITES[1]]
    assert len(config(sites=tiles).sites) == 3


def test_the_runner_checks_sites_built_in_code_too():
    from fedpoint.data import SiteSpec
    from fedpoint.simulations.experiment import ExperimentConfig
    from fedpoint.simulations.runner import build_experiment_sites

    sites = [{"name": "n-a", "dataset": "stardist-nuclei"}, {"name": "n-b", "dataset": "stardist-nuclei"}]
    unchecked = ExperimentConfig.model_construct(**{**config().model_dump(exclude={"sites"}),
                                                    "sites": [SiteSpec(**s) for s in sites]})
    with pytest.raises(ExperimentError, match="sites n-a and n-b overlap"):
        build_experiment_sites(unchecked, 0)
