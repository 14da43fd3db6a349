"""The round ledger (federation.json): typed rounds, the file's JSON content kept as it was."""

from __future__ import annotations

import json

import pytest

from fedpoint.server.ledger import SUMMARY_FILE, RoundLedger, RoundRecord, SiteRound, read_rounds


def write_plain(path, rounds):
    path.write_text(json.dumps({"rounds": rounds}, indent=1))


def entry(n: int, **extra) -> dict:
    return {"round": n, "time": 100.0 + n,
            "sites": {"site-1": {"node": 1, "modality": "MR", "bank": "general", "bank_version": n, "bytes_down": 40,
                                 "bytes_up": 40, "weight": 2.0, "status": "accepted", "reason": None,
                                 "metrics": {"dice1": 0.5, "images": 2}},
                      "node-9": {"node": 9, "status": "refused", "reason": "identity refused: bad id"}},
            "versions": {"general": n + 1}, "dp": None, **extra}


def test_a_file_read_and_written_back_keeps_its_content_key_order_and_types(tmp_path):
    path = tmp_path / SUMMARY_FILE
    rounds = [entry(1), entry(2, evaluation={"banks": {}, "sites": {}}, note="kept")]
    write_plain(path, rounds)
    ledger = RoundLedger(path)
    assert all(isinstance(r, RoundRecord) for r in ledger.rounds)
    assert isinstance(ledger.rounds[0].sites["node-9"], SiteRound)
    assert ledger.as_json() == rounds
    assert list(ledger.as_json()[0]["sites"]["site-1"]) == list(rounds[0]["sites"]["site-1"])
    assert list(ledger.as_json()[0]["sites"]["node-9"]) == ["node", "status", "reason"]  # no empty fields added
    assert ledger.as_json()[0]["sites"]["site-1"]["metrics"]["images"] == 2 and "evaluation" not in ledger.as_json()[0]
    assert read_rounds(tmp_path) == read_rounds(path) == rounds and read_rounds(tmp_path / "none") == []


def test_a_round_replaces_its_earlier_entry_and_takes_its_evaluation(tmp_path):
    path = tmp_path / SUMMARY_FILE
    ledger = RoundLedger(path)
    ledger.record(RoundRecord.model_validate(entry(1)))
    ledger.record(RoundRecord.model_validate(entry(2)))
    ledger.record(RoundRecord.model_validate(entry(1) | {"versions": {}}))
    assert [r["round"] for r in read_rounds(path)] == [2, 1] and read_rounds(path)[1]["versions"] == {}
    ledger.add_evaluation(2, {"general@v3": {"dice_auc": 0.7}}, {"site-1": {"status": "scored"}})
    saved = read_rounds(path)[0]
    assert list(saved)[-1] == "evaluation"
    assert saved["evaluation"] == {"banks": {"general@v3": {"dice_auc": 0.7}}, "sites": {"site-1": {"status": "scored"}}}


def test_rounds_the_file_missed_are_restored_from_the_journal(tmp_path):
    path = tmp_path / SUMMARY_FILE
    write_plain(path, [entry(1)])
    ledger = RoundLedger(path)
    journal = [{"round": 1, "versions": {"general": 2}, "summary": {"entry": entry(1)}},
               {"round": 2, "versions": {"general": 3}, "summary": {"entry": entry(2) | {"versions": {}}}},
               {"round": 3, "versions": {}, "summary": {}}]  # a round without an entry: nothing to restore
    assert ledger.restore(journal) == [2]
    assert [r["round"] for r in read_rounds(path)] == [1, 2] and read_rounds(path)[1]["versions"] == {"general": 3}
    assert ledger.restore(journal) == []


def test_an_in_memory_ledger_writes_nothing_and_a_bad_entry_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ledger = RoundLedger(None)
    ledger.record(RoundRecord.model_validate(entry(1)))
    assert ledger.as_json() == [entry(1)] and list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError):
        RoundRecord.model_validate({"round": "first", "time": 1.0, "sites": {}, "versions": {}})
