import numpy as np
import pytest
import torch

from fedpoint.shared.clicks import Click
from fedpoint.shared.config import ModelConfig
from fedpoint.shared.focus import (BACKGROUND_LOGIT, CONTEXT_FACTOR, FocusConfig, FocusWindow, crop,
                                   encode_window_clicks, enforce_clicks, first_click_window, fit_window, paste,
                                   zoom_window)

CFG2 = ModelConfig(channels=(8, 16, 32), strides=(2, 2), input_size=96)          # size_multiple 4
CFG3 = ModelConfig(spatial_dims=3, channels=(8, 16, 32), strides=(2, 2), input_size=32)
DEEP = ModelConfig(arch="dynunet", channels=(8, 16, 32, 64, 128, 256), strides=(2,) * 5, input_size=96)  # multiple 32


def _ball(shape, centre, radius):
    grid = np.indices(shape)
    return ((grid - np.reshape(centre, (-1,) + (1,) * len(shape))) ** 2).sum(0) <= radius ** 2


def test_focus_config_defaults_follow_the_working_size():
    f = FocusConfig().resolve(DEEP)
    assert f.context == CONTEXT_FACTOR * 96 == 96 and f.min_size == 48 and f.expand == 1.4
    assert FocusConfig(context=150, min_size=20).resolve(DEEP).context == 150
    with pytest.raises(ValueError, match="expand"):
        FocusConfig(expand=0.9)


