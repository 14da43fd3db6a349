"""The coordinator's strategy with real Flower Messages: routing, exact aggregation, rejected and
failed replies, clipping, DP noise, and resuming from the bank store."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict

from fedpoint.server.banks import BankStore
from fedpoint.server.checks import delta_norm
from fedpoint.server.policy import CoordinatorPolicy
from fedpoint.server.server_app import base_adapter, open_banks
from fedpoint.server.strategy import BankStrategy, NoisedBankStrategy, PrivateBankStrategy, SiteInfo
from fedpoint.shared import protocol as P
from fedpoint.shared.run_config import FederationConfig, parse_run_config


def make_coordinator(base, output, variant=BankStrategy, **overrides):
    fed = parse_run_config({"base": str(base), "output-dir": str(output), **overrides})
    adapter = base_adapter(fed)
    store = BankStore(fed.bank_store_path)
    last = open_banks(store, adapter)
    strategy = variant(store, CoordinatorPolicy.from_config(fed), fingerprint=adapter.base_fingerprint,
                       schema=adapter.schema(), round_offset=last, summary_path=fed.output_path / "federation.json")
    return SimpleNamespace(strategy=strategy, store=store, adapter=adapter, fed=fed)


@pytest.fixture
def coordinator(tiny_base_2d, tmp_path, task_identity):
    return make_coordinator(tiny_base_2d, tmp_path / "fed")


def send(strategy: BankStrategy, sites: dict[int, str], server_round: int = 1) -> dict[int, Message]:
    """Instructions for known sites (node n is site "site-n" of the given modality), as
    configure_train builds them after the identity query."""
    strategy.sent = {}
    for node, modality in sites.items():
        strategy.sites[node] = SiteInfo(f"site-{node}", modality)
    return {node: strategy.instruct(node, server_round, ConfigRecord()) for node in sites}


def received(instruction: Message) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in instruction.content[P.ARRAYS].items()}


def delta_like(bank: dict, seed: int, scale: float = 0.01) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {k: (scale * rng.standard_normal(v.shape)).astype(np.float32) for k, v in bank.items()}


def reply(instruction: Message, delta: dict, weight: float = 2, fingerprint: str | None = None,
          metrics: dict | None = None) -> Message:
    config = instruction.content[P.CONFIG]
    content = RecordDict({
        P.ARRAYS: ArrayRecord(array_dict={k: Array(np.ascontiguousarray(v)) for k, v in delta.items()}),
        P.METRICS: MetricRecord({P.NUM_EXAMPLES: weight, "dice1": 0.5, **(metrics or {})}),
        P.CONFIG: ConfigRecord({P.SITE_ID: f"site-{instruction.metadata.dst_node_id}",
                                P.BASE_FINGERPRINT: fingerprint or config[P.BASE_FINGERPRINT]}),
    })
    return Message(content, reply_to=instruction)


def weighted_mean(deltas: list[dict], weights: list[float]) -> dict[str, np.ndarray]:
    w = np.asarray(weights, dtype=np.float64) / np.sum(weights)
    return {k: sum(wi * d[k].astype(np.float64) for wi, d in zip(w, deltas)) for k in deltas[0]}


def last_round(c) -> dict:
    return json.loads((c.fed.output_path / "federation.json").read_text())["rounds"][-1]


def test_instruction_carries_the_bank_and_what_to_do(coordinator):
    msg = send(coordinator.strategy, {7: "MR"})[7]
    instruction = P.RoundInstruction.from_config(msg.content[P.CONFIG])
    assert (instruction.bank, instruction.bank_version, instruction.server_round) == ("general", 1, 1)
    assert instruction.base_fingerprint == coordinator.adapter.base_fingerprint
    assert instruction.adapter == coordinator.fed.adapter_config()
    assert list(msg.content[P.ARRAYS].keys()) == list(coordinator.adapter.schema())
    assert msg.metadata.dst_node_id == 7 and msg.metadata.message_type == "train"


def test_bad_replies_are_rejected_and_banks_take_only_the_good_ones(coordinator):
    c = coordinator
    nodes = {n: "MR" for n in range(1, 9)}
    msgs = send(c.strategy, nodes)
    bank = received(msgs[1])
    good = {n: delta_like(bank, seed=n) for n in (1, 2, 3)}
    nan = delta_like(bank, 4)
    nan[next(iter(nan))][0] = np.nan
    wrong_shape = delta_like(bank, 5)
    first = next(iter(wrong_shape))
    wrong_shape[first] = np.zeros((wrong_shape[first].size + 1,), np.float32)
    extra = {**delta_like(bank, 6), "image": np.ones((40, 40), np.float32)}
    huge = {k: v * 1e4 for k, v in delta_like(bank, 7).items()}
    replies = [reply(msgs[n], good[n], weight=n) for n in (1, 2, 3)] + [
        reply(msgs[4], nan), reply(msgs[5], wrong_shape), reply(msgs[6], extra),
        reply(msgs[7], huge), reply(msgs[8], delta_like(bank, 8), fingerprint="0" * 32),
    ]
    updates, metrics = c.strategy.aggregate_train(1, replies)

    expected = weighted_mean([good[n] for n in (1, 2, 3)], [1, 2, 3])
    for bank_name in ("general", "modality-mr"):
        new = c.store.latest(bank_name)
        assert new.manifest["round"] == 1
        for k in bank:
            np.testing.assert_allclose(new.state[k], bank[k] + expected[k], rtol=0, atol=1e-6)
    assert c.store.versions("general") == [1, 2]
    assert metrics["replies-accepted"] == 3 and metrics["replies-rejected"] == 5
    assert metrics[P.NUM_EXAMPLES] == 6
    status = last_round(c)["sites"]
    assert {s: status[s]["status"] for s in status} == {f"site-{n}": "accepted" if n <= 3 else "rejected" for n in nodes}
    reasons = {s: status[s]["reason"] for s in status}
    assert "non-finite" in reasons["site-4"]
    assert "shape" in reasons["site-5"]
    assert "'image'" in reasons["site-6"]
    assert "absolute bound" in reasons["site-7"] or "median" in reasons["site-7"]
    assert "base" in reasons["site-8"]
    assert status["site-1"]["bytes_up"] == sum(v.nbytes for v in good[1].values())
    assert status["site-1"]["bytes_down"] == sum(v.nbytes for v in bank.values())


def test_a_failed_or_silent_site_does_not_stop_the_round(coordinator):
    c = coordinator
    msgs = send(c.strategy, {1: "CT", 2: "CT", 3: "CT", 4: "CT"})
    bank = received(msgs[1])
    deltas = [delta_like(bank, 1), delta_like(bank, 2)]
    failure = Message(Error(code=0, reason="ClientApp raised RuntimeError"), reply_to=msgs[3])
    _, metrics = c.strategy.aggregate_train(1, [reply(msgs[1], deltas[0]), reply(msgs[2], deltas[1]), failure])
    assert metrics["replies-failed"] == 1 and metrics["replies-accepted"] == 2
    expected = weighted_mean(deltas, [2, 2])
    new = c.store.latest("general").state
    for k in bank:
        np.testing.assert_allclose(new[k], bank[k] + expected[k], atol=1e-6)
    status = {s: v["status"] for s, v in last_round(c)["sites"].items()}
    assert status == {"site-1": "accepted", "site-2": "accepted", "site-3": "failed", "site-4": "no reply"}


def test_a_round_with_nothing_acceptable_writes_no_version(coordinator):
    c = coordinator
    msgs = send(c.strategy, {1: "MR"})
    bad = {k: np.full_like(v, np.inf) for k, v in received(msgs[1]).items()}
    updates, _ = c.strategy.aggregate_train(1, [reply(msgs[1], bad)])
    assert updates is None
    assert c.store.banks() == ["general"] and c.store.versions("general") == [1]
    assert last_round(c)["versions"] == {}


def test_sites_get_their_modality_bank_and_replies_are_rebased(coordinator):
    c = coordinator
    msgs = send(c.strategy, {1: "MR", 2: "CT"})
    bank = received(msgs[1])
    c.strategy.aggregate_train(1, [reply(msgs[1], delta_like(bank, 1)), reply(msgs[2], delta_like(bank, 2))])
    assert c.store.banks() == ["general", "modality-ct", "modality-mr"]

    msgs = send(c.strategy, {1: "MR", 2: "CT"}, server_round=2)
    assert msgs[1].content[P.CONFIG][P.BANK] == "modality-mr"
    assert msgs[2].content[P.CONFIG][P.BANK] == "modality-ct"
    starts = {n: received(msgs[n]) for n in (1, 2)}
    deltas = {n: delta_like(bank, 10 + n) for n in (1, 2)}
    general = c.store.latest("general").state
    c.strategy.aggregate_train(2, [reply(msgs[n], deltas[n], weight=n) for n in (1, 2)])
    # general: the weighted mean of the two sites' final adapters (each from its own bank)
    finals = [{k: starts[n][k] + deltas[n][k] - general[k] for k in bank} for n in (1, 2)]
    expected = weighted_mean(finals, [1, 2])
    new_general = c.store.latest("general")
    for k in bank:
        np.testing.assert_allclose(new_general.state[k], general[k] + expected[k], atol=1e-6)
    # a modality bank: its own sites only, exactly its start + their mean delta
    new_mr = c.store.latest("modality-mr")
    for k in bank:
        np.testing.assert_allclose(new_mr.state[k], starts[1][k] + deltas[1][k], atol=1e-6)
    assert new_general.manifest["sources"] == ["modality-ct@v1", "modality-mr@v1"]


def test_clip_norm_bounds_each_site_delta(tiny_base_2d, tmp_path, task_identity):
    c = make_coordinator(tiny_base_2d, tmp_path / "fed", **{"clip-norm": 0.05})
    msgs = send(c.strategy, {1: "MR"})
    bank = received(msgs[1])
    big = delta_like(bank, 1, scale=1.0)
    assert delta_norm(big) > 1
    c.strategy.aggregate_train(1, [reply(msgs[1], big)])
    new = c.store.latest("general")
    assert delta_norm({k: new.state[k] - bank[k] for k in bank}) == pytest.approx(0.05, rel=1e-4)
    assert new.manifest["clip_norm"] == 0.05


def test_dp_wrapper_adds_noise_before_the_banks_are_written(tiny_base_2d, tmp_path, task_identity):
    c = make_coordinator(tiny_base_2d, tmp_path / "fed", variant=NoisedBankStrategy)
    private = PrivateBankStrategy(c.strategy, noise_multiplier=1.0, clipping_norm=0.1, num_sampled_clients=2)
    msgs = send(c.strategy, {1: "MR", 2: "MR"})
    bank = received(msgs[1])
    deltas = [delta_like(bank, 1), delta_like(bank, 2)]
    updates, metrics = private.aggregate_train(1, [reply(msgs[1], deltas[0]), reply(msgs[2], deltas[1])])
    new = c.store.latest("general")
    noise = {k: new.state[k] - bank[k] - weighted_mean(deltas, [1, 1])[k] for k in bank}
    values = np.concatenate([v.ravel() for v in noise.values()])
    assert np.std(values) == pytest.approx(1.0 * 0.1 / 2, rel=0.2)  # Flower: stdv = multiplier * norm / sites
    assert new.manifest["dp"]["noise_multiplier"] == 1.0
    assert metrics["dp-noise-stdv"] == pytest.approx(0.05)
    assert c.store.versions("general") == [1, 2]  # written once, after the noise


def test_restarted_coordinator_resumes_from_the_bank_store(tiny_base_2d, tmp_path, task_identity):
    first = make_coordinator(tiny_base_2d, tmp_path / "fed")
    msgs = send(first.strategy, {1: "MR", 2: "MR"})
    bank = received(msgs[1])
    first.strategy.aggregate_train(1, [reply(msgs[n], delta_like(bank, n)) for n in (1, 2)])
    after_round_1 = first.store.latest("general")
    del first  # the coordinator is gone; only the disk remains

    second = make_coordinator(tiny_base_2d, tmp_path / "fed")
    assert second.strategy.round_offset == 1
    msgs = send(second.strategy, {1: "MR", 2: "MR"})
    instruction = P.RoundInstruction.from_config(msgs[1].content[P.CONFIG])
    assert (instruction.bank, instruction.bank_version, instruction.server_round) == ("modality-mr", 1, 2)
    msgs = send(second.strategy, {3: "CT", 4: "CT"})  # CT has no bank yet: general v2
    np.testing.assert_array_equal(received(msgs[3])[next(iter(bank))], after_round_1.state[next(iter(bank))])
    second.strategy.aggregate_train(1, [reply(msgs[n], delta_like(bank, n)) for n in (3, 4)])
    latest = second.store.latest("general")
    assert (latest.version, latest.manifest["round"], latest.manifest["parent"]) == (3, 2, 2)
    rounds = json.loads((tmp_path / "fed" / "federation.json").read_text())["rounds"]
    assert [r["round"] for r in rounds] == [1, 2]


def test_a_store_made_for_another_adapter_is_refused(tiny_base_2d, tmp_path, task_identity):
    make_coordinator(tiny_base_2d, tmp_path / "fed")
    with pytest.raises(ValueError, match="use another bank-store"):
        make_coordinator(tiny_base_2d, tmp_path / "fed", **{"adapter-kind": "norm+stem"})


def test_the_privacy_variant_is_chosen_by_name_when_the_strategy_is_built(coordinator):
    from fedpoint.server.strategy import bank_strategy_of, build_strategy

    c = coordinator
    kwargs = dict(fingerprint=c.adapter.base_fingerprint, schema=c.adapter.schema())
    plain = build_strategy("none", c.store, CoordinatorPolicy.from_config(c.fed), **kwargs)
    assert type(plain) is BankStrategy and plain.commits_round and bank_strategy_of(plain) is plain
    private = build_strategy("central-dp", c.store, CoordinatorPolicy.from_config(c.fed), noise_multiplier=0.5,
                             clipping_norm=0.1, **kwargs)
    assert isinstance(private, PrivateBankStrategy) and type(bank_strategy_of(private)) is NoisedBankStrategy
    assert not bank_strategy_of(private).commits_round and private.noise_multiplier == 0.5
    with pytest.raises(TypeError, match="NoisedBankStrategy"):  # a committing strategy would write before the noise
        PrivateBankStrategy(c.strategy, noise_multiplier=1.0, clipping_norm=0.1, num_sampled_clients=2)
    with pytest.raises(ValueError, match="unknown privacy variant"):
        build_strategy("local-dp", c.store, **kwargs)
    assert FederationConfig().privacy == "none"
    assert parse_run_config({"dp-noise-multiplier": 0.5}).privacy == "central-dp"
