"""fedpoint.client.service.training on its own (no HTTP): an episode a client asks for needs enough
accepted cases, runs one at a time in the background, and reports MONAI Label's task shape.
(Named for its package: tests/data/test_training.py is fedpoint.data.training's.)"""

from __future__ import annotations

import pytest

from fedpoint.client.engine import SiteEngine
from fedpoint.client.service.training import NotEnoughCases, Training, TrainingBusy
from fedpoint.client.splits import MIN_CASES
from fedpoint.shared.config import AdaptationConfig


def test_an_episode_on_request_waits_for_cases_then_runs_one_at_a_time(tiny_base_2d, blob, tmp_path):
    engine = SiteEngine.create(tiny_base_2d, "norm", AdaptationConfig(mode="post", episode_epochs=1, episode_iters=2),
                               tmp_path / "store")
    training = Training(engine)
    assert not training.automatic  # a mode without episodes still trains on request, never by itself
    training.after_accept()
    assert not training.running and training.status()["status"] == "NONE"

    with pytest.raises(NotEnoughCases, match=f"accept at least {MIN_CASES}"):
        training.start()
    for i in range(MIN_CASES):
        image, mask = blob((48, 48), seed=i)
        engine.store.add_case(f"case-{i}", image, mask)

    with engine.model.lock:  # the episode copies the live model under its lock: it waits here
        task = training.start()
        assert task["status"] == "RUNNING" and task["id"] == "episode-request-1"
        assert training.status()["status"] == "RUNNING"
        with pytest.raises(TrainingBusy):
            training.start()
    training.wait(300)
    status = training.status()
    assert status["status"] == "DONE" and status["episodes"] == 1 and status["end_ts"] >= status["start_ts"]
    result = status["result"]
    assert result == training.last_result() and result["train_cases"] + result["val_cases"] + result["judge_cases"] == MIN_CASES
    assert [e["event"] for e in engine.store.read_log()].count("episode") == 1


def test_a_failed_episode_is_reported_not_lost(tiny_base_2d, blob, tmp_path):
    engine = SiteEngine.create(tiny_base_2d, "norm", AdaptationConfig(mode="post"), tmp_path / "store")
    for i in range(MIN_CASES):
        image, mask = blob((48, 48), seed=i)
        engine.store.add_case(f"case-{i}", image, mask)
    training = Training(engine)
    with engine.store.locked():  # the episode assigns its splits under the store's lock: it waits here
        training.start()
        (engine.store.root / "splits.json").write_text("{not json")  # damaged after the check that cases suffice
    training.wait(120)
    status = training.status()
    assert status["status"] == "ERROR" and status["result"] is None
    assert any("StoreDamage" in d and "splits.json" in d for d in status["details"]), status["details"]
