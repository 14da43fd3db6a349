"""Task banks: one bank per structure, beside the general and modality banks; a task bank learns
from its own task's sites only, and the ledger says which bank a site received and why."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import ConfigRecord
from test_strategy import delta_like, last_round, make_coordinator, received, reply

from fedpoint.server.routing import GENERAL, banks_to_update, route, task_bank
from fedpoint.server.strategy import SiteInfo
from fedpoint.shared import protocol as P


def test_task_bank_names_follow_the_normalised_structure_name():
    assert task_bank("Lung field") == task_bank("lung_field") == "task-lung-field"
    with pytest.raises(ValueError, match="default task"):
        task_bank("default")
    assert banks_to_update("CT", "banks", "Lesion core") == [GENERAL, "modality-ct", "task-lesion-core"]
    assert banks_to_update("CT", "general", "lesion-core") == [GENERAL]
    existing = [GENERAL, "modality-ct", "task-lesion-core"]
    assert route("CT", "banks", existing, "lesion core") == ("task-lesion-core", "task bank of 'lesion-core'")
    bank, why = route("CT", "banks", existing, "lesion-margin")
    assert bank == "modality-ct" and "no bank of task 'lesion-margin' yet" in why
    assert route("MR", "banks", existing, None)[0] == GENERAL


@pytest.fixture
def coordinator(tiny_base_2d, tmp_path, task_identity):
    return make_coordinator(tiny_base_2d, tmp_path / "fed")


def _send(strategy, sites, server_round):
    """Node n is site "site-n" with the given (modality, task)."""
    strategy.sent = {}
    for node, (modality, task) in sites.items():
        strategy.sites[node] = SiteInfo(f"site-{node}", modality, task)
    return {node: strategy.instruct(node, server_round, ConfigRecord()) for node in sites}


def _reply(msg, delta, task):
    out = reply(msg, delta)
    if task:
        out.content[P.CONFIG][P.TASK] = task
    return out


def test_a_task_bank_never_receives_another_tasks_delta(coordinator):
    c = coordinator
    sites = {1: ("CT", "lesion-core"), 2: ("CT", "lesion-margin"), 3: ("CT", "lesion-core")}
    msgs = _send(c.strategy, sites, 1)
    bank = received(msgs[1])
    deltas = {n: delta_like(bank, n) for n in sites}
    c.strategy.aggregate_train(1, [_reply(msgs[n], deltas[n], sites[n][1]) for n in sites])
    assert c.store.banks() == ["general", "modality-ct", "task-lesion-core", "task-lesion-margin"]
    # each task bank: the general bank its sites trained from + the mean delta of its own sites
    start = bank  # every site trained from the general bank's first version
    core, margin = c.store.latest("task-lesion-core"), c.store.latest("task-lesion-margin")
    for k in bank:
        np.testing.assert_allclose(margin.state[k], start[k] + deltas[2][k], atol=1e-6)
        np.testing.assert_allclose(core.state[k], start[k] + (deltas[1][k] + deltas[3][k]) / 2, atol=1e-6)

    # round 2: each site receives its own task's bank, and the ledger says so and why
    msgs = _send(c.strategy, sites, 2)
    assert [msgs[n].content[P.CONFIG][P.BANK] for n in sites] == ["task-lesion-core", "task-lesion-margin",
                                                                 "task-lesion-core"]
    margin_before = c.store.latest("task-lesion-margin")
    new = {n: delta_like(bank, 10 + n) for n in sites}
    c.strategy.aggregate_train(2, [_reply(msgs[n], new[n], sites[n][1]) for n in (1, 3)])  # only the core sites reply
    assert c.store.latest("task-lesion-margin").version == margin_before.version  # untouched by the core sites
    ledger = last_round(c)["sites"]
    assert ledger["site-2"]["route"] == "task bank of 'lesion-margin'" and ledger["site-2"]["task"] == "lesion-margin"
    assert ledger["site-1"]["bank"] == "task-lesion-core"


def test_a_reply_that_claims_another_task_is_rejected(coordinator):
    c = coordinator
    msgs = _send(c.strategy, {1: ("CT", "lesion-core"), 2: ("CT", "lesion-core")}, 1)
    bank = received(msgs[1])
    c.strategy.aggregate_train(1, [_reply(msgs[1], delta_like(bank, 1), "lesion-margin"),
                                   _reply(msgs[2], delta_like(bank, 2), "lesion-core")])
    site = last_round(c)["sites"]["site-1"]
    assert site["status"] == "rejected" and "declared" in site["reason"] and "lesion-margin" in site["reason"]
    assert "task-lesion-margin" not in c.store.banks()


def _query_reply(node: int, config: dict):
    from flwr.app import Message, MessageType, RecordDict

    query = Message(RecordDict({P.CONFIG: ConfigRecord({})}), dst_node_id=node, message_type=MessageType.QUERY)
    return Message(RecordDict({P.CONFIG: ConfigRecord(config)}), reply_to=query)


def test_the_identity_query_carries_the_task_normalised_and_refuses_a_bad_one(task_identity):
    from fedpoint.server.intake import read_identity

    info = read_identity(7, _query_reply(7, {P.SITE_ID: "site-7", P.MODALITY: "CT", P.TASK: "Lesion  Core"}), {}, None)
    assert info.task == "lesion-core"
    assert read_identity(8, _query_reply(8, {P.SITE_ID: "site-8", P.MODALITY: "CT"}), {}, None).task is None
    for bad in ("../liver", "liver\nWARNING forged", "x" * 200):
        with pytest.raises(ValueError) as err:
            read_identity(9, _query_reply(9, {P.SITE_ID: "site-9", P.MODALITY: "CT", P.TASK: bad}), {}, None)
        assert "\n" not in str(err.value)
