"""An experiment's volume route: whole volumes annotated by propagation with the 2D base."""

import numpy as np
import pytest

from fedpoint.simulations.experiment import ExperimentError, experiment_from_dict, load_experiment


def _table(base, **fields):
    return {"name": "vol", "spatial_dims": 3, "rounds": 1, "images_per_round": 1, "clicks": 2,
            "sites": [{"name": "a", "dataset": "pyradiomics-lung", "cases": ["lung1"]},
                      {"name": "b", "dataset": "pyradiomics-breast"}], **({"base": str(base)} if base else {}), **fields}


def test_the_propagation_route_takes_the_2d_base_and_refuses_what_it_cannot_annotate(tiny_base_2d, tiny_base_3d):
    from fedpoint.simulations.runner import build_experiment_sites

    packaged = load_experiment("volumes-propagate")
    assert packaged.route == "propagate" and packaged.base is None and packaged.base_dims == 2
    assert experiment_from_dict(_table(None)).base == "base3d"  # no route: volumes keep the 3D base
    with pytest.raises(ExperimentError, match="spatial_dims = 3"):
        experiment_from_dict({**_table(None, route="propagate"), "spatial_dims": 2})
    sites, _ = build_experiment_sites(experiment_from_dict(_table(tiny_base_2d, route="propagate")), seed=0)
    assert all(s.samples[0].image.ndim == 4 for s in sites)  # whole volumes for a 2D base
    with pytest.raises(ExperimentError, match="route = 'propagate' but base .* is 3D"):
        build_experiment_sites(experiment_from_dict(_table(tiny_base_3d, route="propagate")), seed=0)


def test_a_local_arm_on_the_propagation_route_annotates_volumes_and_learns_from_their_slices(
        tiny_base_2d, blob, tmp_path):
    """Interactions counted on the 3D mask; the online arm's 2D adapter changes from the user slices
    it accepted, the frozen one's never."""
    from fedpoint.data import SiteSpec, build_site
    from fedpoint.data.types import Case, Dataset, LabelledObject
    from fedpoint.simulations.arms import ARMS, annotate_site

    cases = []
    for i in range(2):
        image, mask = blob((24, 24, 10), seed=i)
        cases.append(Case(f"vol{i}", image, (0.8, 0.8, 2.0), "MR", [LabelledObject("blob", 1, mask)]))
    dataset = Dataset("blobs", "MR", cases)
    experiment = experiment_from_dict(_table(tiny_base_2d, route="propagate", clicks=3, images_per_round=2))
    site = build_site(SiteSpec(name="a", dataset="blobs"), spatial_dims=3, dataset=dataset)
    states = {}
    for arm in ("frozen", "local-online"):
        records, engine = annotate_site(ARMS[arm], experiment, 0, site, tmp_path / arm)
        assert len(records) == 2 and all(1 <= len(r["dices"]) <= 3 for r in records)
        states[arm] = {k: v.detach().cpu().numpy().copy() for k, v in engine.model.adapter.state().items()}
    # both start from the base's own affine: only the online arm moved it, from the slices it accepted
    assert any(not np.array_equal(states["frozen"][k], states["local-online"][k]) for k in states["frozen"])
    cached = sorted(p.name for p in (tmp_path / "local-online" / "cache").iterdir())
    assert cached and all(".z" in name for name in cached)
