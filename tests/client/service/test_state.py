"""fedpoint.client.service.state, the service's composition root, on its own (no HTTP): each owner is
built once over one engine and one store, a start cleans what a crash left, and the status says what
the page shows."""

from __future__ import annotations

import pytest

from fedpoint.client.engine import SiteEngine
from fedpoint.client.service.state import ServiceState
from fedpoint.client.site_store import SiteStore
from fedpoint.shared.fileio import TEMP_PREFIX


def test_every_owner_shares_the_one_engine_and_store(make_config):
    state = ServiceState(make_config(labels=["liver", "lesion"]))
    try:
        assert state.store is state.engine.store
        assert state.training.engine is state.engine and state.banks.engine is state.engine
        status = state.status()
        assert status["site"] == "test-site" and status["mode"] == "mid+post"
        assert [(s["name"], s["value"]) for s in status["structures"]] == [("liver", 1), ("lesion", 2)]
        assert len({s["color"] for s in status["structures"]}) == 2
        assert status["images"]["total"] == 4 and status["cache"] == {"cases": 0, "images_labelled": 0}
        assert status["training"]["status"] == "NONE" and status["last_bank"] is None and status["sessions"] == 0
        assert status["adapter"]["kind"] == "norm" and status["adapter"]["saved_version"] == 0
    finally:
        state.stop()
    assert state.banks._thread is None  # never started: start() is the app's lifespan's to call


def test_a_start_cleans_what_a_crash_left_and_quarantines_a_cut_case(make_config, site, blob):
    store = SiteStore(site["store"])
    image, mask = blob((48, 48), seed=3)
    kept = store.add_case("kept", image, mask)
    cut = store.add_case("cut", image, mask)
    (cut / "mask.npy").write_bytes((cut / "mask.npy").read_bytes()[:60])  # a crash cut the write
    leftover = site["store"] / "cache" / f"{TEMP_PREFIX}interrupted"
    leftover.mkdir()
    (leftover / "image.npy").write_bytes(b"half")

    state = ServiceState(make_config())
    try:
        assert not leftover.exists()
        assert [case for case, _reason in state.quarantined_at_start] == ["cut"]
        status = state.status()
        assert [q["case"] for q in status["quarantined"]] == ["cut"] and "mask.npy" in status["quarantined"][0]["reason"]
        assert status["cache"]["cases"] == 1 and kept.is_dir()
    finally:
        state.stop()


def test_an_engine_without_a_store_is_refused(make_config, tiny_base_2d):
    with pytest.raises(ValueError, match="site store"):
        ServiceState(make_config(), engine=SiteEngine.create(tiny_base_2d, "norm"))
