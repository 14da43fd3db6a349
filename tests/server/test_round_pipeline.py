"""The round pipeline as plain functions over records: no Flower, a real bank store on disk."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from fedpoint.server import records
from fedpoint.server import round_pipeline as rp
from fedpoint.server.bank_reads import RoundReads
from fedpoint.server.banks import BankStore
from fedpoint.server.checks import PeerScreen
from fedpoint.server.policy import CoordinatorPolicy
from fedpoint.server.records import Outcome, Reply, RoundPlan, Sent, SiteInfo
from fedpoint.server.routing import GENERAL
from fedpoint.shared.config import AdapterConfig
from fedpoint.shared.payload import state_schema

START = {"norm.weight": np.ones(16, np.float32), "norm.bias": np.zeros(16, np.float32)}
SCHEMA = state_schema(START)
SITES = {1: SiteInfo("mr-1", "MR"), 2: SiteInfo("mr-2", "MR"), 3: SiteInfo("ct-1", "CT"), 4: SiteInfo("ct-2", "CT")}
POLICY = CoordinatorPolicy()


@pytest.fixture
def reads(tmp_path):
    store = BankStore(tmp_path / "banks")
    store.init_bank(GENERAL, START, "fp", "norm", AdapterConfig(kind="norm"))
    return RoundReads(store)


def reply(node: int, seed: int, bank: str = GENERAL, version: int = 1, weight: float = 2.0, scale: float = 0.01) -> Reply:
    rng = np.random.default_rng(seed)
    delta = {k: (scale * rng.standard_normal(v.shape)).astype(np.float32) for k, v in START.items()}
    return Reply(SITES[node].site_id, bank, delta, weight, "fp", {"dice1": 0.5}, version)


def run_round(reads: RoundReads, replies: dict[int, Reply], policy: CoordinatorPolicy = POLICY):
    outcomes: dict[int, Outcome] = {}
    accepted, notes = rp.screen_round(replies, outcomes, sites=SITES, screen=PeerScreen(policy.screen),
                                      bound=lambda bank: rp.bank_bound(reads, bank, SCHEMA, policy), schema=SCHEMA,
                                      fingerprint="fp", policy=policy)
    plan = RoundPlan(1, accepted, outcomes, rp.plan_updates(accepted, reads, sites=SITES, schema=SCHEMA, policy=policy))
    return plan, notes


def test_the_first_round_creates_the_modality_banks_from_the_bank_the_sites_trained_from(reads):
    replies = {n: reply(n, n, weight=n) for n in SITES}
    plan, _ = run_round(reads, replies)
    assert sorted(plan.updates) == [GENERAL, "modality-ct", "modality-mr"]
    mr = plan.updates["modality-mr"]
    assert (mr.base, mr.exists) == ((GENERAL, 1), False)
    assert mr.rebased == mr.replies  # trained from the base itself: nothing to rebase
    expected = {k: (replies[1].delta[k] * 1 + replies[2].delta[k] * 2) / 3 for k in START}
    for k in START:
        np.testing.assert_allclose(mr.update[k], expected[k], atol=1e-7)
    writes = rp.version_writes(plan, {b: u.update for b, u in plan.updates.items()}, reads, fed_round=1, schema=SCHEMA,
                               fingerprint="fp", policy=POLICY, bound=lambda bank: 1.0)
    kinds = {w[1]: w[0] for w in writes}
    assert kinds == {GENERAL: "write", "modality-ct": "init", "modality-mr": "init"}
    created = next(w for w in writes if w[1] == "modality-mr")[-1]
    assert created["created_from"] == "general@v1" and created["sites"] == ["mr-1", "mr-2"]
    general = next(w for w in writes if w[1] == GENERAL)
    assert general[-1].version == 1  # the parent as this round read it, handed to the store
    assert general[3]["screen"]["max_norm"] == pytest.approx(max(r.norm for r in replies.values()))


def test_a_reply_is_rebased_once_onto_each_bank_it_did_not_train_from(reads, monkeypatch):
    store = reads.store
    mr_start = {k: v + 0.05 for k, v in START.items()}
    store.init_bank("modality-mr", mr_start, "fp", "norm", AdapterConfig(kind="norm"))
    reads = RoundReads(store)
    calls = Counter()
    original = rp.rebase

    def counted(r, *args):
        calls[r.site_id] += 1
        return original(r, *args)

    monkeypatch.setattr(rp, "rebase", counted)
    replies = {1: reply(1, 1, "modality-mr"), 2: reply(2, 2, "modality-mr"), 3: reply(3, 3), 4: reply(4, 4)}
    plan, _ = run_round(reads, replies)
    assert calls == Counter({"mr-1": 1, "mr-2": 1})  # into the general bank; CT trained from it
    rebased = dict(zip([r.site_id for r in plan.updates[GENERAL].replies], plan.updates[GENERAL].rebased))
    for k in START:  # (its start + its delta) - the general bank
        np.testing.assert_allclose(rebased["mr-1"].delta[k], mr_start[k] + replies[1].delta[k] - START[k], atol=1e-7)
    assert rebased["ct-1"] is plan.updates[GENERAL].replies[2]


def test_each_delta_is_measured_once_through_screens_rebase_and_commit(reads, monkeypatch):
    """On main each reply's norm was computed 5 to 7 times a round."""
    store = reads.store
    store.init_bank("modality-mr", {k: v + 0.05 for k, v in START.items()}, "fp", "norm", AdapterConfig(kind="norm"))
    reads = RoundReads(store)
    measured = []
    original = records.delta_norm
    monkeypatch.setattr(records, "delta_norm", lambda d: measured.append(d) or original(d))
    replies = {1: reply(1, 1, "modality-mr"), 2: reply(2, 2, "modality-mr"), 3: reply(3, 3), 4: reply(4, 4)}
    plan, _ = run_round(reads, replies)
    rp.version_writes(plan, {b: u.update for b, u in plan.updates.items()}, reads, fed_round=1, schema=SCHEMA,
                      fingerprint="fp", policy=POLICY, bound=lambda bank: 1.0)
    distinct = {id(r.delta) for u in plan.updates.values() for r in (*u.replies, *u.rebased)}
    assert len(measured) == len(distinct) == 6  # four replies, two of them rebased into the general bank


