import threading
import time

import torch

from fedpoint.client.engine import SiteEngine
from fedpoint.client.stream import run_stream
from fedpoint.shared.config import AdaptationConfig
from types import SimpleNamespace


def _samples(blob, n, shape=(32, 32)):
    return [SimpleNamespace(image=img, mask=m, case_id=f"b{i}", object_name="blob")
            for i, (img, m) in enumerate(blob(shape, seed=i) for i in range(n))]


def _episodes_engine(base, store, background, campaign=8):
    cfg = AdaptationConfig(mode="episodes", episode_min_cases=5, episode_epochs=2, episode_iters=2, lr=1e-2)
    return SiteEngine.create(base, "norm", cfg, store, campaign_size=campaign, background_episodes=background)


def test_episode_starts_at_the_threshold_and_splits_60_20_20(tiny_base_2d, tmp_path, blob):
    engine = _episodes_engine(tiny_base_2d, tmp_path, background=False, campaign=8)  # 25% of 8 = 2 -> min 5 cases
    run_stream(engine, _samples(blob, 4), clicks=2)
    assert engine.scheduler.results == []
    run_stream(engine, _samples(blob, 1), clicks=2)
    assert len(engine.scheduler.results) == 1
    splits = engine.store.splits()
    assert len(splits["train"]) == 3 and len(splits["val"]) == 1 and len(splits["judge"]) == 1
    assert not set(splits["train"]) & set(splits["val"] + splits["judge"]) and not set(splits["val"]) & set(splits["judge"])
    result = engine.scheduler.results[0]
    assert len(result.val_scores) == 2 and result.train_cases == 3 and result.judge_cases == 1
    events = [e["event"] for e in engine.store.read_log()]
    assert "episode" in events and "guard" in events or not result.best_epoch
    # the next episode only counts new cases, and keeps the earlier splits
    run_stream(engine, _samples(blob, 5), clicks=2)
    later = engine.store.splits()
    assert later["train"][:3] == splits["train"] and sum(len(v) for v in later.values()) == 10


def test_episodes_run_in_the_background_without_blocking_clicks(tiny_base_2d, tmp_path, blob):
    engine = _episodes_engine(tiny_base_2d, tmp_path, background=True)
    run_stream(engine, _samples(blob, 5), clicks=1)  # waits at the end; the episode ran in a thread
    assert len(engine.scheduler.results) == 1
    # while one runs, a click still answers
    image, _ = blob((32, 32))
    engine.store.save_splits({"train": [], "val": []})
    started = threading.Event()
    original = engine.scheduler.run_episode

    def slow_episode():
        started.set()
        time.sleep(1.0)
        return original()

    engine.scheduler.run_episode = slow_episode
    assert engine.scheduler.notify()
    started.wait(5)
    t0 = time.perf_counter()
    engine.open(image).click((16, 16), True)
    assert time.perf_counter() - t0 < 1.0 and engine.scheduler.running
    engine.wait()


def test_regression_guard_rejects_a_worse_adapter(tiny_base_2d, tmp_path, blob):
    engine = SiteEngine.create(tiny_base_2d, "norm", AdaptationConfig(mode="frozen"), tmp_path)
    val = [(img, m) for img, m in (blob((32, 32), seed=s) for s in range(3))]
    for i, (img, m) in enumerate(val):
        engine.store.add_case(f"v{i}", img, m)
    engine.store.save_splits({"train": [], "val": engine.store.case_ids()})
    # a collapsed adapter: norm weights zeroed, biases pushed negative -> predicts nothing
    bad = {n: (torch.zeros_like(v) if n.endswith("weight") else torch.full_like(v, -5.0)) for n, v in engine.adapter.state().items()}
    before = engine.adapter.state()
    assert engine.offer(bad, "bank:test").accepted is False
    assert all(torch.equal(before[n], engine.adapter.state()[n]) for n in before)
    assert engine.regression_guard.history[-1]["accepted"] is False
    assert engine.offer(engine.adapter.state(), "bank:same").accepted is True  # as good as the current one
    assert [e for e in engine.store.read_log() if e["event"] == "guard"][0]["source"] == "bank:test"


def test_episode_max_caps_a_campaign_and_true_labels_reach_the_cache(tiny_base_2d, tmp_path, blob):
    """The ablation arms' two settings: `episode_max` stops episodes after that many; with
    `accept_truth` the simulated user corrects the mask, so the cache holds the true masks."""
    import numpy as np

    counts = {}
    for cap in (None, 1):
        cfg = AdaptationConfig(mode="episodes", episode_min_cases=5, episode_epochs=1, episode_iters=1, episode_max=cap)
        engine = SiteEngine.create(tiny_base_2d, "norm", cfg, tmp_path / f"cap-{cap}", campaign_size=15,
                                   background_episodes=False)
        run_stream(engine, _samples(blob, 15), clicks=2, accept_truth=cap == 1)
        counts[cap] = len(engine.scheduler.results)
        if cap == 1:
            samples = {s.case_id: s.mask for s in _samples(blob, 15)}
            for case_id in engine.store.case_ids():
                _, mask, _ = engine.store.load_case(case_id)
                truth = samples["b" + case_id.split("-")[0][1:]]
                assert np.array_equal(np.asarray(mask, bool).reshape(truth.shape), truth)
    assert counts == {None: 3, 1: 1}
