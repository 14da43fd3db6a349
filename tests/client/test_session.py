import numpy as np
import pytest
import torch

from fedpoint.client.engine import SiteEngine
from fedpoint.client.session import InputError
from fedpoint.shared.config import AdaptationConfig


def _engine(base, mode="frozen", store=None, **kw):
    return SiteEngine.create(base, "norm", AdaptationConfig(mode=mode, **kw), store)


@pytest.mark.parametrize("dims", [2, 3])
def test_click_undo_accept(dims, tiny_base_2d, tiny_base_3d, blob):
    base = tiny_base_2d if dims == 2 else tiny_base_3d
    shape = (32, 32) if dims == 2 else (16, 16, 16)
    image, mask = blob(shape)
    session = _engine(base).open(image, "case-a")
    centre = tuple(int(i) for i in np.argwhere(mask).mean(0))
    m1 = session.click(centre, True)
    assert m1.shape == shape and m1.dtype == bool
    session.click((0,) * dims, False)
    assert len(session.clicks) == 2
    assert np.array_equal(session.undo(), m1)
    final = session.accept(mask)
    assert np.array_equal(final, mask)
    rec = session.record()
    assert rec["clicks"][0]["positive"] and len(rec["predict_ms"]) == 1
    with pytest.raises(InputError, match="already accepted"):
        session.click(centre, True)


def test_odd_sizes_are_padded_and_cropped(tiny_base_2d, blob):
    image, mask = blob((37, 29))
    session = _engine(tiny_base_2d).open(image)
    assert session.click((18, 14), True).shape == (37, 29)


@pytest.mark.parametrize(
    "image, message",
    [
        (np.zeros((1, 1, 8, 8, 8), np.float32), "expected a 2D image"),
        (np.random.rand(2, 16, 16).astype(np.float32), "image channel"),
        (np.full((1, 16, 16), np.nan, np.float32), "NaN"),
        (np.ones((1, 16, 16), np.float32), "constant"),
    ],
)
def test_bad_images_are_refused(image, message, tiny_base_2d):
    with pytest.raises(InputError, match=message):
        _engine(tiny_base_2d).open(image)


def test_bad_clicks_and_masks_are_refused(tiny_base_2d, blob):
    image, mask = blob((32, 32))
    session = _engine(tiny_base_2d).open(image)
    with pytest.raises(ValueError, match="outside the image"):
        session.click((40, 3), True)
    with pytest.raises(InputError, match="no click to undo"):
        session.undo()
    session.click((16, 16), True)
    with pytest.raises(InputError, match="empty"):
        session.accept(np.zeros((32, 32)))
    with pytest.raises(InputError, match="binary"):
        session.accept(np.full((32, 32), 2))
    with pytest.raises(InputError, match="shape"):
        session.accept(np.ones((8, 8)))


def _snapshot(engine):
    return {n: p.detach().clone() for n, p in engine.model.net.named_parameters()}


@pytest.mark.parametrize("mode, on_click, on_accept", [("frozen", False, False), ("mid", True, False), ("post", False, True), ("mid+post", True, True)])
def test_modes_update_adapter_parameters_only_when_they_should(mode, on_click, on_accept, tiny_base_2d, blob):
    image, mask = blob((32, 32))
    engine = _engine(tiny_base_2d, mode, lr=1e-2)
    before = _snapshot(engine)
    session = engine.open(image)
    session.click((16, 16), True)
    session.click((2, 2), False)
    after_clicks = _snapshot(engine)
    changed = {n for n in before if not torch.equal(before[n], after_clicks[n])}
    assert bool(changed) == on_click
    assert changed <= set(engine.adapter.names)
    session.accept(mask)
    after_accept = _snapshot(engine)
    changed_on_accept = {n for n in before if not torch.equal(after_clicks[n], after_accept[n])}
    assert bool(changed_on_accept) == on_accept
    assert changed_on_accept <= set(engine.adapter.names)


def test_engine_open_and_accept_are_the_one_session_path(tiny_base_2d, blob, tmp_path):
    """Opened with `into_cache` (the default) an accept lands in the store; without it (the site
    service, which writes its cases itself) only the post update runs. A mask accepted on a
    session without clicks first gets one at the mask's deepest point, so the post update learns."""
    from fedpoint.shared.clicker import deepest_point

    image, mask = blob((32, 32))
    engine = _engine(tiny_base_2d, "post", store=tmp_path / "store", lr=1e-2)
    kept = engine.open(image, "kept")
    kept.click((16, 16), True)
    assert np.array_equal(engine.accept(kept, mask), mask)
    assert engine.store.case_ids() == ["kept"]

    before = _snapshot(engine)
    apart = engine.open(image, "apart", into_cache=False)
    final = engine.accept(apart, mask)
    assert np.array_equal(final, mask) and engine.store.case_ids() == ["kept"]
    assert apart.clicks[0].point == deepest_point(mask) and apart.clicks[0].positive and len(apart.steps) == 1
    assert apart.post_ms > 0 and any(not torch.equal(before[n], p) for n, p in _snapshot(engine).items())
    with pytest.raises(InputError, match="already accepted"):
        engine.accept(apart, mask)
    with pytest.raises(InputError, match="empty"):
        engine.accept(engine.open(image, into_cache=False), np.zeros((32, 32), bool))
