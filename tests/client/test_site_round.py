"""A site's round and its ClientApp, with the real tiny base, real files and real Flower Messages:
simulated streams that continue across rounds, episodes on a deployment cache, refusal of a
foreign base, the egress check, and Flower's client-side DP clipping."""

from __future__ import annotations

import json

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict

from fedpoint.client.client_app import build_client_app, check_reply, egress_mod
from fedpoint.client.site_round import SiteIdentity, identify, load_site_base, train_round
from fedpoint.client.site_store import SiteStore
from fedpoint.server.checks import delta_norm
from fedpoint.shared import protocol as P
from fedpoint.shared.adapters import AdapterMismatchError, make_adapter
from fedpoint.shared.payload import EgressError, to_numpy
from fedpoint.shared.run_config import FederationConfig, parse_run_config


@pytest.fixture
def fed(fast_run_config) -> FederationConfig:
    return parse_run_config(fast_run_config)


def bank_of(fed: FederationConfig, server_round: int = 1, version: int = 1, fingerprint: str | None = None):
    """(bank arrays, instruction) as the coordinator would send them: the untrained base adapter."""
    base, _, real = load_site_base(fed.base)
    adapter = make_adapter(base, fed.adapter_config(), real)
    instruction = P.RoundInstruction(server_round=server_round, bank="general", bank_version=version,
                                     base_fingerprint=fingerprint or real, **P.instruction_settings(fed))
    return to_numpy(adapter.state()), instruction


def test_simulated_site_annotates_its_stream_round_after_round(fed):
    site = identify({P.PARTITION_ID: 1, P.NUM_PARTITIONS: 2}, fed)
    assert (site.site_id, site.modality, site.simulated) == ("ct-site", "CT", True)
    bank, first = bank_of(fed)
    reply = train_round(bank, first, site, fed)
    assert list(reply.arrays) == list(bank)  # same names, same order as received
    assert delta_norm(reply.arrays) > 0
    assert reply.metrics[P.NUM_EXAMPLES] == 2 and reply.metrics["images"] == 2
    assert 0 <= reply.metrics["dice1"] <= 1 and reply.metrics["clicks"] <= fed.clicks
    assert reply.config == {P.SITE_ID: "ct-site", P.MODALITY: "CT", P.BANK: "general", P.BANK_VERSION: 1,
                            P.BASE_FINGERPRINT: first.base_fingerprint}

    _, second = bank_of(fed, server_round=2)
    train_round(bank, second, site, fed)
    records = fed.output_path / "records" / "ct-site"
    rounds = [json.loads((records / f"round-{r:04d}.json").read_text()) for r in (1, 2)]
    assert [[rec["index"] for rec in r["records"]] for r in rounds] == [[0, 1], [2, 3]]  # the stream continues
    store = SiteStore(site.store)
    assert len(store.case_ids()) == 4  # every accepted annotation is in the site's cache
    assert store.latest_bank() == store.root / "banks" / "general" / "v0001"


def test_a_simulated_site_loads_the_stream_the_runner_built(fed, tmp_path):
    from fedpoint.client.site_round import simulated_site
    from fedpoint.configs import resolve_config
    from fedpoint.data import build_site, load_site_specs, save_site_stream

    spec = load_site_specs(resolve_config(fed.sites_config))[1]
    built = build_site(spec, size=(fed.size, fed.size))
    built.samples = built.samples[:2]
    built.samples[0].image = np.zeros_like(built.samples[0].image)  # not what building would give
    save_site_stream(built, tmp_path)
    loaded = simulated_site(fed.sites_config, 1, fed.size, 2, str(tmp_path))
    assert (loaded.name, loaded.modality, len(loaded.samples)) == (spec.name, built.modality, 2)
    assert not loaded.samples[0].image.any() and np.array_equal(loaded.samples[1].mask, built.samples[1].mask)
    rebuilt = simulated_site(fed.sites_config, 1, fed.size, 2, str(tmp_path / "none"))  # no stream: built
    assert rebuilt.samples[0].image.any()


