"""A site of several tasks in the simulations' local arms: each image adapts its structure's
adapter, the same rule its federated rounds follow, and its records pair with theirs."""

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parents[1] / "client"))
from test_site_round_tasks import write_organ_dataset  # noqa: E402


def test_a_local_arm_on_a_two_task_site_adapts_each_structure_on_its_own(tiny_base_2d, blob, tmp_path):
    from fedpoint.data import SiteSpec, build_site
    from fedpoint.simulations.arms import ARMS, annotate_site
    from fedpoint.simulations.experiment import experiment_from_dict

    data = write_organ_dataset(blob, tmp_path / "organ", seed=0, count=2)
    other = write_organ_dataset(blob, tmp_path / "other", seed=20, count=2)
    spec = SiteSpec(name="organ", dataset=str(data), order="sorted", tasks=["Liver", "lesion"])
    site = build_site(spec, size=(32, 32))
    experiment = experiment_from_dict({"name": "t", "rounds": 2, "images_per_round": 2, "clicks": 2, "size": 32,
                                       "base": str(tiny_base_2d), "sites": [
                                           {"name": "organ", "dataset": str(data), "tasks": ["Liver", "lesion"]},
                                           {"name": "other", "dataset": str(other)}]})
    records, engine = annotate_site(ARMS["local-online"], experiment, 0, site, tmp_path / "store")
    assert [(r["object"], r["task"], r["index"]) for r in records] == [
        ("liver", "liver", 0), ("lesion", "lesion", 1), ("liver", "liver", 2), ("lesion", "lesion", 3)]
    assert set(engine.slots) == {"liver", "lesion"} and engine.task == "liver"
    liver, lesion = (engine.slot(t).model.adapter.state() for t in ("liver", "lesion"))
    assert any(not np.array_equal(liver[k].detach().numpy(), lesion[k].detach().numpy()) for k in liver)
    store = engine.root_store
    assert len(store.for_task("liver").case_ids()) == 2 and len(store.for_task("lesion").case_ids()) == 2
    assert not store.case_ids()  # the root store is the default task's: no structure of this site
