"""fedpoint.client.service.bank_watcher on its own (no HTTP): a delivered bank is reviewed once, a
restarted watcher does not review it again, and a bank that cannot be read is refused with a reason
that names no server path."""

from __future__ import annotations

import copy
import time

import torch

from fedpoint.client.engine import SiteEngine
from fedpoint.client.service.bank_watcher import BankWatcher
from fedpoint.shared.config import AdaptationConfig


def _engine(base, store):
    return SiteEngine.create(base, "norm", AdaptationConfig(mode="post"), store)


def _nudged_adapter(engine):
    """A copy of the live adapter with every parameter moved a little: a bank the federation sent."""
    bank = copy.deepcopy(engine.adapter)
    bank.load_state({k: v + 0.01 for k, v in bank.state().items()})
    return bank


def test_a_delivered_bank_is_reviewed_once_and_swapped_in(tiny_base_2d, tmp_path):
    engine = _engine(tiny_base_2d, tmp_path / "store")
    watcher = BankWatcher(engine, poll_s=60)
    assert watcher.check() is None and watcher.last is None  # nothing delivered yet

    bank = _nudged_adapter(engine)
    engine.store.receive_bank("modality-mr", 3, bank)
    review = watcher.check()
    # no held-out case yet: the bank is taken unvalidated (it is all the site has to start from)
    assert review["accepted"] and (review["bank"], review["version"]) == ("modality-mr", 3)
    assert review["path"] == "banks/modality-mr/v0003" and review["adapter_version"] in engine.store.adapter_versions()
    assert all(torch.equal(engine.adapter.state()[k], v) for k, v in bank.state().items())
    assert watcher.check() is None  # the same bank is not reviewed twice
    assert [e["event"] for e in engine.store.read_log()].count("bank-review") == 1

    restarted = BankWatcher(engine, poll_s=60)  # a restarted service reads the log: nothing new
    assert restarted.check() is None


def test_a_cut_bank_file_is_refused_naming_the_bank_not_the_server(tiny_base_2d, tmp_path):
    store_root = tmp_path / "store"
    engine = _engine(tiny_base_2d, store_root)
    before = {k: v.clone() for k, v in engine.adapter.state().items()}
    folder = engine.store.receive_bank("site-general", 1, _nudged_adapter(engine))
    for file in folder.iterdir():
        if file.suffix == ".safetensors":
            file.write_bytes(file.read_bytes()[:40])  # the copy was cut
    review = BankWatcher(engine, poll_s=60).check()
    assert not review["accepted"]
    assert review["reason"].startswith("banks/site-general/v0001") and str(store_root.resolve()) not in review["reason"]
    assert all(torch.equal(before[k], v) for k, v in engine.adapter.state().items())  # the live adapter is untouched
    logged = [e for e in engine.store.read_log() if e["event"] == "bank-review"]
    assert logged and logged[-1]["accepted"] is False and logged[-1]["reason"] == review["reason"]


def test_the_watcher_thread_picks_a_bank_up_and_stops(tiny_base_2d, tmp_path):
    engine = _engine(tiny_base_2d, tmp_path / "store")
    watcher = BankWatcher(engine, poll_s=0.05)
    watcher.start()
    try:
        engine.store.receive_bank("site-general", 1, _nudged_adapter(engine))
        for _ in range(400):  # at most 20 s, usually one poll
            if watcher.last is not None:
                break
            time.sleep(0.05)
        assert watcher.last is not None and watcher.last["accepted"]
    finally:
        watcher.stop()
    assert not watcher._thread.is_alive()



def test_a_task_bank_goes_to_its_own_structures_adapter_only(tiny_base_2d, tmp_path):
    """A site of two structures: the federation delivers the lesion's task bank into the lesion's
    task store (one task a round); the watcher offers it to the lesion's adapter, and the liver's
    adapter and the site default stay bit-identical."""
    engine = _engine(tiny_base_2d, tmp_path / "store")
    watcher = BankWatcher(engine, poll_s=60, tasks=["Liver", "lesion"])
    liver, lesion = engine.slot("liver"), engine.slot("lesion")
    before = {name: {k: v.clone() for k, v in engine.slot(name).model.adapter.state().items()}
              for name in ("liver", None)}
    bank = copy.deepcopy(lesion.model.adapter)
    bank.load_state({k: v + 0.01 for k, v in bank.state().items()})
    lesion.store.receive_bank("task-lesion", 2, bank)
    review = watcher.check()
    assert review["accepted"] and review["task"] == "lesion" and review["path"] == "tasks/lesion/banks/task-lesion/v0002"
    assert all(torch.equal(lesion.model.adapter.state()[k], v) for k, v in bank.state().items())
    for name, state in before.items():
        assert all(torch.equal(engine.slot(name).model.adapter.state()[k], v) for k, v in state.items())
    assert review["adapter_version"] in lesion.store.adapter_versions() and not liver.store.adapter_versions()
    assert watcher.check() is None
    assert BankWatcher(engine, poll_s=60, tasks=["liver", "lesion"]).check() is None  # the lesion store's log says reviewed
