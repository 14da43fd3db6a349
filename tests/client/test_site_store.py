import json
import os

import numpy as np
import pytest

from fedpoint.client.site_store import SiteStore, check_id
from fedpoint.shared.adapters import make_adapter
from fedpoint.shared.model import load_base


def test_cases_round_trip_in_accept_order(tmp_path):
    store = SiteStore(tmp_path)
    for i in range(3):
        store.add_case(f"c{i}", np.full((1, 4, 4), i, np.float32), np.eye(4, dtype=bool), {"clicks": i})
    store.add_case("c1", np.zeros((1, 4, 4), np.float32), np.eye(4, dtype=bool))  # the same image accepted twice
    assert store.case_ids() == ["c0", "c1", "c2", "c1.2"]
    image, mask, meta = store.load_case("c2")
    assert image[0, 0, 0] == 2 and mask.dtype == bool and meta["clicks"] == 2


def test_a_write_cut_by_a_crash_loses_nothing_accepted_before_it(tmp_path):
    store = SiteStore(tmp_path)
    store.add_case("kept", np.zeros((1, 4, 4), np.float32), np.eye(4, dtype=bool))
    # a crash mid-write leaves a staging folder with a partial file and a cut log line
    partial = tmp_path / "cache" / ".tmp-crash"
    partial.mkdir()
    (partial / "image.npy").write_bytes(b"\x93NUMPY partial")
    with open(tmp_path / "log.jsonl", "a") as f:
        f.write('{"event": "acc')
    reopened = SiteStore(tmp_path)
    assert reopened.case_ids() == ["kept"]
    assert [e["event"] for e in reopened.read_log()] == ["accept"]
    reopened.wipe_staging()
    assert not partial.exists()
    reopened.add_case("next", np.zeros((1, 4, 4), np.float32), np.eye(4, dtype=bool))
    assert reopened.case_ids() == ["kept", "next"]


def test_adapter_versions_and_banks(tmp_path, tiny_base_2d):
    store = SiteStore(tmp_path)
    adapter = make_adapter(load_base(tiny_base_2d)[0], "norm")
    assert store.current_adapter() is None
    assert store.save_adapter(adapter, {"source": "test"}) == 1
    assert store.save_adapter(adapter) == 2
    assert store.current_adapter().name == "v0002" and store.adapter_versions() == [1, 2]
    path = store.receive_bank("modality-mr", 3, adapter)
    assert store.latest_bank() == path
    assert json.loads((path / "fedpoint_adapter.json").read_text())["bank"] == "modality-mr"
    assert [e["event"] for e in store.read_log()] == ["adapter", "adapter", "bank"]


@pytest.mark.parametrize("bad", ["../etc", "a/b", "", ".hidden", "x" * 200, "a\x00b"])
def test_ids_that_could_escape_the_store_are_refused(bad, tmp_path):
    with pytest.raises(ValueError, match="invalid"):
        check_id(bad)
    with pytest.raises(ValueError):
        SiteStore(tmp_path).add_case(bad, np.zeros((1, 2, 2)), np.ones((2, 2), bool))
    assert not any(p.name.startswith("..") for p in tmp_path.rglob("*"))
    assert os.listdir(tmp_path / "cache") == [] or all(n.startswith(".tmp") for n in os.listdir(tmp_path / "cache"))
