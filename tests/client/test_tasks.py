"""One adapter per structure (task): a site's structures never mix."""

import json

import numpy as np
import pytest
import torch

from fedpoint.client.engine import SiteEngine
from fedpoint.client.site_store import SiteStore
from fedpoint.client.stream import run_stream
from fedpoint.shared.config import AdaptationConfig
from fedpoint.shared.tasks import DEFAULT_TASK, normalise_task, structure_of


def _weights(model):
    return {n: p.detach().clone() for n, p in model.net.named_parameters()}


def _annotate(engine, image, mask, task, case_id):
    session = engine.open(image, case_id, task=task)
    session.click((16, 16), True)
    session.click((2, 2), False)
    engine.accept(session, mask)


def test_task_names_are_normalised():
    assert normalise_task("Lung  Field") == normalise_task("lung_field") == normalise_task("lung-field") == "lung-field"
    assert normalise_task(None) == normalise_task("  ") == DEFAULT_TASK
    assert structure_of("nucleus-17") == "nucleus" and structure_of("lesion#2") == "lesion"
    assert structure_of("lung-field") == "lung-field"
    with pytest.raises(ValueError, match="task"):
        normalise_task("../liver")


def test_updates_of_one_structure_leave_the_other_bit_identical(tiny_base_2d, blob, tmp_path):
    engine = SiteEngine.create(tiny_base_2d, "norm", AdaptationConfig(mode="mid+post", lr=1e-2), tmp_path / "store")
    image, mask = blob((32, 32))
    _annotate(engine, image, mask, "Liver", "warm")  # both slots exist before the comparison
    lesion = engine.slot("lesion")
    liver = engine.slot("liver")
    assert liver.model is not lesion.model and liver.model.net is not lesion.model.net
    lesion_before, liver_before = _weights(lesion.model), _weights(liver.model)
    lesion_adam = {k: v.clone() for k, v in lesion.model.optimizer.state_dict()["state"].get(0, {}).items()}
    for k in range(2):
        _annotate(engine, image, mask, "liver", f"liver-{k}")
    assert all(torch.equal(lesion_before[n], p) for n, p in _weights(lesion.model).items())
    assert any(not torch.equal(liver_before[n], p) for n, p in _weights(liver.model).items())
    assert lesion.model.optimizer.state_dict()["state"].get(0, {}).keys() == lesion_adam.keys()
    # the default task (the site's adapter from before tasks) is a third, untouched slot
    assert engine.task == DEFAULT_TASK and engine.model is not liver.model

    # each task's cases, versions and optimizer state live in its own store
    root = SiteStore(tmp_path / "store")
    assert root.case_ids() == [] and root.tasks() == [DEFAULT_TASK, "lesion", "liver"]
    assert root.for_task("liver").case_ids() == ["warm", "liver-0", "liver-1"]
    assert engine.save_version({"source": "test"}, task="liver") == 1
    assert root.for_task("liver").current_adapter().name == "v0001" and root.current_adapter() is None
    assert root.for_task("lesion").current_adapter() is None

    # a restarted engine resumes each task's own adapter
    again = SiteEngine.create(tiny_base_2d, "norm", AdaptationConfig(mode="frozen"), tmp_path / "store")
    resumed = _weights(again.slot("liver").model)
    assert all(torch.equal(resumed[n], p) for n, p in _weights(liver.model).items())
    fresh = _weights(again.slot("lesion").model)
    assert all(torch.equal(fresh[n], p) for n, p in lesion_before.items())


def test_an_old_single_adapter_store_is_the_default_task(tiny_base_2d, blob, tmp_path):
    old = SiteEngine.create(tiny_base_2d, "norm", AdaptationConfig(mode="post", lr=1e-2), tmp_path / "store")
    image, mask = blob((32, 32))
    _annotate(old, image, mask, None, "old")
    old.save_version({"source": "test"})
    assert (tmp_path / "store" / "adapters" / "v0001").is_dir() and not (tmp_path / "store" / "tasks").exists()
    reopened = SiteEngine.create(tiny_base_2d, "norm", AdaptationConfig(mode="frozen"), tmp_path / "store")
    assert all(torch.equal(p, _weights(old.model)[n]) for n, p in _weights(reopened.model).items())
    assert reopened.store.case_ids() == ["old"]


def test_a_task_engine_without_a_factory_refuses_other_tasks(tiny_base_2d):
    engine = SiteEngine.create(tiny_base_2d, "norm", AdaptationConfig(mode="post"))
    plain = SiteEngine(engine.model, task="lesion")
    assert plain.task == "lesion"
    with pytest.raises(ValueError, match="cannot open task 'liver'"):
        plain.slot("liver")


def test_a_stream_routes_each_structure_to_its_adapter(tiny_base_2d, blob, tmp_path):
    class Sample:
        def __init__(self, name, seed):
            self.image, self.mask = blob((32, 32), seed=seed)
            self.object_name, self.case_id = name, "case"

    engine = SiteEngine.create(tiny_base_2d, "norm", AdaptationConfig(mode="post", lr=1e-2), tmp_path / "store")
    records = run_stream(engine, [Sample("nucleus-1", 0), Sample("lesion#1", 1), Sample("nucleus-2", 2)], 2, per_task=True)
    assert [r["task"] for r in records] == ["nucleus", "lesion", "nucleus"]
    store = SiteStore(tmp_path / "store")
    assert len(store.for_task("nucleus").case_ids()) == 2 and len(store.for_task("lesion").case_ids()) == 1
    log = [json.loads(line)["event"] for line in (tmp_path / "store" / "tasks" / "lesion" / "log.jsonl").read_text().splitlines()]
    assert log == ["accept"]
