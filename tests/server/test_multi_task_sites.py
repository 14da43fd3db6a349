"""Sites of several tasks: one message a round, for one of its tasks taken in turn; the reply
updates that task's bank only; a reply that claims another task than the one sent is refused; a
site of one task is sent what it always was; a restarted coordinator continues the turn."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from test_strategy import delta_like, last_round, make_coordinator, received, reply

from fedpoint.server.intake import read_identity
from fedpoint.server.routing import task_in_turn
from fedpoint.server.strategy import SiteInfo
from fedpoint.shared import protocol as P
from fedpoint.shared.payload import EgressError

LIVER_LESION = ("liver", "lesion")
# node 1 labels a liver and its lesions; nodes 2 and 3 one structure each
SITES = {1: SiteInfo("organ", "CT", tasks=LIVER_LESION), 2: SiteInfo("liver-b", "CT", "liver"),
         3: SiteInfo("lesion-b", "CT", "lesion")}
NAMES = {1: "organ", 2: "liver-b", 3: "lesion-b", 4: "plain"}


@pytest.fixture
def coordinator(tiny_base_2d, tmp_path, task_identity):
    return make_coordinator(tiny_base_2d, tmp_path / "fed")


def _send(strategy, sites: dict[int, SiteInfo], server_round: int) -> dict[int, Message]:
    strategy.sent = {}
    strategy.sites.update(sites)
    return {node: strategy.instruct(node, server_round, ConfigRecord()) for node in sites}


def _reply(msg: Message, delta: dict, task: str | None) -> Message:
    """A site's reply to `msg` (node n is NAMES[n]) claiming `task`."""
    out = reply(msg, delta)
    out.content[P.CONFIG][P.SITE_ID] = NAMES[msg.metadata.dst_node_id]
    if task:
        out.content[P.CONFIG][P.TASK] = task
    return out


def _states(c) -> dict[str, tuple[int, dict]]:
    """Each bank's (latest version, its state in the adapter's parameter order, as sent)."""
    return {b: (c.store.latest(b).version, _state(c, b)) for b in c.store.banks()}


def _state(c, bank: str) -> dict:
    latest = c.store.latest(bank).state
    return {k: latest[k] for k in c.adapter.schema()}


def _same(a: tuple[int, dict], b: tuple[int, dict]) -> bool:
    return a[0] == b[0] and a[1].keys() == b[1].keys() and all(np.array_equal(a[1][k], b[1][k]) for k in a[1])


def _round(c, server_round: int, seed: int, claims: dict[int, str | None] | None = None):
    """One round of the three sites; each reply claims the task it was sent (or `claims[node]`)."""
    msgs = _send(c.strategy, SITES, server_round)
    sent = {n: c.strategy.sent[n].task for n in SITES}
    bank = received(msgs[1])
    claims = {n: sent[n] for n in SITES} | (claims or {})
    c.strategy.aggregate_train(server_round, [_reply(msgs[n], delta_like(bank, seed + n), claims[n]) for n in SITES])
    return msgs, sent


def _plus_mean(state: dict, *seeds: int) -> dict:
    """A bank state (in the order sent) plus the mean of the deltas `delta_like(state, seed)` (equal weights)."""
    deltas = [delta_like(state, seed) for seed in seeds]
    return {k: state[k] + sum(d[k] for d in deltas) / len(deltas) for k in state}


def _close(a: dict, b: dict) -> None:
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=0, atol=1e-6)


