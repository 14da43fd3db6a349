"""The replay judge: an update after which the site needs more clicks on its held-back accepted
cases is rolled back (to the last good state, or to the frozen start)."""

from __future__ import annotations

import pytest
import torch

from fedpoint.client.engine import SiteEngine
from fedpoint.client.replay_judge import replay_score
from fedpoint.client.stream import annotate
from fedpoint.shared.config import AdaptationConfig


def _engine(base, judge: bool, store):
    cfg = AdaptationConfig(mode="post", lr=1e-3, guard=False, judge=judge, judge_every=2, judge_cases=2, judge_clicks=3)
    return SiteEngine.create(base, "norm", cfg, store)


def _weights(model):
    return {n: p.detach().clone() for n, p in model.adapter.net.named_parameters() if n in model.adapter.names}


@pytest.mark.parametrize("judge", [True, False])
def test_an_adapter_made_worse_is_rolled_back_only_with_the_judge(judge, blob_base_2d, blob, tmp_path):
    engine = _engine(blob_base_2d, judge, tmp_path / "store")
    start = _weights(engine.model)
    held_image, held_mask = blob((48, 48), seed=1)
    annotate(engine, held_image, held_mask, 3, "held")  # the first case is held back: its update is undone
    slot = engine.slot()
    if judge:
        assert slot.judge.counts["held_back"] == 1 and len(slot.judge.cases) == 1
        assert all(torch.equal(start[n], p) for n, p in _weights(engine.model).items())
    cases = [(held_image, held_mask)]
    good = replay_score(engine.model, cases, 3)

    image, mask = blob((48, 48), seed=2)
    session = engine.open(image, "bad")
    session.click((24, 24), True)
    with torch.no_grad():  # an update gone wrong: every norm scale flipped
        for p in engine.model.adapter.trainable_parameters():
            p.mul_(-3.0)
    engine.accept(session, mask)
    after = replay_score(engine.model, cases, 3)
    if judge:
        assert slot.judge.counts["rolled_back"] + slot.judge.counts["to_frozen"] == 1
        assert after == good
        assert all(torch.equal(start[n], p) for n, p in _weights(engine.model).items())
        log = engine.store.read_log()
        assert any(e["event"] == "replay-judge-rolled-back" and e["case"] == "bad" for e in log)
    else:  # without the judge the site keeps the worse adapter and needs more clicks
        assert after.worse_than(good, 0.01)


def test_a_good_update_is_kept_and_the_judge_cost_is_recorded(blob_base_2d, blob, tmp_path):
    engine = _engine(blob_base_2d, True, tmp_path / "store")
    records = [annotate(engine, *blob((48, 48), seed=s), 3, f"c{s}") for s in range(4)]
    judge = engine.slot().judge
    assert judge.counts["held_back"] == 2  # cases 0 and 2
    assert judge.counts["kept"] + judge.counts["rolled_back"] + judge.counts["to_frozen"] == 2
    assert [r["judge_ms"] > 0 for r in records] == [False, True, False, True]


def test_the_judge_is_off_by_default_and_in_frozen_mode(blob_base_2d, tmp_path):
    assert SiteEngine.create(blob_base_2d, "norm", AdaptationConfig(mode="post")).slot().judge is None
    assert SiteEngine.create(blob_base_2d, "norm", AdaptationConfig(mode="frozen", judge=True)).slot().judge is None
