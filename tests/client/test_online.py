"""Guarded online adaptation: rollbacks, both post-interaction stages, episode re-basing, the
store as owner of splits and versions, and the optimizer state that travels with the adapter."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch

import fedpoint.client.episodes as episodes
from fedpoint.client.engine import SiteEngine
from fedpoint.client.stream import run_stream
from fedpoint.client.online import post_stage1, post_stage2
from fedpoint.shared.clicks import Click
from fedpoint.shared.config import AdaptationConfig
from fedpoint.shared.losses import interaction_loss


def _engine(base, mode="mid+post", store=None, **cfg):
    return SiteEngine.create(base, "norm", AdaptationConfig(mode=mode, **cfg), store, background_episodes=False)


def _samples(blob, n, shape=(32, 32), offset=0):
    return [SimpleNamespace(image=img, mask=m, case_id=f"b{i}", object_name="blob")
            for i, (img, m) in enumerate(blob(shape, seed=offset + i) for i in range(n))]


# ------------------------------------------------------------------------------ the online guard
def test_a_collapsing_mid_update_is_rolled_back_with_its_reason(tiny_base_2d, blob):
    """lr 1.0 on the norm affine parameters wrecks the model in one step: the guard must undo it
    (weights and Adam moments), count it and say why; with the guard off the damage stays."""
    image, mask = blob((32, 32), seed=1)
    results = {}
    for guard in (True, False):
        engine = _engine(tiny_base_2d, "mid", lr=1.0, guard=guard)
        before = engine.adapter.state()
        session = engine.open(image, "c1")
        session.click((16, 16), True)
        session.click((2, 2), False)
        after = engine.adapter.state()
        moved = max(float((after[k] - before[k]).abs().max()) for k in before)
        results[guard] = (moved, session.record(), engine.model.online_guard.counts)
    moved, record, counts = results[True]
    assert moved == 0.0, "a rejected step must leave the adapter exactly as it was"
    assert counts["mid_rejected"] == 1 and record["guard_rejected"] == 1
    assert "contradicts" in record["guard_reasons"][0] or "drops a click" in record["guard_reasons"][0]
    assert results[False][0] > 0.1 and results[False][2]["mid_rejected"] == 0


def test_a_gentle_mid_update_is_kept(tiny_base_2d, blob):
    image, _ = blob((32, 32), seed=2)
    engine = _engine(tiny_base_2d, "mid", lr=1e-5)
    before = engine.adapter.state()
    session = engine.open(image)
    session.click((16, 16), True)
    session.click((3, 3), False)
    assert engine.model.online_guard.counts == {"mid_kept": 1, "mid_rejected": 0, "post_kept": 0, "post_rejected": 0, "rolled_back": 0}
    assert any(not torch.equal(before[k], v) for k, v in engine.adapter.state().items())


def test_post_update_that_hurts_is_rolled_back(tiny_base_2d, blob, monkeypatch):
    import fedpoint.client.session as session_module

    engine = _engine(tiny_base_2d, "post", lr=1e-4, guard_replay=3)
    run_stream(engine, _samples(blob, 3), clicks=2)
    guard = engine.model.online_guard
    assert guard.counts["post_kept"] + guard.counts["post_rejected"] == 3 and len(guard.cases) == 3

    def wreck(model, *args, **kwargs):  # an update that makes the model predict nothing at all
        with torch.no_grad():
            for name, p in model.adapter.net.named_parameters():
                if name in model.adapter.names:
                    p.fill_(0.0 if name.endswith("weight") else -50.0)
        return []

    monkeypatch.setattr(session_module, "post_interaction_update", wreck)
    before = engine.adapter.state()
    image, mask = blob((32, 32), seed=9)
    session = engine.open(image, "bad")
    session.click((16, 16), True)
    session.accept(mask)
    assert session.record()["guard_rejected"] == 1 and guard.counts["post_rejected"] >= 1
    assert "got worse" in session.rejected[0]["reason"] or "fell" in session.rejected[0]["reason"]
    assert all(torch.equal(before[k], v) for k, v in engine.adapter.state().items())


# ------------------------------------------------------------------------------ the two post stages
def _post_setup(base, blob):
    engine = _engine(base, "post", lr=1e-2, guard=False)
    image, mask = blob((32, 32), seed=4)
    image_t = engine.model.image_tensor(image)
    target = torch.as_tensor(mask, dtype=torch.float32)[None, None]
    return engine.model, image_t, target, Click((16, 16), True)


def test_stage1_teaches_the_first_click_alone(tiny_base_2d, blob):
    model, image_t, target, first = _post_setup(tiny_base_2d, blob)
    cfg = model.adapt_cfg

    def first_click_loss():
        with torch.no_grad():
            return float(interaction_loss(model.logits(image_t, [first]), target, [first], cfg.ccg_beta, cfg.ccg_sigma))

    before = first_click_loss()
    post_stage1(model, image_t, first, target)
    assert first_click_loss() < before


def test_stage2_teaches_the_corrections_stage1_still_needs(tiny_base_2d, blob):
    model, image_t, target, first = _post_setup(tiny_base_2d, blob)
    cfg = model.adapt_cfg
    stage1 = post_stage1(model, image_t, first, target)
    before_state = model.adapter.state()
    extra = post_stage2(model, image_t, first, target, stage1, np.random.default_rng(0))
    assert extra, "the random tiny base leaves errors after stage 1, so stage 2 must place clicks"
    after_state = model.adapter.state()
    model.adapter.load_state(before_state)
    with torch.no_grad():
        loss_before = float(interaction_loss(model.logits(image_t, [first, *extra], stage1), target, extra, cfg.ccg_beta, cfg.ccg_sigma))
    model.adapter.load_state(after_state)
    with torch.no_grad():
        loss_after = float(interaction_loss(model.logits(image_t, [first, *extra], stage1), target, extra, cfg.ccg_beta, cfg.ccg_sigma))
    assert loss_after < loss_before


def test_accept_runs_both_stages(tiny_base_2d, blob, monkeypatch):
    import fedpoint.client.online as online

    calls = []
    for name in ("post_stage1", "post_stage2"):
        original = getattr(online, name)
        monkeypatch.setattr(online, name, lambda *a, _o=original, _n=name, **k: calls.append(_n) or _o(*a, **k))
    engine = _engine(tiny_base_2d, "post", guard=False)
    image, mask = blob((32, 32), seed=5)
    session = engine.open(image)
    session.click((16, 16), True)
    session.accept(mask)
    assert calls == ["post_stage1", "post_stage2"]


# ------------------------------------------------------------------------------ episodes
def _episode_engine(base, store, blob):
    cfg = dict(episode_min_cases=5, episode_epochs=2, episode_iters=3, lr=1e-2, seed=3)
    engine = _engine(base, "frozen", store, **cfg)
    for s in _samples(blob, 6):
        engine.store.add_case(s.case_id, s.image, s.mask)
    return engine


def test_episode_rebases_onto_the_live_adapter_and_keeps_online_progress(tiny_base_2d, tmp_path, blob, monkeypatch):
    """Two identical sites run the same episode; on one, an online update lands on the live model
    while the episode trains. After the swap the two differ by exactly that update: it was kept
    (a plain swap of the episode's weights would throw it away)."""
    live = {}
    for online_update in (False, True):
        engine = _episode_engine(tiny_base_2d, tmp_path / f"s{online_update}", blob)
        engine.scheduler = episodes.EpisodeScheduler(engine.model, engine.store, None, False,
                                                     episodes.RegressionGuard(clicks=2, tolerance=1e9))
        original, done = episodes.train_iteration, []

        def during(model, *args, _engine=engine, _on=online_update, _orig=original, **kw):
            if _on and not done:  # the live model (not the episode's copy) takes an online step
                with torch.no_grad():
                    name = _engine.adapter.names[0]
                    dict(_engine.adapter.net.named_parameters())[name].add_(0.25)
                done.append(1)
            return _orig(model, *args, **kw)

        monkeypatch.setattr(episodes, "train_iteration", during)
        result = engine.scheduler.run_episode()
        assert result.accepted and result.best_epoch
        live[online_update] = engine.adapter.state()
    diff = {k: live[True][k] - live[False][k] for k in live[True]}
    first = next(iter(diff))
    torch.testing.assert_close(diff[first], torch.full_like(diff[first], 0.25))
    assert all(float(v.abs().max()) < 1e-6 for k, v in diff.items() if k != first)


def test_an_episode_with_no_judgement_case_is_not_made_current(tiny_base_2d, tmp_path, blob):
    engine = _episode_engine(tiny_base_2d, tmp_path, blob)
    engine.store.save_splits({"train": engine.store.case_ids()[:5], "val": engine.store.case_ids()[5:], "judge": []})
    scheduler = episodes.EpisodeScheduler(engine.model, engine.store, None, False, episodes.RegressionGuard(clicks=2, tolerance=1e9))
    before = engine.adapter.state()
    result = scheduler.run_episode()
    assert not result.accepted
    assert all(torch.equal(before[k], v) for k, v in engine.adapter.state().items())
    review = [e for e in engine.store.read_log() if e["event"] == "guard"]
    if result.best_epoch:
        assert review and review[-1]["unvalidated"] and "refused unvalidated" in review[-1]["reason"]


def test_a_bad_bank_is_refused_with_a_logged_reason(tiny_base_2d, tmp_path, blob):
    engine = _episode_engine(tiny_base_2d, tmp_path, blob)
    engine.store.save_splits({"train": [], "val": engine.store.case_ids()[:3], "judge": engine.store.case_ids()[3:]})
    before = engine.adapter.state()
    nan = {k: torch.full_like(v, float("nan")) for k, v in before.items()}
    assert engine.offer(nan, "bank:nan").accepted is False
    entry = [e for e in engine.store.read_log() if e["event"] == "guard"][-1]
    assert entry["accepted"] is False and "non-finite" in entry["reason"]
    assert all(torch.equal(before[k], v) for k, v in engine.adapter.state().items())


def test_a_site_without_held_out_cases_takes_a_bank_unvalidated_and_says_so(tiny_base_2d, tmp_path):
    engine = _engine(tiny_base_2d, "frozen", tmp_path)
    state = {k: v + 0.01 for k, v in engine.adapter.state().items()}
    assert engine.offer(state, "bank:general/v1").accepted is True
    entry = [e for e in engine.store.read_log() if e["event"] == "guard"][-1]
    assert entry["unvalidated"] is True and "passed unvalidated" in entry["reason"]


# ------------------------------------------------------------------------------ the store owns splits
def _assign_in_process(root: str, seed: int, rounds: int) -> None:
    from fedpoint.client.splits import split_rule
    from fedpoint.client.site_store import SiteStore

    store = SiteStore(root)
    rng = np.random.default_rng(seed)
    for _ in range(rounds):
        store.assign_new_cases(lambda new: split_rule(new, rng))


def test_two_processes_assigning_splits_never_share_a_case(tmp_path, blob):
    import multiprocessing as mp

    from fedpoint.client.site_store import SiteStore

    store = SiteStore(tmp_path)
    image, mask = blob((16, 16))
    ctx = mp.get_context("spawn")
    workers = [ctx.Process(target=_assign_in_process, args=(str(tmp_path), s, 40)) for s in (1, 2)]
    for w in workers:
        w.start()
    for i in range(30):  # cases keep arriving while both assign
        store.add_case(f"c{i:03d}", image, mask)
    for w in workers:
        w.join(60)
        assert w.exitcode == 0
    _assign_in_process(str(tmp_path), 3, 1)
    splits = store.splits()
    ids = [c for v in splits.values() for c in v]
    assert sorted(ids) == sorted(store.case_ids()), "every case in exactly one split"


# ------------------------------------------------------------------------------ optimizer state
def test_adam_state_is_saved_with_the_adapter_and_continues(tiny_base_2d, tmp_path, blob):
    engine = _engine(tiny_base_2d, "mid+post", tmp_path, lr=1e-4)
    run_stream(engine, _samples(blob, 2), clicks=3)
    assert engine.model.optimizer.state, "the online updates took Adam steps"
    version = engine.save_version({"source": "test"})
    again = _engine(tiny_base_2d, "mid+post", tmp_path, lr=1e-4)
    saved = engine.model.optimizer.state_dict()["state"]
    loaded = again.model.optimizer.state_dict()["state"]
    assert version == 1 and saved.keys() == loaded.keys()
    for k in saved:
        torch.testing.assert_close(saved[k]["exp_avg"], loaded[k]["exp_avg"])
        assert int(saved[k]["step"]) == int(loaded[k]["step"])


def test_rejections_land_in_the_site_log_with_their_reason(tiny_base_2d, tmp_path, blob):
    image, _ = blob((32, 32), seed=1)
    engine = _engine(tiny_base_2d, "mid", tmp_path, lr=1.0)
    session = engine.open(image, "c1")
    session.click((16, 16), True)
    session.click((2, 2), False)
    logged = [e for e in engine.store.read_log() if e["event"] == "online-guard-rejected"]
    assert len(logged) == 1 and logged[0]["stage"] == "mid" and logged[0]["case"] == "c1" and logged[0]["reason"]


def test_drift_that_each_check_allowed_is_rolled_back_to_the_last_validated_state(tiny_base_2d, blob):
    """Many kept steps can add up: when the live model scores worse than the anchor on the replay
    cases, the rolling check restores the anchor exactly."""
    engine = _engine(tiny_base_2d, "post", lr=1e-4, guard_replay=3)
    run_stream(engine, _samples(blob, 3), clicks=2)
    guard = engine.model.online_guard
    anchor = {k: v.clone() for k, v in guard.anchor.state.items()}
    with torch.no_grad():  # drift the live model far away, as if many small steps had been kept
        for name, p in engine.adapter.net.named_parameters():
            if name in engine.adapter.names:
                p.fill_(0.0 if name.endswith("weight") else -50.0)
    assert guard.rolling_check(engine.model, "drifted") is False
    assert guard.counts["rolled_back"] == 1 and "rolled back" in guard.events[-1]["reason"]
    assert all(torch.equal(anchor[k], v) for k, v in engine.adapter.state().items())


def test_concurrent_accepts_on_one_site_are_whole_trials(tiny_base_2d, blob, monkeypatch):
    """Two people accept at once on one site: the second post update waits until the first trial
    (snapshot, step, checks, replay memory, rolling check) is over, so neither can roll back the
    other's step or change the replay memory under it."""
    import threading

    import fedpoint.client.session as session_mod

    real, entered, release = session_mod.post_interaction_update, [], threading.Event()

    def slow_update(model, *args, **kwargs):
        entered.append(threading.current_thread().name)
        if len(entered) == 1:
            release.wait(timeout=30)
        return real(model, *args, **kwargs)

    monkeypatch.setattr(session_mod, "post_interaction_update", slow_update)
    engine = _engine(tiny_base_2d, "post", guard_replay=3)
    pairs = []
    for i, (image, mask) in enumerate(blob((32, 32), seed=40 + i) for i in range(2)):
        s = engine.open(image, f"c{i}")
        s.click((16, 16), True)
        pairs.append((s, mask))
    errors = []

    def accept(session, mask):
        try:
            session.accept(mask)
        except Exception as exc:  # noqa: BLE001 - the test reports any failure
            errors.append(exc)

    first = threading.Thread(target=accept, args=pairs[0], name="first")
    second = threading.Thread(target=accept, args=pairs[1], name="second")
    first.start()
    while not entered:
        first.join(timeout=0.01)
    second.start()
    second.join(timeout=1.0)
    assert entered == ["first"], "a second trial started while the first held the model"
    release.set()
    for t in (first, second):
        t.join(timeout=60)
    counts = engine.model.online_guard.counts
    assert not errors, errors
    assert entered == ["first", "second"]
    assert counts["post_kept"] + counts["post_rejected"] == 2 and len(engine.model.online_guard.cases) == 2


def test_a_snapshot_holds_copies_that_later_steps_do_not_touch(tiny_base_2d, blob):
    from fedpoint.client.guards import restore, snapshot

    engine = _engine(tiny_base_2d, "mid+post", lr=1e-2)
    run_stream(engine, _samples(blob, 1), clicks=3)  # Adam has moments to copy
    model = engine.model
    snap = snapshot(model)
    moments = {k: v["exp_avg"].clone() for k, v in model.optimizer.state_dict()["state"].items()}
    weights = model.adapter.state()
    image, mask = blob((32, 32), seed=7)
    logits = model.logits(torch.as_tensor(image)[None], [Click((16, 16), True)], None, grad=True)
    model.step(interaction_loss(logits, torch.as_tensor(mask, dtype=torch.float32)[None, None], [Click((16, 16), True)], 200.0, 3.0))
    assert any(not torch.equal(snap.optimizer["state"][k]["exp_avg"], v["exp_avg"])
               for k, v in model.optimizer.state_dict()["state"].items()), "the step moved Adam's moments"
    for k, v in snap.optimizer["state"].items():
        torch.testing.assert_close(v["exp_avg"], moments[k], rtol=0, atol=0)  # the snapshot was not aliased
    restore(model, snap)
    for k, v in model.optimizer.state_dict()["state"].items():
        torch.testing.assert_close(v["exp_avg"], moments[k], rtol=0, atol=0)
    for n, p in model.adapter.state().items():
        torch.testing.assert_close(p, weights[n], rtol=0, atol=0)