def test_a_two_task_site_gets_each_tasks_bank_in_turn_and_updates_only_it(coordinator):
    c = coordinator
    general = _state(c, "general")
    msgs, sent = _round(c, 1, 0)
    assert sent == {1: "liver", 2: "liver", 3: "lesion"}
    assert msgs[1].content[P.CONFIG][P.TASK] == "liver"  # the instruction names the task
    assert P.TASK not in msgs[2].content[P.CONFIG]  # a site of one task is sent none, as before
    assert P.RoundInstruction.from_config(msgs[1].content[P.CONFIG]).task == "liver"
    row = last_round(c)["sites"]["organ"]
    assert (row["task"], row["tasks"], row["status"]) == ("liver", ["liver", "lesion"], "accepted")
    assert row["route"] == "task 'liver' in turn (1 of 2: liver, lesion): general bank (no bank of task 'liver' or modality 'CT' yet)"
    _close(_state(c, "task-liver"), _plus_mean(general, 1, 2))  # organ's liver delta and liver-b's
    _close(_state(c, "task-lesion"), _plus_mean(general, 3))  # lesion-b's alone

    # round 2: its lesion task, from the lesion bank; task-liver is fed by liver-b alone
    before = _states(c)
    msgs, sent = _round(c, 2, 10)
    assert sent[1] == "lesion" and msgs[1].content[P.CONFIG][P.BANK] == "task-lesion"
    assert msgs[1].content[P.CONFIG][P.TASK] == "lesion"
    row = last_round(c)["sites"]["organ"]
    assert (row["task"], row["bank"], row["status"]) == ("lesion", "task-lesion", "accepted")
    assert row["route"] == "task 'lesion' in turn (2 of 2: liver, lesion): task bank of 'lesion'"
    _close(_state(c, "task-liver"), _plus_mean(before["task-liver"][1], 12))  # never the organ's lesion delta
    _close(_state(c, "task-lesion"), _plus_mean(before["task-lesion"][1], 11, 13))

    # round 3: liver again; only organ and liver-b reply (lesion-b is silent): task-lesion stays bit-identical
    before = _states(c)
    msgs = _send(c.strategy, SITES, 3)
    assert c.strategy.sent[1].task == "liver" and msgs[1].content[P.CONFIG][P.BANK] == "task-liver"
    bank = received(msgs[1])
    c.strategy.aggregate_train(3, [_reply(msgs[n], delta_like(bank, 20 + n), c.strategy.sent[n].task) for n in (1, 2)])
    after = _states(c)
    assert _same(after["task-lesion"], before["task-lesion"])
    _close(after["task-liver"][1], _plus_mean(before["task-liver"][1], 21, 22))


def test_a_reply_claiming_another_task_than_the_one_sent_is_refused(coordinator):
    c = coordinator
    _round(c, 1, 0)  # organ: liver
    before = _states(c)
    _round(c, 2, 10, claims={1: "liver"})  # sent lesion, claims liver: a task it declares, but not this round's
    row = last_round(c)["sites"]["organ"]
    assert row["status"] == "rejected" and row["task"] == "lesion"
    reason = row["reason"].replace("\\", "")  # quotes escaped in the ledger
    assert "claims task 'liver'" in reason and "was sent task 'lesion'" in reason
    assert "declared: 'liver', 'lesion'" in reason
    # neither task bank took the organ's delta: each holds its own single-task site's alone
    _close(_state(c, "task-liver"), _plus_mean(before["task-liver"][1], 12))
    _close(_state(c, "task-lesion"), _plus_mean(before["task-lesion"][1], 13))


def test_a_site_of_one_task_is_sent_what_it_always_was(coordinator):
    c = coordinator
    msgs = _send(c.strategy, {2: SiteInfo("liver-b", "CT", "liver"), 4: SiteInfo("plain", "MR")}, 1)
    for msg in msgs.values():
        assert P.TASK not in msg.content[P.CONFIG]
        assert P.RoundInstruction.from_config(msg.content[P.CONFIG]).task is None
    bank = received(msgs[2])
    c.strategy.aggregate_train(1, [_reply(msgs[2], delta_like(bank, 2), "liver"), _reply(msgs[4], delta_like(bank, 4), None)])
    rows = last_round(c)["sites"]
    assert rows["liver-b"]["task"] == "liver" and "tasks" not in rows["liver-b"]
    assert rows["liver-b"]["route"] == "general bank (no bank of task 'liver' or modality 'CT' yet)"
    assert "task" not in rows["plain"] and "tasks" not in rows["plain"]
    assert {r["status"] for r in rows.values()} == {"accepted"}
    assert c.store.banks() == ["general", "modality-ct", "modality-mr", "task-liver"]
    # every round the same task, however many rounds it had
    for server_round in (2, 3):
        _send(c.strategy, {2: SiteInfo("liver-b", "CT", "liver")}, server_round)
        assert c.strategy.sent[2].task == "liver" and c.strategy.sent[2].bank == "task-liver"


