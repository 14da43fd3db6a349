import json

import pytest
import torch

from fedpoint.shared.adapters import ADAPTER_CLASSES, AdapterMismatchError, load_adapter, make_adapter
from fedpoint.shared.config import AdapterConfig
from fedpoint.shared.model import load_base


def _step(adapter, shape):
    x = torch.randn((1, 4, *shape))
    opt = torch.optim.SGD(adapter.trainable_parameters(), lr=0.1)
    adapter.net(x).pow(2).mean().backward()
    opt.step()


def _all_params(adapter):
    return {n: p.detach().clone() for n, p in adapter.net.named_parameters()}


@pytest.mark.parametrize("kind", list(ADAPTER_CLASSES))
def test_only_the_kinds_parameters_change(kind, tiny_base_2d):
    net, _, _ = load_base(tiny_base_2d)
    adapter = make_adapter(net, kind)
    before = _all_params(adapter)
    _step(adapter, (32, 32))
    after = _all_params(adapter)
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed and changed <= set(adapter.names)
    if kind == "norm":
        assert all("adn.N" in n for n in adapter.names)
    if kind == "lora":
        assert all("lora_B" in n for n in adapter.names)  # A frozen by default
    # the base handed in is never modified
    assert all(torch.equal(p, q) for p, q in zip(net.state_dict().values(), load_base(tiny_base_2d)[0].state_dict().values()))


def test_sizes_are_ordered_and_small(tiny_base_2d):
    net, _, _ = load_base(tiny_base_2d)
    total = sum(p.numel() for p in net.parameters())
    sizes = {k: make_adapter(net, k).num_trainable() for k in ADAPTER_CLASSES}
    assert sizes["full"] == total
    assert sizes["norm"] < sizes["norm+stem"] < total
    assert sizes["lora"] < total / 5


@pytest.mark.parametrize("kind", list(ADAPTER_CLASSES))
def test_state_delta_and_disk_round_trip(kind, tiny_base_2d, tmp_path):
    net, _, _ = load_base(tiny_base_2d)
    adapter = make_adapter(net, kind)
    reference = adapter.state()
    _step(adapter, (32, 32))
    delta = adapter.delta(reference)
    assert any(v.abs().sum() > 0 for v in delta.values())
    fresh = make_adapter(net, kind)
    fresh.apply_delta(delta)
    assert all(torch.allclose(fresh.state()[n], adapter.state()[n], atol=1e-6) for n in adapter.names)
    adapter.save(tmp_path / kind)
    if kind == "lora":
        assert (tmp_path / kind / "adapter_model.safetensors").exists()  # peft's own format
        assert (tmp_path / kind / "adapter_config.json").exists()
    manifest = json.loads((tmp_path / kind / "fedpoint_adapter.json").read_text())
    assert manifest["base_fingerprint"] == adapter.base_fingerprint
    loaded = load_adapter(net, tmp_path / kind)
    x = torch.randn((1, 4, 32, 32))
    with torch.no_grad():
        assert torch.allclose(loaded.net(x), adapter.net(x), atol=1e-5)


def test_free_lora_trains_both_factors(tiny_base_2d):
    net, _, _ = load_base(tiny_base_2d)
    adapter = make_adapter(net, AdapterConfig(kind="lora", lora_freeze_a=False))
    assert any("lora_A" in n for n in adapter.names) and any("lora_B" in n for n in adapter.names)


@pytest.mark.parametrize("kind", ["norm", "lora"])
def test_adapter_for_another_base_is_refused(kind, tiny_base_2d, tmp_path):
    net, _, _ = load_base(tiny_base_2d)
    make_adapter(net, kind).save(tmp_path / "a")
    other = load_base(tiny_base_2d)[0]
    with torch.no_grad():
        next(other.parameters()).view(-1)[0] += 1.0
    with pytest.raises(AdapterMismatchError, match="made for base"):
        load_adapter(other, tmp_path / "a")


def test_state_with_wrong_keys_or_shapes_is_refused(tiny_base_2d):
    adapter = make_adapter(load_base(tiny_base_2d)[0], "norm")
    state = adapter.state()
    name = next(iter(state))
    with pytest.raises(AdapterMismatchError, match="shape"):
        adapter.load_state({**state, name: torch.zeros(3, 3)})
    with pytest.raises(AdapterMismatchError, match="unexpected"):
        adapter.load_state({**state, "extra.weight": torch.zeros(1)})


def test_3d_adapters(tiny_base_3d):
    net, _, _ = load_base(tiny_base_3d)
    for kind in ("norm", "lora"):
        adapter = make_adapter(net, kind)
        _step(adapter, (16, 16, 16))
        assert adapter.num_trainable() > 0


@pytest.mark.parametrize("kind", ["norm", "full"])
def test_one_schema_rule_for_adapters_and_arrays(kind, tiny_base_2d):
    """`Adapter.schema()` and the schema of its state as sent (numpy) are the same rule's answers."""
    from fedpoint.shared.payload import state_schema, to_numpy

    adapter = make_adapter(load_base(tiny_base_2d)[0], kind)
    assert adapter.schema() == state_schema(to_numpy(adapter.state())) == state_schema(adapter.state())
