"""The network's input contract: one builder, used by pre-training and by the site."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedpoint.shared.clicks import Box, Click, check_box, encode_box
from fedpoint.shared.config import BOX_INPUTS, CLICK_INPUTS, ModelConfig
from fedpoint.shared.inputs import build_inputs


def _cfg(inputs):
    return ModelConfig(channels=(8, 16, 32), strides=(2, 2), inputs=inputs)


def test_channels_follow_the_configs_roles_in_order():
    image = torch.rand(1, 1, 32, 32)
    prev = torch.zeros(1, 1, 32, 32)
    prev[0, 0, :4] = 1
    clicks, box = [[Click((10, 10), True), Click((20, 5), False)]], [Box((2, 3), (12, 20))]
    x = build_inputs(image, clicks, prev, _cfg(BOX_INPUTS), box)
    assert x.shape == (1, 5, 32, 32)
    assert torch.equal(x[0, 0], image[0, 0]) and torch.equal(x[0, 3], prev[0, 0])
    assert x[0, 1, 10, 10] == 1 and x[0, 2, 20, 5] == 1 and x[0, 1, 20, 5] == 0
    assert x[0, 4].sum() == 10 * 17 and x[0, 4, 2, 3] == 1 and x[0, 4, 12, 3] == 0
    swapped = build_inputs(image, clicks, prev, _cfg(("image", "prev", "box", "neg", "pos")), box)
    assert torch.equal(swapped[0, 1], prev[0, 0]) and torch.equal(swapped[0, 4], x[0, 1])


def test_a_click_only_base_has_four_channels_and_refuses_a_box():
    cfg = _cfg(CLICK_INPUTS)
    assert cfg.in_channels == 4 and not cfg.takes_box
    assert build_inputs(torch.rand(2, 1, 16, 16), [[], []], None, cfg).shape == (2, 4, 16, 16)
    with pytest.raises(ValueError, match="box"):
        build_inputs(torch.rand(1, 1, 16, 16), [[]], None, cfg, [Box((0, 0), (4, 4))])


def test_unknown_or_incomplete_roles_are_refused():
    with pytest.raises(ValueError, match="roles"):
        _cfg(("image", "pos", "neg", "prev", "scribble"))
    with pytest.raises(ValueError, match="prev"):
        _cfg(("image", "pos", "neg"))


def _fed_to_the_net(site, image, box):
    """What the site's network receives for one prediction (32 px: no padding)."""
    seen = []
    hook = site.net.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach().clone()))
    try:
        site.logits(image, [], None, box=box)
    finally:
        hook.remove()
    return seen[0]


def test_pretraining_and_the_site_build_the_same_inputs(tiny_box_base_2d, monkeypatch):
    """Both sides go through `build_inputs`: a changed channel order changes what both feed the net."""
    from fedpoint.client.site_model import SiteModel
    from fedpoint.shared.adapters import make_adapter
    from fedpoint.shared.model import load_base
    from fedpoint.simulations import pretrain

    net, cfg, card = load_base(tiny_box_base_2d)
    site = SiteModel(make_adapter(net, "norm", card["fingerprint"]), cfg)
    image = torch.rand(1, 1, 32, 32)
    box = Box((4, 4), (20, 24))
    at_site = _fed_to_the_net(site, image, box)  # the box alone: the first prediction of validate(prompt="box")
    seen = {}

    class Net(torch.nn.Module):
        def forward(self, x):
            seen["x"] = x
            return torch.zeros(x.shape[0], 1, *x.shape[2:])

    obj = type("Obj", (), {"image": image[0].numpy(), "mask": np.zeros((32, 32), bool), "click": (8, 9), "regime": "zoom"})
    obj.mask[4:20, 4:24] = True
    pretrain.validate(Net(), [obj], cfg, clicks=1, prompt="box")
    assert torch.equal(seen["x"], at_site) and at_site[0, 4].sum() == 16 * 20
    reordered = cfg.model_copy(update={"inputs": ("image", "box", "prev", "pos", "neg")})
    site.model_cfg = reordered
    pretrain.validate(Net(), [obj], reordered, clicks=1, prompt="box")
    assert torch.equal(seen["x"][0, 1], at_site[0, 4]), "pre-training follows the new order"
    assert torch.equal(_fed_to_the_net(site, image, box)[0, 1], at_site[0, 4]), "so does the site"


def test_box_checks_name_the_field():
    assert check_box((1, 2), (5, 6), (10, 10)) == Box((1, 2), (5, 6))
    for lo, hi, words in [((1, 2), (5, 6, 7), "coordinates"), ((5, 2), (1, 6), "inverted or empty"),
                          ((1, 2), (1, 6), "inverted or empty"), ((0, 0), (11, 4), "outside"),
                          ((-1, 0), (4, 4), "outside"), ((0, float("nan")), (4, 4), "finite")]:
        with pytest.raises(ValueError, match=words) as err:
            check_box(lo, hi, (10, 10), field="params.box")
        assert str(err.value).startswith("params.box")
    assert encode_box(Box((-3, 8), (2, 20)), (10, 10)).sum() == 2 * 2


def test_each_architecture_states_the_roles_the_adapters_open():
    from fedpoint.shared.model import ARCHITECTURES, architecture_of, build_model, stem_and_head

    for arch in ARCHITECTURES:
        cfg = ModelConfig(arch=arch, channels=(8, 16, 32), strides=(2, 2), inputs=BOX_INPUTS)
        net = build_model(cfg)
        record = architecture_of(net)
        assert record.name == arch and net.fedpoint_arch == arch
        norms = record.norm_layers(net)
        assert norms and all(m.affine for m in norms)
        assert record.lora_targets(net) and all("conv" in n or "model" in n for n in record.lora_targets(net))
        assert stem_and_head(net) == record.stem_head(net)
        first = next(p for p in net.parameters() if p.ndim >= 3)
        assert first.shape[1] == cfg.in_channels == 5, "the stem takes the config's input channels"