@pytest.mark.parametrize("cfg, shape", [(CFG2, (40, 37)), (CFG3, (20, 17, 30))])
def test_paste_of_crop_is_exact_at_native_scale(cfg, shape):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 2, *shape)).astype(np.float32)
    # a box running off the image's start (padding) and its end
    window = fit_window([-3] * len(shape), [n // 2 + 5 for n in shape], shape, cfg)
    assert window.native and all(s == 1.0 for s in window.scale)
    cut = crop(x, window)
    assert cut.shape == (1, 2, *window.out_size)
    back = paste(cut, window, shape, fill=np.nan)
    inside = tuple(slice(max(0, s), min(n, e)) for s, e, n in zip(window.start, window.stop, shape))
    assert np.array_equal(back[(..., *inside)], x[(..., *inside)])  # exact copy, no interpolation
    outside = np.ones(shape, bool)
    outside[inside] = False
    assert np.isnan(back[0, 0][outside]).all()
    # the padded part of the crop is zero
    pad = tuple(slice(0, -s) for s in window.start)
    assert (cut[(..., *pad)] == 0).all()


@pytest.mark.parametrize("cfg, shape, centre, radius", [
    (CFG2, (512, 512), (300, 140), 40),
    (CFG3, (90, 100, 80), (40, 60, 35), 15),
])
def test_pasted_mask_lands_where_it_was_cut(cfg, shape, centre, radius):
    mask = _ball(shape, centre, radius)
    window = zoom_window(mask, [Click(tuple(centre), True)], shape, cfg, expand=2.0)
    assert not window.native and max(window.scale) < 1  # resampled down
    cut = crop(mask, window)
    assert cut.dtype == bool and cut.shape == window.out_size
    back = paste(cut, window, shape)
    assert back.shape == shape and back.dtype == bool
    inter = (back & mask).sum()
    assert 2 * inter / (back.sum() + mask.sum()) > 0.95
    assert np.allclose(np.argwhere(back).mean(0), centre, atol=1.0)
    # outside the window: background, even where the image is "foreground"
    everything = paste(np.ones(window.out_size, bool), window, shape)
    assert everything.sum() == np.prod([min(n, e) - max(0, s) for s, e, n in zip(window.start, window.stop, shape)])


def test_paste_puts_background_logits_outside_and_keeps_tensors_tensors():
    window = first_click_window((10, 10), (512, 512), 192, CFG2)
    logits = torch.full((1, 1, *window.out_size), 5.0)
    full = paste(logits, window, (512, 512))
    assert isinstance(full, torch.Tensor) and full.shape == (1, 1, 512, 512)
    assert full[0, 0, 0, 0] == 5.0 and full[0, 0, 300, 300] == BACKGROUND_LOGIT
    with pytest.raises(ValueError, match="window"):
        paste(torch.zeros(1, 1, 8, 8), window, (512, 512))


def test_first_click_window_is_centred_on_the_click_and_clipped_to_the_image():
    w = first_click_window((256, 200), (512, 512), 192, DEEP)
    assert w.size == (192, 192) and w.out_size == (96, 96) and w.scale == (0.5, 0.5)
    assert all(abs((s + n / 2) - p) <= 1 for s, n, p in zip(w.start, w.size, (256, 200)))
    assert w.to_window((256, 200)) == (48, 48)
    corner = first_click_window((3, 505), (512, 512), 192, DEEP)  # shifted inside, never past the edge
    assert corner.start == (0, 512 - 192) and corner.contains((3, 505))
    small = first_click_window((10, 20), (60, 50), 192, DEEP)  # smaller than the working size: native
    assert small.native and small.start == (0, 0) and small.out_size == (64, 64)
    tall = first_click_window((100, 20), (512, 40), 192, DEEP)  # one axis shorter than the context
    assert tall.size[0] == 192 and tall.start[1] <= 0 and tall.stop[1] >= 40


def test_small_images_keep_todays_whole_image_behaviour():
    # an image that fits the working size: the window is the image, at native resolution, padded at
    # its end to the size multiple, as SiteModel did before focus crops
    w = first_click_window((5, 5), (37, 29), 192, CFG2)
    assert w.start == (0, 0) and w.native and w.out_size == (40, 32)


def test_zoom_window_holds_mask_and_every_click_and_is_square():
    shape = (512, 512)
    mask = np.zeros(shape, bool)
    mask[100:140, 200:260] = True
    clicks = [Click((120, 230), True), Click((180, 250), False), Click((110, 290), True)]
    w = zoom_window(mask, clicks, shape, DEEP)
    lo, hi = np.array([100, 200]), np.array([181, 291])
    assert all(s <= a for s, a in zip(w.start, lo)) and all(e >= b for e, b in zip(w.stop, hi))
    assert w.size[0] == w.size[1] >= 1.4 * 91 - 1 and all(w.contains(c.point) for c in clicks)
    assert all(s <= 1.0 for s in w.scale)
    tiny = zoom_window(np.zeros(shape, bool), [Click((5, 500), True)], shape, DEEP)
    # min_size = input_size // 2 = 48, rounded up to the multiple of 32, inside the image
    assert tiny.size == (64, 64) and tiny.native and tiny.contains((5, 500)) and tiny.stop[1] == 512
    with pytest.raises(ValueError, match="non-empty"):
        zoom_window(np.zeros(shape, bool), [], shape, DEEP)


@pytest.mark.parametrize("seed", range(20))
def test_windows_never_upsample_and_sizes_are_multiples(seed):
    rng = np.random.default_rng(seed)
    shape = tuple(int(n) for n in rng.integers(20, 600, size=2))
    point = tuple(int(rng.integers(n)) for n in shape)
    for w in (first_click_window(point, shape, int(rng.integers(8, 400)), DEEP),
              zoom_window(None, [Click(point, True)], shape, DEEP, min_size=int(rng.integers(1, 300)))):
        assert all(k <= 1.0 for k in w.scale)
        assert all(o % DEEP.size_multiple == 0 for o in w.out_size)
        assert max(w.out_size) <= DEEP.input_size  # 96 is a multiple of 32
        assert w.contains(point)


def test_click_maps_are_encoded_at_the_working_size():
    shape = (512, 512)
    click = Click((300, 100), True)
    near = first_click_window(click.point, shape, 96, DEEP)   # native
    far = first_click_window(click.point, shape, 384, DEEP)   # scale 1/4
    assert near.native and far.scale == (0.25, 0.25)
    for w in (near, far):
        maps = encode_window_clicks([click, Click((0, 0), False)], w, sigma=3.0)
        assert maps.shape == (2, *w.out_size)
        peak = np.unravel_index(np.argmax(maps[0]), w.out_size)
        assert peak == w.to_window(click.point)
        # the Gaussian has the same footprint (in window voxels) whatever the scale
        assert (maps[0] > 0).sum() == (encode_window_clicks([click], near, 3.0)[0] > 0).sum()
        assert maps[1].max() == 0  # the negative click lies outside both windows
    # a click just outside the window keeps the tail of its Gaussian
    edge = FocusWindow((10, 10), (32, 32), (32, 32))
    assert encode_window_clicks([Click((8, 20), True)], edge, 3.0)[0].max() > 0
    assert encode_window_clicks([Click((-100, 20), True)], edge, 3.0)[0].max() == 0


def test_to_window_and_back_round_trips():
    w = fit_window((17, -5), (200, 200), (512, 512), DEEP)
    for q in [(0, 0), (10, 47), (95, 95)]:
        assert w.to_window(w.to_image(q)) == q


@pytest.mark.parametrize("dims", [2, 3])
def test_click_rule_sets_positive_and_clears_negative_voxels(dims):
    shape = (9,) * dims
    pos, neg = Click((2,) * dims, True), Click((6,) * dims, False)
    empty = np.zeros(shape, bool)
    full = torch.ones((1, 1, *shape))
    assert enforce_clicks(empty, [pos, neg])[pos.point] and enforce_clicks(empty, [pos]).sum() == 1
    out = enforce_clicks(full, [pos, neg])
    assert out[(0, 0, *neg.point)] == 0 and out.sum() == 9 ** dims - 1
    # a later click on the same voxel wins
    again = enforce_clicks(np.zeros(shape, bool), [pos, Click(pos.point, False)])
    assert not again.any()


def test_a_window_view_is_the_window_cut_and_pasted_back():
    """`FocusWindow.cut` gives exactly what crop/clicks/box give one by one, and the view pastes back."""
    from fedpoint.shared.clicks import Box

    shape = (300, 260)
    image = torch.rand((1, 1, *shape))
    prev = torch.as_tensor(_ball(shape, (150, 130), 40))[None, None]
    clicks, box = [Click((150, 130), True), Click((100, 90), False)], Box((100, 80), (200, 190))
    window = zoom_window(prev[0, 0], clicks, shape, CFG2)
    view = window.cut(image, clicks, prev.float(), box)
    assert torch.equal(view.image, crop(image, window))
    assert torch.equal(view.prev, crop(prev, window, mask=True).float())
    assert view.clicks == window.clicks(clicks) and view.box == window.box(box) and view.image_shape == shape
    assert torch.equal(view.paste(view.prev > 0), paste(view.prev > 0, window, shape))


def test_the_focus_rule_picks_the_sessions_windows():
    from fedpoint.shared.clicks import Box
    from fedpoint.shared.focus import Focus, box_window

    focus, shape = Focus.of(None, DEEP), (512, 512)
    click = Click((200, 300), True)
    assert focus.window([click], None, shape) == first_click_window(click.point, shape, 96, DEEP)
    mask = _ball(shape, (200, 300), 30)
    assert focus.window([click], mask, shape) == zoom_window(mask, [click], shape, DEEP)
    box = Box((150, 250), (260, 360))
    assert focus.window([], None, shape, box=box) == box_window(box, None, [], shape, DEEP)
    sides = [w.size[0] for w in focus.first_click_windows(click.point, shape)]
    assert sides == sorted(sides) and len(sides) == len(set(sides)) >= 2
