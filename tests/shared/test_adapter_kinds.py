"""Each adapter kind owns its rules; validating a config, the modes and the base's card need no torch."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from fedpoint.shared.adapter_kinds import ADAPTER_KINDS, PEFT_FORMAT, adapter_kind
from fedpoint.shared.config import ADAPTATION_MODES, ADAPTATION_STAGES, AdaptationConfig, AdapterConfig, mode_stages

HEAVY = ("torch", "monai", "peft", "numpy")


def _probe(code: str) -> dict:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_validating_configs_imports_no_torch():
    found = _probe(
        "import json, sys\n"
        "import fedpoint.shared.config as C\n"
        f"kinds = {list(ADAPTER_KINDS)!r}\n"
        "cfgs = [C.AdapterConfig(kind=k) for k in kinds] + [C.AdapterConfig(kind='lora', lora_freeze_a=False)]\n"
        "rules = [(c.rules.lr, c.rules.variant(c), c.rules.exact_under_secure_aggregation(c)) for c in cfgs]\n"
        "modes = [C.AdaptationConfig(mode=m).stages for m in C.ADAPTATION_MODES]\n"
        "try:\n    C.AdapterConfig(kind='bogus')\nexcept ValueError:\n    pass\n"
        f"print(json.dumps({{m: m in sys.modules for m in {HEAVY!r}}}))\n")
    assert found == {m: False for m in HEAVY}


def test_reading_a_base_card_imports_no_torch():
    found = _probe(
        "import json, sys\n"
        "from fedpoint.shared.bases import PACKAGED_CHECKPOINTS, base_config, locate_base, resolve_base\n"
        "names = sorted(p.stem for p in PACKAGED_CHECKPOINTS.glob('*.safetensors'))\n"
        "same = all(locate_base(n) == resolve_base(n) for n in names)\n"
        "dims = [base_config(locate_base(n)).spatial_dims for n in names]\n"
        "print(json.dumps({'same': same, 'dims': dims, 'torch': 'torch' in sys.modules}))\n")
    assert found["same"] and not found["torch"] and set(found["dims"]) <= {2, 3}


def test_every_torch_kind_has_rules_and_every_rule_a_torch_kind():
    from fedpoint.shared.adapters import ADAPTER_CLASSES

    assert set(ADAPTER_CLASSES) == set(ADAPTER_KINDS)
    for name, kind in ADAPTER_KINDS.items():
        assert kind.name == name and 0 < kind.lr <= 1.0 and 0 < kind.delta_rms_cap and kind.trainable


def test_unknown_kinds_are_refused_by_name():
    with pytest.raises(ValueError, match="unknown adapter kind 'bogus'; known: norm, norm\\+stem, full, lora"):
        adapter_kind("bogus")
    with pytest.raises(ValueError, match="unknown adapter kind"):
        AdapterConfig(kind="bogus")


def test_a_site_model_uses_its_kinds_learning_rate(tiny_base_2d):
    from fedpoint.client.site_model import SiteModel
    from fedpoint.shared.adapters import make_adapter
    from fedpoint.shared.model import load_base

    net, cfg, _ = load_base(tiny_base_2d)
    for name in ("norm", "full"):
        model = SiteModel(make_adapter(net, name), cfg, AdaptationConfig(mode="frozen"))
        assert model.lr == adapter_kind(name).lr == model.optimizer.param_groups[0]["lr"]
    assert SiteModel(make_adapter(net, "norm"), cfg, AdaptationConfig(mode="frozen", lr=0.5)).lr == 0.5


def test_every_weight_is_what_the_kind_opens(tiny_base_2d):
    from fedpoint.shared.adapters import make_adapter
    from fedpoint.shared.model import load_base

    net, _, _ = load_base(tiny_base_2d)
    total = sum(p.numel() for p in net.parameters())
    for name, kind in ADAPTER_KINDS.items():
        if kind.requires:
            pytest.importorskip(kind.requires[0])
        assert (make_adapter(net, name).num_trainable() == total) is kind.every_weight, name


@pytest.mark.parametrize("name", list(ADAPTER_KINDS))
def test_the_save_format_is_the_kinds(tiny_base_2d, tmp_path, name):
    kind = adapter_kind(name)
    for package in kind.requires:
        pytest.importorskip(package)
    from fedpoint.shared.adapters import make_adapter
    from fedpoint.shared.model import load_base

    net, _, _ = load_base(tiny_base_2d)
    saved = make_adapter(net, name).save(tmp_path / name)
    peft_files = {"adapter_model.safetensors", "adapter_config.json"} <= {p.name for p in saved.iterdir()}
    assert peft_files is (kind.save_format == PEFT_FORMAT) is kind.export_needs_base
    assert (saved / "adapter.safetensors").exists() is not kind.export_needs_base


def test_modes_are_parsed_once_into_stages():
    assert mode_stages("frozen") == frozenset()
    assert mode_stages("mid+post+episodes") == frozenset(ADAPTATION_STAGES)
    for mode in ADAPTATION_MODES:
        cfg = AdaptationConfig(mode=mode)
        assert cfg.stages == mode_stages(mode) <= set(ADAPTATION_STAGES)
        assert (cfg.uses_mid, cfg.uses_post, cfg.uses_episodes) == tuple(s in cfg.stages for s in ADAPTATION_STAGES)
    assert AdaptationConfig(mode="post").uses_mid is False and AdaptationConfig(mode="mid").uses_post is False
    with pytest.raises(ValueError, match="unknown mode 'midpost'"):
        mode_stages("midpost")
