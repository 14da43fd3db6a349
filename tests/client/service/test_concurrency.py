"""Several clinicians at once, and banks from the federation picked up without a restart."""

from __future__ import annotations

import json
import threading
import time

import httpx
import numpy as np
import torch
from service_helpers import AUTH, LiveServer


def test_simultaneous_accepts_all_land(live, site):
    users = ["alice", "bob", "carol", "dave"]
    images = ["img0", "img0", "img1", "img1"]  # two people on the same image, twice
    for user, image in zip(users, images):
        r = live.client.post(f"/api/sessions/{image}/click", json={"point": [24, 24]}, headers={"X-Fedpoint-User": user})
        assert r.status_code == 200 and r.json()["mask"]["area"] > 0
    barrier = threading.Barrier(len(users))
    replies: dict[str, httpx.Response] = {}

    def accept(user: str, image: str) -> None:
        with httpx.Client(base_url=live.url, headers={**AUTH, "X-Fedpoint-User": user}, timeout=120) as client:
            barrier.wait()
            replies[user] = client.post(f"/api/sessions/{image}/accept", json={})

    threads = [threading.Thread(target=accept, args=pair) for pair in zip(users, images)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=180)
    assert {u: r.status_code for u, r in replies.items()} == {u: 200 for u in users}
    cases = sorted(p.name for p in (site["store"] / "cache").iterdir() if not p.name.startswith("."))
    assert cases == ["img0", "img0.2", "img1", "img1.2"]
    metas = [json.loads((site["store"] / "cache" / c / "meta.json").read_text()) for c in cases]
    assert sorted(m["user"] for m in metas) == sorted(users)
    assert live.client.get("/api/status").json()["cache"]["cases"] == 4


def _bank_adapter(base_path, state):
    from fedpoint.shared.adapters import make_adapter
    from fedpoint.shared.model import load_base

    net, _, _ = load_base(base_path)
    adapter = make_adapter(net, "norm+stem")
    adapter.load_state(state)
    return adapter


def _wait_for_review(live, count: int, timeout: float = 120.0) -> dict:
    deadline = time.monotonic() + timeout
    while len(live.state.banks.events) < count:
        assert time.monotonic() < deadline, "the bank was not reviewed in time"
        time.sleep(0.1)
    return live.client.get("/api/status").json()["last_bank"]


def test_banks_are_picked_up_without_restart_and_a_worse_one_is_refused(make_config, site, tiny_base_2d):
    with LiveServer(make_config(adapter="norm+stem")) as live:
        for image_id in ("img0", "img1"):  # a held-out set for the regression guard
            mask = site["masks"][image_id].astype(np.uint8)
            live.client.put("/datastore/label", params={"image": image_id}, files={"label": ("l.npy", _npy(mask))})
        store = live.state.store
        store.save_splits({"train": ["img0"], "val": ["img1"]})
        engine = live.state.engine
        swaps, versions = engine.model.version, store.adapter_versions()

        current = engine.adapter.state()
        store.receive_bank("modality-MR", 1, _bank_adapter(tiny_base_2d, current))
        good = _wait_for_review(live, 1)
        assert good["bank"] == "modality-MR" and good["version"] == 1 and good["accepted"], good
        assert engine.model.version == swaps + 1 and len(store.adapter_versions()) == len(versions) + 1

        worse = {k: v.clone() for k, v in engine.adapter.state().items()}
        head_bias = [k for k in worse if k.endswith("bias") and k.startswith("model.2")][-1]
        worse[head_bias] = torch.full_like(worse[head_bias], -1e4)  # predicts nothing anywhere
        before = engine.adapter.state()
        store.receive_bank("modality-MR", 2, _bank_adapter(tiny_base_2d, worse))
        refused = _wait_for_review(live, 2)
        assert refused["version"] == 2 and not refused["accepted"]
        assert refused["candidate"] < refused["current"]
        assert all(torch.equal(before[k], v) for k, v in engine.adapter.state().items())  # live adapter untouched
        assert [e["accepted"] for e in store.read_log() if e["event"] == "bank-review"] == [True, False]


def test_a_bank_for_another_base_is_refused_with_the_reason(make_config, tmp_path):
    from fedpoint.shared.adapters import make_adapter
    from fedpoint.shared.config import ModelConfig
    from fedpoint.shared.model import build_model

    with LiveServer(make_config()) as live:
        torch.manual_seed(123)
        other = build_model(ModelConfig(channels=(8, 16, 32), strides=(2, 2), num_res_units=1))
        live.state.store.receive_bank("site-general", 1, make_adapter(other, "norm"))
        review = _wait_for_review(live, 1)
        assert not review["accepted"] and "base" in review["reason"]


def _npy(mask: np.ndarray) -> bytes:
    import io

    buffer = io.BytesIO()
    np.save(buffer, mask)
    return buffer.getvalue()