def test_a_bank_made_on_another_base_is_refused(fed):
    site = identify({P.PARTITION_ID: 0, P.NUM_PARTITIONS: 2}, fed)
    bank, instruction = bank_of(fed, fingerprint="f" * 32)
    with pytest.raises(AdapterMismatchError, match="refusing"):
        train_round(bank, instruction, site, fed)
    assert not (site.store / "banks" / "general").exists()


def test_a_deployed_site_runs_an_episode_on_its_annotation_cache(fed, blob, tmp_path):
    store = SiteStore(tmp_path / "hospital")
    for i in range(5):
        image, mask = blob((32, 32), seed=20 + i)
        store.add_case(f"case-{i}", image, mask)
    site = identify({P.NODE_SITE_ID: "hospital-a", P.NODE_MODALITY: "MR", P.NODE_SITE_STORE: str(store.root)}, fed)
    assert not site.simulated
    bank, instruction = bank_of(fed)
    reply = train_round(bank, instruction, site, fed)
    assert reply.metrics["episodes"] == 1
    assert reply.metrics[P.NUM_EXAMPLES] == len(store.splits()["train"]) == 3  # 60/20/20 of 5 cases
    assert store.current_adapter() is None, "the ClientApp writes versions; it never makes one current"
    assert [e["event"] for e in store.read_log()].count("episode") == 1
    if reply.metrics["episode-accepted"]:
        assert delta_norm(reply.arrays) > 0
    else:
        assert delta_norm(reply.arrays) == 0


def test_a_deployed_site_with_too_few_cases_sends_no_weight(fed, tmp_path):
    site = SiteIdentity("hospital-b", "CT", tmp_path / "empty-store")
    bank, instruction = bank_of(fed)
    reply = train_round(bank, instruction, site, fed)
    assert reply.metrics[P.NUM_EXAMPLES] == 0 and delta_norm(reply.arrays) == 0


def test_identify_explains_a_bad_node_config(fed):
    with pytest.raises(ValueError, match="site-store"):
        identify({P.NODE_SITE_ID: "h1", P.NODE_MODALITY: "MR"}, fed)
    with pytest.raises(ValueError, match="partition-id"):
        identify({}, fed)
    with pytest.raises(ValueError, match="2 sites"):
        identify({P.PARTITION_ID: 5, P.NUM_PARTITIONS: 6}, fed)
    with pytest.raises(ValueError, match="invalid site id"):
        identify({P.NODE_SITE_ID: "../etc", P.NODE_MODALITY: "MR", P.NODE_SITE_STORE: "/tmp/x"}, fed)


# ------------------------------------------------------------------------------ egress
def test_egress_check_refuses_anything_but_adapter_parameters(fed):
    bank, _ = bank_of(fed)
    schema = {k: (v.shape, v.dtype.name) for k, v in bank.items()}
    delta = {k: np.zeros_like(v) for k, v in bank.items()}
    ok_config = {P.SITE_ID: "s", P.MODALITY: "MR"}
    check_reply(delta, schema, {P.NUM_EXAMPLES: 3, "dice1": 0.5}, ok_config)
    first = next(iter(delta))
    cases = {
        "not an adapter parameter": ({**delta, "image": np.zeros((32, 32), np.float32)}, {}, ok_config),
        "shape": ({**delta, first: np.zeros(delta[first].size + 1, np.float32)}, {}, ok_config),
        "dtype": ({**delta, first: delta[first].astype(np.float64)}, {}, ok_config),
        "missing": ({k: v for k, v in delta.items() if k != first}, {}, ok_config),
        "metric 'case-id'": (delta, {"case-id": 1.0}, ok_config),
        "int or float": (delta, {"dice1": [0.5, 0.7]}, ok_config),
        "reply field 'clicks'": (delta, {}, {**ok_config, "clicks": "12,40;13,41"}),
        "characters long": (delta, {}, {P.SITE_ID: "x" * 500}),
    }
    for expected, (arrays, metrics, config) in cases.items():
        with pytest.raises(EgressError, match=expected):
            check_reply(arrays, schema, metrics, config)


def train_message(bank: dict, instruction: P.RoundInstruction, extra_config: dict | None = None) -> Message:
    content = RecordDict({
        P.ARRAYS: ArrayRecord(array_dict={k: Array(v) for k, v in bank.items()}),
        P.CONFIG: ConfigRecord({**instruction.to_config(), **(extra_config or {})}),
    })
    return Message(content, dst_node_id=11, message_type="train")