def test_the_screens_fill_each_outcome_and_keep_node_order(reads):
    bad = reply(2, 2)
    bad.delta["norm.bias"] = np.zeros(3, np.float32)
    heavy = reply(4, 4, weight=1000.0)
    replies = {4: heavy, 1: reply(1, 1), 2: bad, 3: reply(3, 3)}
    outcomes: dict[int, Outcome] = {}
    accepted, notes = rp.screen_round(replies, outcomes, sites=SITES, screen=PeerScreen(), bound=lambda bank: 10.0,
                                      schema=SCHEMA, fingerprint="fp", policy=POLICY)
    assert [r.site_id for r in accepted] == ["mr-1", "ct-1", "ct-2"]
    assert outcomes[2].status == "rejected" and "shape" in outcomes[2].reason
    assert outcomes[4].reply.weight < 1000 and any("ct-2" in n and "weight" in n for n in notes)


def test_clipping_before_the_screens_leaves_a_malformed_reply_to_them():
    big, bad = reply(1, 1, scale=1.0), reply(2, 2, scale=1.0)
    bad.delta["image"] = np.ones(3, np.float32)
    clipped = rp.clip_replies({1: big, 2: bad}, 0.5, SCHEMA)
    assert clipped[1].norm == pytest.approx(0.5, rel=1e-5) and clipped[2] is bad
    assert rp.clip_replies({1: big}, 0.0, SCHEMA)[1] is big


def test_the_ledger_entry_and_the_weight_shares():
    sent = {1: Sent(GENERAL, 1, 128, "general bank"), 2: Sent(GENERAL, 1, 128)}
    one = reply(1, 1)
    plan = RoundPlan(1, [one], {1: Outcome("accepted", None, one)})
    entry = rp.round_entry(4, sent=sent, plan=plan, sites=SITES, dropped={3: "silent"}, refused={9: "identity refused"},
                           versions={GENERAL: 2}, dp=None)
    rows = entry.as_json()["sites"]
    assert rows["mr-1"]["status"] == "accepted" and rows["mr-1"]["bytes_up"] == 128 and rows["mr-1"]["route"] == "general bank"
    assert rows["mr-2"]["status"] == "no reply" and rows["ct-1"]["status"] == "dropped" and rows["node-9"]["status"] == "refused"
    skipped = rp.round_entry(4, sent=sent, plan=None, sites=SITES, dropped={}, refused={}, versions={}, dp=None)
    assert {r["status"] for r in skipped.as_json()["sites"].values()} == {"skipped"}
    shares = rp.weight_shares([reply(1, 1, weight=1), reply(3, 3, weight=3)], lambda r: rp.targets(r, SITES, "banks"))
    assert shares == {"mr-1": [0.25, 1.0], "ct-1": [0.75, 1.0]}


def test_the_evaluation_summary_bounds_each_score_by_the_others():
    per_version = {(GENERAL, 2): {"a": (4, 0.5), "b": (4, 0.55), "c": (2, 1.0)}}
    summary, notes = rp.evaluation_summary(3, per_version)
    entry = summary["general@v2"]
    assert (entry["round"], entry["sites"], entry["cases"]) == (3, 3, 10)
    # each score within the others' median +- 0.2: c (1.0) to 0.725, and a (0.5) up to 0.575
    assert entry["dice_auc"] == pytest.approx((4 * 0.575 + 4 * 0.55 + 2 * 0.725) / 10)
    assert [n.split(":")[1].strip() for n in notes] == ["site a", "site c"] and notes[0].startswith("general v2")
