"""The bank store: numbered versions with provenance, salted site hashes, atomic commits, export."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fedpoint.server.aggregate import aggregate, round_record
from fedpoint.server.banks import BankNotFoundError, BankStore
from fedpoint.server.export import export_bank
from fedpoint.shared.adapters import AdapterMismatchError, load_adapter
from fedpoint.shared.config import AdapterConfig
from fedpoint.shared.payload import to_numpy


@pytest.fixture
def store_with_rounds(tmp_path, adapter_state, make_reply):
    """A store whose general bank went through two aggregation rounds."""
    adapter, bank, fingerprint = adapter_state("norm")
    store = BankStore(tmp_path / "banks")
    assert store.init_bank("general", bank, fingerprint, "norm") == 1
    state = bank
    for rnd in (1, 2):
        replies = [make_reply(state, fingerprint, f"hospital-{i}", seed=10 * rnd + i, weight=i + 1) for i in range(3)]
        state = aggregate(state, replies, "norm")
        assert store.write("general", state, round_record(rnd, replies, [])) == rnd + 1
    return store, state, fingerprint


def test_versions_and_manifest_fields(store_with_rounds):
    store, state, fingerprint = store_with_rounds
    assert store.banks() == ["general"]
    latest = store.latest("general")
    assert latest.version == 3
    assert all(np.array_equal(latest.state[k], state[k]) for k in state)
    m = latest.manifest
    assert m["bank"] == "general" and m["version"] == 3 and m["round"] == 2 and m["parent"] == 2
    assert m["base_fingerprint"] == fingerprint and m["kind"] == "norm" and m["config"]["kind"] == "norm"
    assert m["counts"] == {"replies": 3, "accepted": 3, "rejected": 0, "accepted_cases": 6.0}
    assert m["metrics"]["dice1"] == pytest.approx(0.5)
    assert m["aggregation"] == "weighted-mean-of-deltas" and m["exact_under_secure_aggregation"] is True
    assert m["created"] and m["parameters"] == sum(v.size for v in state.values())
    assert [h["version"] for h in store.history("general")] == [1, 2, 3]
    assert store.history("general")[0]["parent"] is None
    assert json.loads((store.root / "general" / "latest.json").read_text())["version"] == 3
    assert store.get("general", 1).manifest["round"] == 0


def test_sites_are_salted_hashes_that_do_not_contain_the_id(store_with_rounds, tmp_path):
    store, _, _ = store_with_rounds
    sites = store.latest("general").manifest["sites"]
    assert len(sites) == 3 and sites == sorted(store.site_hash(f"hospital-{i}") for i in range(3))
    text = "".join(p.read_text() for p in store.root.rglob("*.json"))
    assert "hospital" not in text
    assert BankStore(store.root).site_hash("hospital-0") == store.site_hash("hospital-0")  # salt kept
    assert BankStore(tmp_path / "other").site_hash("hospital-0") != store.site_hash("hospital-0")


def test_a_half_written_version_is_ignored_and_reopening_resumes(store_with_rounds):
    store, state, _ = store_with_rounds
    folder = store.root / "general"
    # a coordinator killed while staging v4: weights written, manifest not yet, never renamed
    staging = folder / ".staging-crashed"
    staging.mkdir()
    (staging / "adapter.safetensors").write_bytes(b"partial")
    # and a version folder without its manifest (cannot come from our writer, must still be ignored)
    (folder / "v0009").mkdir()
    (folder / "v0009" / "adapter.safetensors").write_bytes(b"junk")
    reopened = BankStore(store.root, create=False)
    assert reopened.latest("general").version == 3
    assert reopened.write("general", {k: v + 1 for k, v in state.items()}, {"round": 3}) == 4
    assert not staging.exists()
    assert reopened.latest("general").manifest["parent"] == 3


def test_write_refuses_foreign_state_and_unknown_banks(store_with_rounds):
    store, state, _ = store_with_rounds
    with pytest.raises(AdapterMismatchError):
        store.write("general", {"x": np.zeros(2, np.float32)}, {})
    with pytest.raises(ValueError, match="non-finite"):
        store.write("general", {k: v * np.nan for k, v in state.items()}, {})
    with pytest.raises(ValueError, match="cannot change"):
        store.write("general", state, {"kind": "full"})
    with pytest.raises(BankNotFoundError):
        store.write("modality-ct", state, {})
    with pytest.raises(BankNotFoundError, match="no version 7"):
        store.get("general", 7)
    with pytest.raises(FileExistsError):
        store.init_bank("general", state, "f", "norm")
    with pytest.raises(ValueError, match="bad bank name"):
        store.latest("../general")
    with pytest.raises(FileNotFoundError):
        BankStore(store.root / "missing", create=False)


def test_export_of_a_norm_bank_loads_and_refuses_a_foreign_base(store_with_rounds, tiny_model, tmp_path):
    from fedpoint.shared.config import ModelConfig
    from fedpoint.shared.model import build_model

    store, state, _ = store_with_rounds
    out = export_bank(store, "general", None, tmp_path / "export")
    adapter = load_adapter(tiny_model[0], out)
    assert all(np.array_equal(to_numpy(adapter.state())[k], state[k]) for k in state)
    assert adapter.kind == "norm"
    import torch

    torch.manual_seed(123)
    foreign = build_model(ModelConfig(channels=(8, 16, 32), strides=(2, 2)))
    with pytest.raises(AdapterMismatchError, match="refusing"):
        load_adapter(foreign, out)
    with pytest.raises(AdapterMismatchError, match="refusing"):
        export_bank(store, "general", 2, tmp_path / "export2", base=foreign)
    with pytest.raises(FileExistsError):
        export_bank(store, "general", 2, out)
    assert export_bank(store, "general", 2, out, overwrite=True) == out


@pytest.mark.parametrize("freeze_a", [True, False])
def test_export_of_a_lora_bank_is_peft_format_on_the_named_base(tmp_path, adapter_state, make_reply, tiny_base_2d, freeze_a):
    cfg = AdapterConfig(kind="lora", lora_rank=2, lora_freeze_a=freeze_a)
    adapter, bank, fingerprint = adapter_state(cfg)
    store = BankStore(tmp_path / "banks")
    store.init_bank("modality-ct", bank, fingerprint, "lora", cfg)
    replies = [make_reply(bank, fingerprint, f"s{i}", seed=i) for i in range(2)]
    new = aggregate(bank, replies, "lora", cfg)
    store.write("modality-ct", new, round_record(1, replies))
    out = export_bank(store, "modality-ct", None, tmp_path / "lora-export", base=tiny_base_2d)
    assert (out / "adapter_model.safetensors").is_file() and (out / "adapter_config.json").is_file()
    from fedpoint.shared.model import load_base

    loaded = load_adapter(load_base(tiny_base_2d)[0], out)
    got = to_numpy(loaded.state())
    assert all(np.allclose(got[k], new[k]) for k in new)
    assert loaded.cfg.lora_freeze_a is freeze_a
    assert store.latest("modality-ct").manifest["exact_under_secure_aggregation"] is freeze_a


def test_bank_folders_use_the_adapter_file_names():
    from fedpoint.server import banks
    from fedpoint.shared import adapters

    assert banks.MANIFEST == adapters.MANIFEST
    assert banks.WEIGHTS == "adapter.safetensors"


def test_extra_manifest_fields_are_kept_but_cannot_override_the_store(store_with_rounds):
    store, state, _ = store_with_rounds
    version = store.write("general", state, {"round": 3, "sources": ["general@v3"], "version": 99, "bank": "evil", "parent": 0})
    manifest = store.latest("general").manifest
    assert manifest["sources"] == ["general@v3"]
    assert (manifest["version"], manifest["bank"], manifest["parent"]) == (version, "general", 3)


def test_a_committed_version_counts_even_if_the_pointer_was_not_updated(store_with_rounds):
    """Killed between the rename (the commit) and rewriting latest.json."""
    store, _, _ = store_with_rounds
    (store.root / "general" / "latest.json").write_text(json.dumps({"version": 2}))
    assert BankStore(store.root).latest("general").version == 3