def test_a_restarted_coordinator_continues_the_turn(tiny_base_2d, tmp_path, task_identity):
    first = make_coordinator(tiny_base_2d, tmp_path / "fed")
    _round(first, 1, 0)
    _round(first, 2, 10)
    del first  # gone; the ledger and the bank store remain
    second = make_coordinator(tiny_base_2d, tmp_path / "fed")
    assert second.strategy.round_offset == 2
    msgs = _send(second.strategy, SITES, 1)
    assert second.strategy.sent[1].task == "liver"  # round 3 of the federation: liver, lesion, liver
    assert msgs[1].content[P.CONFIG][P.SERVER_ROUND] == 3
    assert second.strategy.sent[1].route.startswith("task 'liver' in turn (1 of 2")
    second.strategy.aggregate_train(1, [])  # a round where no site answered still counts in the turn
    _send(second.strategy, SITES, 2)
    assert second.strategy.sent[1].task == "lesion"


def test_the_evaluation_round_scores_the_bank_of_the_task_trained(coordinator):
    c = coordinator
    _round(c, 1, 0)
    evaluate = {m.metadata.dst_node_id: m for m in c.strategy.configure_evaluate(1, None, ConfigRecord(), None)}
    config = evaluate[1].content[P.CONFIG]
    assert (config[P.TASK], config[P.BANK]) == ("liver", "task-liver")
    assert c.strategy.sent[1].task == "liver"  # the ledger keeps the training sends
    assert evaluate[3].content[P.CONFIG][P.BANK] == "task-lesion" and P.TASK not in evaluate[3].content[P.CONFIG]


def test_the_turn_is_the_sites_own_round_count():
    assert [task_in_turn(("a", "b", None), n)[0] for n in range(5)] == ["a", "b", None, "a", "b"]
    assert task_in_turn(("a", "b", None), 2)[1] == "task 'default' in turn (3 of 3: a, b, default)"
    assert task_in_turn(("liver",), 7) == ("liver", "")
    assert task_in_turn((None,), 0) == (None, "")


def _identity(node: int, config: dict):
    query = Message(RecordDict({P.CONFIG: ConfigRecord({})}), dst_node_id=node, message_type=MessageType.QUERY)
    return read_identity(node, Message(RecordDict({P.CONFIG: ConfigRecord(config)}), reply_to=query), {}, None)


def test_the_identity_declares_several_tasks_normalised_and_bounded(task_identity):
    who = {P.SITE_ID: "organ", P.MODALITY: "CT"}
    info = _identity(1, who | {P.TASK: "Liver", P.TASKS: ["Liver", "Lesion  core", "default", "lesion_core"]})
    assert (info.task, info.tasks) == ("liver", ("liver", "lesion-core", None))
    assert _identity(2, who | {P.TASKS: ["default", "lesion"]}).tasks == (None, "lesion")
    assert _identity(3, who | {P.TASK: "liver"}).tasks == ("liver",)  # an old site of one task
    assert _identity(4, who).tasks == (None,)
    for bad in (["liver"] * 17, [], ["../x"], ["liver\nWARNING forged"], "liver,lesion", [3]):
        with pytest.raises(ValueError) as err:
            _identity(5, who | {P.TASKS: bad})
        assert "\n" not in str(err.value)


def test_only_the_identity_may_carry_the_list_of_tasks():
    P.check_reply_config({P.SITE_ID: "s", P.TASK: "liver", P.TASKS: ["liver", "lesion"]})
    for bad in (["x"] * 17, ["x" * 200], [1, 2], []):
        with pytest.raises(EgressError, match="tasks"):
            P.check_reply_config({P.TASKS: bad})


def test_a_trained_reply_may_not_carry_a_list_of_tasks(coordinator):
    c = coordinator
    msgs = _send(c.strategy, {1: SITES[1], 2: SITES[2]}, 1)
    bank = received(msgs[1])
    bad = _reply(msgs[1], delta_like(bank, 1), "liver")
    bad.content[P.CONFIG][P.TASKS] = ["liver", "lesion"]
    c.strategy.aggregate_train(1, [bad, _reply(msgs[2], delta_like(bank, 2), "liver")])
    row = last_round(c)["sites"]["organ"]
    assert row["status"] == "rejected" and "belongs to the identity" in row["reason"]
