"""The coordinator's intake: a site's messages read into records or refused with why, without a strategy."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MessageType, MetricRecord, RecordDict

from fedpoint.server.intake import eval_case_cap, read_replies, read_reply, read_scores
from fedpoint.server.records import Sent, SiteInfo
from fedpoint.server.registry import SiteEntry, SiteRegistry
from fedpoint.shared import protocol as P
from fedpoint.shared.payload import EgressError

SENT = {5: Sent("modality-ct", 3, 64), 6: Sent("general", 2, 64)}
SITES = {5: SiteInfo("ct-a", "CT"), 6: SiteInfo("mr-a", "MR")}


def answer(node: int, content: dict, message_type: str = MessageType.TRAIN) -> Message:
    asked = Message(RecordDict({P.CONFIG: ConfigRecord({})}), dst_node_id=node, message_type=message_type)
    return Message(RecordDict(content), reply_to=asked)


def trained(node: int, config: dict | None = None, weight: float = 3, extra: dict | None = None) -> Message:
    delta = {"w": np.full(4, 0.1, np.float32)}
    return answer(node, {
        P.ARRAYS: ArrayRecord(array_dict={k: Array(v) for k, v in delta.items()}),
        P.METRICS: MetricRecord({P.NUM_EXAMPLES: weight, "dice1": 0.5}),
        P.CONFIG: ConfigRecord({P.SITE_ID: SITES[node].site_id, P.BASE_FINGERPRINT: "fp", **(config or {})}),
        **(extra or {}),
    })


def test_a_reply_becomes_a_record_relative_to_what_was_sent(task_identity):
    reply = read_reply(trained(5, {P.BANK: "modality-ct", P.BANK_VERSION: 3}), SENT[5], SITES[5])
    assert (reply.site_id, reply.source, reply.weight, reply.fingerprint) == ("ct-a", ("modality-ct", 3), 3, "fp")
    assert reply.metrics == {"dice1": 0.5}  # the weight is not a metric
    np.testing.assert_array_equal(reply.delta["w"], np.full(4, 0.1, np.float32))


@pytest.mark.parametrize("config, extra, why", [
    ({P.SITE_ID: "mr-a"}, None, "node 5 is site 'ct-a'"),
    ({P.MODALITY: "MR"}, None, "claims modality"),
    ({P.BANK_VERSION: 2}, None, "but 3 was sent"),
    ({"path": "/data"}, None, "unknown fields"),
    ({}, {"images": ConfigRecord({})}, "records besides"),
])
def test_claims_that_are_not_the_nodes_are_refused(task_identity, config, extra, why):
    with pytest.raises((ValueError, EgressError), match=why):
        read_reply(trained(5, config, extra=extra), SENT[5], SITES[5])


def test_a_round_of_messages_reads_into_replies_and_outcomes(task_identity):
    failed = Message(Error(code=P.SITE_ERRORS["train-failed"], reason="x"),
                     reply_to=Message(RecordDict({}), dst_node_id=6, message_type=MessageType.TRAIN))
    parsed, outcomes = read_replies([trained(5), failed], SENT, SITES)
    assert list(parsed) == [5] and outcomes[6].status == "failed" and "train-failed" in outcomes[6].reason
    parsed, outcomes = read_replies([trained(5, {P.SITE_ID: "mr-a"})], SENT, SITES)
    assert parsed == {} and outcomes[5].status == "rejected" and outcomes[5].reason.startswith("unreadable reply")
    parsed, outcomes = read_replies([trained(5)], {6: SENT[6]}, SITES)
    assert parsed == {} and outcomes == {}  # node 5 was not asked: its message is not this round's


def test_scores_are_read_within_the_sites_cap(task_identity):
    def scores(cases, dice=0.7, version=3):
        return answer(5, {P.METRICS: MetricRecord({"eval-cases": cases, "eval-dice-auc": dice}),
                          P.CONFIG: ConfigRecord({P.BANK: "modality-ct", P.BANK_VERSION: version})}, MessageType.EVALUATE)

    assert read_scores(scores(4), SENT[5]) == (4, 0.7)
    registry = SiteRegistry([SiteEntry("ct-a", "CT", node_id=5, max_weight=3)])
    assert eval_case_cap("ct-a", registry) == 3 and eval_case_cap("ct-a", None) == P.EVAL_MAX_CASES
    with pytest.raises(EgressError, match="more than a site scores"):
        read_scores(scores(4), SENT[5], eval_case_cap("ct-a", registry))
    with pytest.raises(EgressError, match="not the version sent"):
        read_scores(scores(4, version=2), SENT[5])
    with pytest.raises(EgressError, match="a score on 0 cases"):
        read_scores(scores(0), SENT[5])


def test_an_evaluation_round_reads_into_scores_per_version(task_identity):
    from fedpoint.server.intake import read_evaluations

    def scores(node, cases, version):
        bank = SENT[node].bank
        return answer(node, {P.METRICS: MetricRecord({"eval-cases": cases, "eval-dice-auc": 0.6}),
                             P.CONFIG: ConfigRecord({P.BANK: bank, P.BANK_VERSION: version})}, MessageType.EVALUATE)

    failed = Message(Error(code=P.SITE_ERRORS["evaluate-failed"], reason="x"),
                     reply_to=Message(RecordDict({}), dst_node_id=7, message_type=MessageType.EVALUATE))
    per_site, per_version, answered = read_evaluations([scores(5, 4, 3), scores(6, 2, 1), failed], SENT, SITES)
    assert per_version == {("modality-ct", 3): {"ct-a": (4, 0.6)}}
    assert per_site["ct-a"]["status"] == "scored" and per_site["mr-a"]["status"] == "refused"
    assert "not the version sent" in per_site["mr-a"]["reason"] and per_site["node-7"]["status"] == "failed"
    assert answered == {5, 6, 7}