def test_three_users_clicking_at_once_each_keep_their_own_session(live):
    from fedpoint.benchmarks.service import concurrent_users

    sequences = [[([24, 24], True), ([5, 5], False), ([26, 22], True)],
                 [([20, 20], True), ([40, 40], False)],
                 [([24, 28], True)]]
    one = concurrent_users(live.url, AUTH, "img0", sequences[:1], 1, think_s=0.0)
    three = concurrent_users(live.url, AUTH, "img0", sequences, 3, think_s=0.0)
    assert one["n"] == 3 and three["n"] == 6 and three["p95"] >= three["p50"] > 0
    # every user's session was its own and was discarded at the end: nothing left open
    assert not [u for u in ("bench-user-1-0", "bench-user-3-0", "bench-user-3-1") if live.state.sessions.of_user("img0", u)]


def test_a_clientapp_round_beside_the_live_service_on_one_store(make_config, site, tiny_base_2d, task_identity):
    """A deployed site: clinicians accept through the running service (which runs its own
    episodes) while the Flower ClientApp runs federation rounds on the same store. No case ends
    up in two splits, no adapter version is lost or damaged, and the ClientApp never makes a
    version current (the service's guard decides)."""
    from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict

    from fedpoint.client.client_app import build_client_app
    from fedpoint.client.site_round import load_site_base
    from fedpoint.client.site_store import SiteStore
    from fedpoint.shared import protocol as P
    from fedpoint.shared.adapters import make_adapter
    from fedpoint.shared.payload import to_numpy
    from fedpoint.shared.run_config import parse_run_config

    config = make_config(mode="mid+post+episodes", adaptation={"post_clicks": 2, "episode_min_cases": 2,
                                                               "episode_epochs": 1, "episode_iters": 2})
    defaults = {"base": str(tiny_base_2d), "local-epochs": 1, "min-train-nodes": 1}
    fed = parse_run_config(defaults)
    base, _, fingerprint = load_site_base(fed.base)
    bank = to_numpy(make_adapter(base, fed.adapter_config(), fingerprint).state())
    node = {P.NODE_SITE_ID: "test-site", P.NODE_MODALITY: "MR", P.NODE_SITE_STORE: str(site["store"])}
    app = build_client_app(defaults)
    errors: list[str] = []

    def rounds() -> None:
        for server_round in (1, 2, 3):
            instruction = P.RoundInstruction(server_round=server_round, bank="general", bank_version=1,
                                             base_fingerprint=fingerprint, **P.instruction_settings(fed))
            msg = Message(RecordDict({P.ARRAYS: ArrayRecord(array_dict={k: Array(v) for k, v in bank.items()}),
                                      P.CONFIG: ConfigRecord(instruction.to_config())}), dst_node_id=11, message_type="train")
            try:
                out = app(msg, Context(run_id=1, node_id=11, node_config=node, state=RecordDict(), run_config={}))
            except Exception as err:  # noqa: BLE001 - reported by the test, not lost in the thread
                errors.append(f"round {server_round}: {type(err).__name__}: {err}")
                continue
            if out.has_error():
                errors.append(f"round {server_round}: {out.error.code}")

    with LiveServer(config) as live:
        accepted = []
        for image in ("img0", "img1", "img2"):  # enough cases for the ClientApp's first episode
            live.client.post(f"/api/sessions/{image}/click", json={"point": [24, 24]})
            accepted.append(live.client.post(f"/api/sessions/{image}/accept", json={}).json()["case"])
        federation = threading.Thread(target=rounds)
        federation.start()
        for i in range(6):  # more accepts while the rounds run
            image = f"img{i % 3}"
            live.client.post(f"/api/sessions/{image}/click", json={"point": [20 + i, 24]})
            r = live.client.post(f"/api/sessions/{image}/accept", json={})
            assert r.status_code == 200, r.text
            accepted.append(r.json()["case"])
        federation.join(timeout=300)
        live.state.training.wait(120)
        assert not federation.is_alive() and not errors, errors
        current = SiteStore(site["store"]).current_adapter()

    store = SiteStore(site["store"])
    splits = store.splits()
    assigned = [c for ids in splits.values() for c in ids]
    assert len(assigned) == len(set(assigned)), "a case is in two splits"
    assert set(assigned) <= set(store.case_ids()) and set(accepted) <= set(store.case_ids())
    versions = store.adapter_versions()
    assert versions == list(range(1, len(versions) + 1)) and all(store.check_adapter(v) is None for v in versions)
    assert versions and current is not None
    events = [e["event"] for e in store.read_log()]
    assert events.count("federation-round") == 3
    log = store.read_log()
    number = int(current.name[1:])
    made_current = [e for e in log if (e["event"] == "adapter" and e["current"]) or e["event"] == "adapter-current"]
    assert any(e["version"] == number for e in made_current), "the current version was not made current by the service"
    # the ClientApp's rounds ran episodes on the store (a version only when the episode's guard kept it)
    assert sum(1 for e in log if e["event"] == "episode") >= 3
