"""The session predicts in focus windows on images larger than the working size, and keeps the click rule."""

import numpy as np
import pytest
import torch

from fedpoint.client.engine import SiteEngine
from fedpoint.client.episodes import simulated_dice_auc, train_iteration
from fedpoint.shared.config import AdaptationConfig


def _engine(base, mode="frozen", **kw):
    """One first-click window, so forward counts and window sizes are the crop's (the scale choice
    has its own tests in test_box_prompt.py)."""
    from fedpoint.shared.focus import FocusConfig

    return SiteEngine.create(base, "norm", AdaptationConfig(mode=mode, lr=1e-2, **kw),
                             focus=FocusConfig(scales=(1.0,), rule="fixed"))


class _Constant(torch.nn.Module):
    """Stands in for the network: the same logit everywhere, and records the input shapes."""

    def __init__(self, value: float, shapes: list):
        super().__init__()
        self.value, self.shapes = value, shapes
        self.bias = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x):
        self.shapes.append(tuple(x.shape[2:]))
        return torch.full((x.shape[0], 1, *x.shape[2:]), self.value) + 0 * self.bias


def _record_inputs(net, shapes):
    return net.register_forward_pre_hook(lambda _m, args: shapes.append(tuple(args[0].shape[2:])))


@pytest.fixture
def large_2d(blob):
    image = np.zeros((1, 512, 512), np.float32)
    small, mask_small = blob((64, 64))
    image[0] = 0.2 + 0.01 * np.random.default_rng(1).standard_normal((512, 512))
    image[0, 300:364, 100:164] = small[0]
    mask = np.zeros((512, 512), bool)
    mask[300:364, 100:164] = mask_small
    return image, mask


def test_session_on_512_slice_returns_full_masks_and_network_sees_crops(tiny_base_2d, large_2d):
    image, mask = large_2d
    engine = _engine(tiny_base_2d, "mid+post")
    shapes: list = []
    hook = _record_inputs(engine.model.net, shapes)
    session = engine.open(image)
    centre = tuple(int(i) for i in np.argwhere(mask).mean(0))
    m1 = session.click(centre, True)
    assert m1.shape == (512, 512) and m1.dtype == bool and m1[centre]
    m2 = session.click((300, 100), False)
    assert m2.shape == (512, 512) and not m2[300, 100]
    session.click((332, 140), True)
    session.accept(mask)
    hook.remove()
    working = engine.model.model_cfg.input_size
    assert shapes and all(max(s) <= working for s in shapes)  # never the whole 512 x 512 slice
    rec = session.record()
    first = rec["windows"][0]
    assert first["size"] == [96, 96]  # CONTEXT_FACTOR (1) x input_size, centred on the click
    assert all(abs(s + n / 2 - p) <= 1 for s, n, p in zip(first["start"], first["size"], centre))
    assert all(len(w["start"]) == 2 for w in rec["windows"]) and rec["post_window"] is not None
    # later windows zoom on the mask and the clicks
    for w, upto in zip(rec["windows"][1:], (2, 3)):
        for c in rec["clicks"][:upto]:
            assert all(s <= p < s + n for p, s, n in zip(c["point"], w["start"], w["size"]))


@pytest.mark.parametrize("dims", [2, 3])
def test_click_rule_holds_whatever_the_network_says(dims, tiny_base_2d, tiny_base_3d, blob):
    base = tiny_base_2d if dims == 2 else tiny_base_3d
    shape = (200, 200) if dims == 2 else (20, 120, 110)
    image, _ = blob(shape)
    shapes: list = []
    engine = _engine(base)
    engine.model.net = _Constant(-50.0, shapes)  # background everywhere
    session = engine.open(image)
    p = tuple(n // 3 for n in shape)
    m = session.click(p, True)
    assert m[p] and m.sum() == 1  # a tiny mask holding the click's voxel
    engine.model.net = _Constant(50.0, shapes)  # foreground everywhere (inside the window)
    q = tuple(n // 3 + 2 for n in shape)
    m = session.click(q, False)
    assert m[p] and not m[q] and m.shape == shape
    r = tuple(n // 3 + 4 for n in shape)
    assert session.click(r, False)[r] == False  # noqa: E712
    assert not session.mask[q]
    assert all(max(s) <= engine.model.model_cfg.input_size for s in shapes)
    # the region far outside the zoom window stays background
    assert not m[(-1,) * dims]


def test_clicks_on_background_give_a_mask_not_an_error(tiny_base_2d, large_2d):
    image, _ = large_2d
    image[0, :40, :40] = 0.0  # "air"
    session = _engine(tiny_base_2d, "mid").open(image)
    m = session.click((5, 5), False)  # a first click that is negative
    assert m.shape == (512, 512) and not m[5, 5]
    m = session.click((10, 10), True)
    assert m[10, 10] and not m[5, 5]
    m = session.click((500, 500), False)  # far away: the window must hold every click
    assert m.shape == (512, 512) and not m[500, 500]


def test_small_images_are_predicted_whole_at_native_resolution(tiny_base_2d, blob):
    image, mask = blob((37, 29))
    engine = _engine(tiny_base_2d)
    shapes: list = []
    hook = _record_inputs(engine.model.net, shapes)
    session = engine.open(image)
    session.click((18, 14), True)
    session.click((2, 2), False)
    hook.remove()
    assert shapes == [(40, 32), (40, 32)]  # padded to the size multiple, as before focus crops
    assert session.record()["windows"][0] == {"start": [0, 0], "size": [40, 32]}


def test_repredict_after_the_mid_update_is_optional(tiny_base_2d, large_2d):
    image, mask = large_2d
    counts = {}
    for guard in (False, True):
        for repredict in (False, True):
            engine = _engine(tiny_base_2d, "mid")
            engine.model.online_guard.enabled = guard
            shapes: list = []
            hook = _record_inputs(engine.model.net, shapes)
            session = engine.open(image)
            session.repredict = repredict
            session.click((332, 132), True)
            session.click((300, 100), False)
            hook.remove()
            counts[guard, repredict] = len(shapes)
    # predict, predict, update (forward+backward), [predict again]; the guard's check is that
    # prediction again, so with the guard on repredicting costs nothing more
    assert counts == {(False, False): 3, (False, True): 4, (True, False): 4, (True, True): 4}


def test_repredict_follows_the_adaptation_config(tiny_base_2d, large_2d):
    image, _ = large_2d
    assert _engine(tiny_base_2d, "mid").open(image).repredict is False
    engine = _engine(tiny_base_2d, "mid", repredict=True)
    engine.model.online_guard.enabled = False
    shapes: list = []
    hook = _record_inputs(engine.model.net, shapes)
    session = engine.open(image)
    session.click((332, 132), True)
    session.click((300, 100), False)
    hook.remove()
    assert session.repredict is True and len(shapes) == 4  # the updated model predicted again


def test_episodes_train_and_score_in_focus_windows(tiny_base_2d, large_2d):
    image, mask = large_2d
    engine = _engine(tiny_base_2d, "mid+post")
    shapes: list = []
    hook = _record_inputs(engine.model.net, shapes)
    before = {n: p.detach().clone() for n, p in engine.model.net.named_parameters()}
    train_iteration(engine.model, image, mask, 2, np.random.default_rng(0))
    score = simulated_dice_auc(engine.model, [(image, mask)], 2)
    hook.remove()
    assert 0.0 <= score <= 1.0
    assert shapes and all(max(s) <= engine.model.model_cfg.input_size for s in shapes)
    assert any(not torch.equal(before[n], p) for n, p in engine.model.net.named_parameters())