def site_context(node_config: dict) -> Context:
    return Context(run_id=1, node_id=11, node_config=node_config, state=RecordDict(), run_config={})


def test_client_app_mod_blocks_a_reply_with_anything_extra(task_identity):
    """Whatever a handler returns passes the egress mod before it can leave."""
    from flwr.clientapp import ClientApp

    leaky = ClientApp(mods=[egress_mod])

    @leaky.train()
    def train(msg, context):
        arrays = {k: v.numpy() for k, v in msg.content[P.ARRAYS].items()}
        arrays["image"] = np.ones((32, 32), np.float32)
        content = RecordDict({P.ARRAYS: ArrayRecord(array_dict={k: Array(v) for k, v in arrays.items()}),
                              P.METRICS: MetricRecord({P.NUM_EXAMPLES: 1})})
        return Message(content, reply_to=msg)

    @leaky.query()
    def query(msg, context):
        return Message(RecordDict({"mask": ArrayRecord(array_dict={"m": Array(np.ones(4, np.float32))})}), reply_to=msg)

    msg = Message(RecordDict({P.ARRAYS: ArrayRecord(array_dict={"w": Array(np.zeros(3, np.float32))}),
                              P.CONFIG: ConfigRecord({})}), dst_node_id=11, message_type="train")
    with pytest.raises(EgressError, match="'image' is not an adapter parameter"):
        leaky(msg, site_context({}))
    query_msg = Message(RecordDict({P.CONFIG: ConfigRecord({})}), dst_node_id=11, message_type="query")
    with pytest.raises(EgressError, match="'mask'"):
        leaky(query_msg, site_context({}))

    @leaky.evaluate()
    def evaluate(msg, context):  # sends the bank back, shaped exactly as received: still refused
        return Message(RecordDict({P.ARRAYS: msg.content[P.ARRAYS], P.METRICS: MetricRecord({"eval-cases": 1})}),
                       reply_to=msg)

    evaluate_msg = Message(msg.content, dst_node_id=11, message_type="evaluate")
    with pytest.raises(EgressError, match="scores only"):
        leaky(evaluate_msg, site_context({}))


def test_client_app_refuses_to_fill_an_array_it_does_not_own(fed, fast_run_config, task_identity):
    """A coordinator that slips a non-adapter array into the bank gets an error, not the array back."""
    bank, instruction = bank_of(fed)
    app = build_client_app(fast_run_config)
    msg = train_message({**bank, "image": np.zeros((32, 32), np.float32)}, instruction)
    out = app(msg, site_context({P.PARTITION_ID: 0, P.NUM_PARTITIONS: 2}))
    assert out.has_error() and out.error.code == P.SITE_ERRORS["adapter-mismatch"]
    assert "image" not in out.error.reason  # a fixed code leaves the site, not the exception text


def test_client_app_trains_answers_queries_and_clips_under_dp(fed, fast_run_config, task_identity):
    app = build_client_app(fast_run_config)
    context = site_context({P.PARTITION_ID: 0, P.NUM_PARTITIONS: 2})
    who = app(Message(RecordDict({P.CONFIG: ConfigRecord({})}), dst_node_id=11, message_type="query"), context)
    assert dict(who.content[P.CONFIG]) == {P.SITE_ID: "mr-site", P.MODALITY: "MR"}

    bank, instruction = bank_of(fed)
    plain = app(train_message(bank, instruction), context)
    delta = {k: v.numpy() for k, v in plain.content[P.ARRAYS].items()}
    assert list(delta) == list(bank) and delta_norm(delta) > 1e-3
    assert set(plain.content.keys()) == {P.ARRAYS, P.METRICS, P.CONFIG}

    _, round_2 = bank_of(fed, server_round=2)
    clipped = app(train_message(bank, round_2, {P.CLIPPING_NORM: 1e-3}), context)
    delta = {k: v.numpy() for k, v in clipped.content[P.ARRAYS].items()}
    assert list(delta) == list(bank)
    assert delta_norm(delta) == pytest.approx(1e-3, rel=1e-2)  # a delta again, clipped by Flower's mod


