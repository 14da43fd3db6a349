import pytest
import torch
from pydantic import ValidationError

from fedpoint.shared.config import AdaptationConfig, AdapterConfig, ModelConfig
from fedpoint.shared.model import base_fingerprint, build_model, load_base


@pytest.mark.parametrize(
    "factory, field",
    [
        (lambda: AdaptationConfig(lr=-1), "lr"),
        (lambda: AdaptationConfig(mode="sometimes"), "mode"),
        (lambda: AdapterConfig(kind="bitfit"), "kind"),
        (lambda: ModelConfig(spatial_dims=4), "spatial_dims"),
        (lambda: ModelConfig(channels=(8, 16, 32), strides=(2,)), "strides"),
        (lambda: AdaptationConfig(learning_rate=1e-3), "learning_rate"),
    ],
)
def test_bad_values_name_the_field(factory, field):
    with pytest.raises(ValidationError) as err:
        factory()
    assert field in str(err.value)


@pytest.mark.parametrize("dims, shape", [(2, (1, 4, 32, 32)), (3, (1, 4, 16, 16, 16))])
def test_model_takes_image_clicks_and_previous_mask(dims, shape):
    cfg = ModelConfig(spatial_dims=dims, channels=(8, 16, 32), strides=(2, 2))
    net = build_model(cfg)
    assert net(torch.zeros(shape)).shape == (1, 1, *shape[2:])
    norms = [m for m in net.modules() if isinstance(m, torch.nn.modules.instancenorm._InstanceNorm)]
    assert norms and all(m.affine for m in norms)


def test_fingerprint_changes_with_any_weight(tiny_base_2d):
    net, cfg, card = load_base(tiny_base_2d)
    fp = base_fingerprint(net)
    assert fp == card["fingerprint"]
    with torch.no_grad():
        next(net.parameters()).view(-1)[0] += 1e-3
    assert base_fingerprint(net) != fp


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no base checkpoint"):
        load_base(tmp_path / "nothing")


def test_packaged_base_loads_with_its_card():
    net, cfg, card = load_base()
    assert cfg.spatial_dims == 2
    assert card["fingerprint"] == base_fingerprint(net)
    assert "validation" in card and "provenance" in card
