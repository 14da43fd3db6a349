"""A box as the first interaction: the session, its online updates, the simulated user's protocol,
and the first-click scale choice (a session that starts with a click)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedpoint.client.engine import SiteEngine
from fedpoint.client.session import InputError
from fedpoint.client.stream import annotate
from fedpoint.shared.clicks import Click
from fedpoint.shared.config import AdaptationConfig
from fedpoint.shared.focus import FocusConfig, FocusWindow, choose_scale, first_click_window, scale_score
from fedpoint.shared.simulated_user import tight_box


def _engine(base, mode="frozen", store=None, focus=None):
    return SiteEngine.create(base, "norm", AdaptationConfig(mode=mode), store, focus=focus)


def _weights(engine):
    return {k: v.clone() for k, v in engine.model.adapter.state().items()}


def test_a_box_starts_a_session_then_clicks_refine_it_and_undo_removes_it(tiny_box_base_2d, blob):
    image, mask = blob((64, 64))
    engine = _engine(tiny_box_base_2d, "mid+post")
    session = engine.open(image, "boxed")
    box = tight_box(mask)
    first = session.box(box.lo, box.hi)
    assert first.shape == (64, 64) and session.clicks == [] and session.drawn_box == box
    window = session.steps[0].window
    assert all(s <= l and h <= e for l, h, s, e in zip(box.lo, box.hi, window.start, window.stop)), "the box's window holds it"
    before = _weights(engine)
    centre = tuple(int(i) for i in np.argwhere(mask).mean(0))
    session.click(centre, True)
    assert len(session.clicks) == 1 and session.mask[centre]
    assert any(not torch.equal(before[k], v) for k, v in engine.model.adapter.state().items()), \
        "the click after the box takes a mid-interaction step (the box's mask was the previous prediction)"
    with pytest.raises(InputError, match="undo the clicks"):
        session.box(box.lo, box.hi)
    session.undo()
    session.undo()
    assert session.drawn_box is None and not session.mask.any()
    session.box(box.lo, box.hi)
    session.accept(mask)
    rec = session.record()
    assert rec["box"] == {"lo": list(box.lo), "hi": list(box.hi)} and rec["clicks"] == []


def test_bad_boxes_are_refused_with_the_reason(tiny_box_base_2d, tiny_base_2d, blob):
    image, mask = blob((32, 32))
    session = _engine(tiny_box_base_2d).open(image)
    for lo, hi, words in [((0, 0), (40, 8), "outside"), ((9, 9), (3, 3), "inverted"), ((2, 2), (2, 9), "empty"),
                          ((0, 0, 0), (4, 4, 4), "coordinates")]:
        with pytest.raises(InputError, match=words):
            session.box(lo, hi)
    assert not session.steps, "a refused box changes nothing"
    with pytest.raises(InputError, match="takes no box"):
        _engine(tiny_base_2d).open(image).box((0, 0), (8, 8))


def test_box_then_clicks_user_is_deterministic_and_scores_the_challenge_protocol(tiny_box_base_2d, blob, tmp_path):
    image, mask = blob((48, 48), seed=3)
    runs = [annotate(_engine(tiny_box_base_2d, "mid+post", tmp_path / f"s{i}"), image, mask, clicks=6, case_id="c",
                     prompt="box") for i in range(2)]
    assert runs[0]["dices"] == runs[1]["dices"] and runs[0]["prompt"] == "box"
    assert len(runs[0]["dices"]) <= 6
    d = runs[0]["dices"]
    assert runs[0]["dice_box"] == pytest.approx(d[0], abs=1e-4)
    assert runs[0]["dice_box5"] == pytest.approx(d[min(5, len(d) - 1)], abs=1e-4)
    assert 0 <= runs[0]["dsc_auc5"] <= 1


def test_the_first_click_scale_choice_keeps_the_window_that_holds_the_structure(tiny_base_2d, blob):
    """`border`: a prediction that runs into a side of the window inside the image means the
    structure goes on past it; the smallest window whose prediction is clear of its sides wins."""
    from fedpoint.shared.model import load_base

    _, cfg, _ = load_base(tiny_base_2d)
    shape, click = (400, 400), Click((200, 200), True)
    small = first_click_window(click.point, shape, 96, cfg)
    large = first_click_window(click.point, shape, 384, cfg)
    disc = lambda w, r: torch.tensor(  # noqa: E731  logits of a disc of radius r native pixels round the click
        np.where(np.hypot(*np.meshgrid(*(np.arange(n) / k + s - 200 for n, k, s in zip(w.out_size, w.scale, w.start)),
                                       indexing="ij")) < r, 5.0, -5.0))[None, None].float()
    scores = [scale_score(disc(w, 120), w, click, shape, "border") for w in (small, large)]
    assert scores == [0.0, 1.0] and choose_scale(scores, "border") == 1
    scores = [scale_score(disc(w, 20), w, click, shape, "border") for w in (small, large)]
    assert choose_scale(scores, "border") == 0, "a small structure keeps the small window"
    assert choose_scale([0.2, 0.9, 0.4], "confidence") == 1 and choose_scale([0.2, 0.9], "fixed") == 0


def test_a_session_with_several_scales_predicts_in_one_of_them(tiny_base_2d, blob):
    image, mask = blob((256, 256))
    engine = _engine(tiny_base_2d, focus=FocusConfig(context=48, scales=(1, 2, 4), rule="confidence"))
    session = engine.open(image)
    session.click(tuple(int(i) for i in np.argwhere(mask).mean(0)), True)
    assert max(session.steps[0].window.size) in (48, 96, 192)
    with pytest.raises(ValueError, match="rule"):
        FocusConfig(rule="biggest")