# ------------------------------------------------------------------------------ the federated evaluation round
def test_the_evaluation_round_scores_the_bank_on_held_out_cases_and_sends_only_scores(fed, fast_run_config, blob, tmp_path,
                                                                                   task_identity):
    """A deployed site scores the bank sent on its validation and judgement cases: two numbers
    and the bank's name and version leave, no array; a bad bank is scored differently."""
    store = SiteStore(tmp_path / "hospital")
    for i in range(6):
        image, mask = blob((32, 32), seed=40 + i)
        store.add_case(f"case-{i}", image, mask)
    node = {P.NODE_SITE_ID: "hospital-a", P.NODE_MODALITY: "MR", P.NODE_SITE_STORE: str(store.root)}
    bank, instruction = bank_of(fed, server_round=3, version=2)
    app = build_client_app(fast_run_config)
    msg = train_message(bank, instruction)
    msg = Message(msg.content, dst_node_id=11, message_type="evaluate")
    out = app(msg, site_context(node))
    assert not out.has_error(), out.error
    assert set(out.content.keys()) == {P.METRICS, P.CONFIG} and not out.content.array_records  # scores only
    metrics = dict(out.content[P.METRICS])
    splits = store.splits()
    assert metrics["eval-cases"] == len(splits["val"] + splits["judge"]) == 2 and 0 <= metrics["eval-dice-auc"] <= 1
    assert dict(out.content[P.CONFIG]) == {P.SITE_ID: "hospital-a", P.BANK: "general", P.BANK_VERSION: 2}
    # a wrecked bank (every norm weight zero) scores lower on the same cases
    wrecked = {k: (np.zeros_like(v) if "weight" in k else v) for k, v in bank.items()}
    worse = dict(app(Message(train_message(wrecked, instruction).content, dst_node_id=11, message_type="evaluate"),
                     site_context(node)).content[P.METRICS])
    assert worse["eval-dice-auc"] < metrics["eval-dice-auc"]
    # a bank made on another base is refused with a fixed error code, nothing scored
    foreign, other = bank_of(fed, fingerprint="f" * 32)
    refused = app(Message(train_message(foreign, other).content, dst_node_id=11, message_type="evaluate"), site_context(node))
    assert refused.has_error() and refused.error.code == P.SITE_ERRORS["adapter-mismatch"]


# ------------------------------------------------------------------------------ the site's device
def test_the_node_configs_device_reaches_the_training_round(fed, fast_run_config, task_identity, monkeypatch):
    """The ClientApp resolves the node config's `device` and trains the round's model on it."""
    import fedpoint.client.site_model as site_model
    import fedpoint.client.site_round as site_round

    seen = {"train_round": [], "model": []}
    real_round, real_model = site_round.train_round, site_model.SiteModel

    def spy_round(*args, **kwargs):
        seen["train_round"].append(kwargs.get("device"))
        return real_round(*args, **kwargs)

    class SpyModel(real_model):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            seen["model"].append(str(self.device))

    monkeypatch.setattr(site_round, "train_round", spy_round)
    monkeypatch.setattr(site_model, "SiteModel", SpyModel)
    bank, instruction = bank_of(fed)
    out = build_client_app(fast_run_config)(train_message(bank, instruction),
                                            site_context({P.PARTITION_ID: 0, P.NUM_PARTITIONS: 2, "device": "cpu"}))
    assert not out.has_error(), out.error
    assert seen == {"train_round": ["cpu"], "model": ["cpu"]}  # the CPU path: what it always was


def test_a_cuda_request_on_a_machine_without_cuda_fails_before_the_round_starts(fed, fast_run_config, task_identity,
                                                                              monkeypatch, tmp_path):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a CUDA-less machine, whatever this one has
    node = {P.NODE_SITE_ID: "hospital-a", P.NODE_MODALITY: "MR", P.NODE_SITE_STORE: str(tmp_path / "store"),
            "device": "cuda"}
    bank, instruction = bank_of(fed)
    out = build_client_app(fast_run_config)(train_message(bank, instruction), site_context(node))
    assert out.has_error() and out.error.code == P.SITE_ERRORS["device-unavailable"]
    assert not (tmp_path / "store" / "banks").exists()  # nothing received, loaded or trained
