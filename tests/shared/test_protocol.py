"""The run config and the round instruction that coordinator and sites share."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from fedpoint.shared import protocol as P
from fedpoint.shared.config import AdapterConfig
from fedpoint.shared.run_config import FederationConfig, parse_run_config

REPO = Path(__file__).resolve().parents[2]


def test_pyproject_run_config_is_exactly_the_federation_config():
    table = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    fed = parse_run_config(table)
    assert set(table) == set(FederationConfig().to_run_config())  # every key typed, none missing
    assert fed.to_run_config() == table


def test_run_config_merges_defaults_and_names_bad_keys():
    fed = parse_run_config({"num-server-rounds": 7}, defaults={"num-server-rounds": 3, "clicks": 9})
    assert (fed.num_server_rounds, fed.clicks) == (7, 9)
    assert fed.bank_store_path == Path(fed.output_dir).expanduser() / "banks"
    with pytest.raises(ValueError, match="num-server-rounds"):
        parse_run_config({"num-server-rounds": 0})
    with pytest.raises(ValueError, match="num-rounds"):
        parse_run_config({"num-rounds": 3})  # a typo is not silently ignored
    with pytest.raises(ValueError, match="mode"):
        parse_run_config({"mode": "sometimes"})


def test_round_instruction_survives_a_config_record():
    from flwr.app import ConfigRecord

    adapter = AdapterConfig(kind="lora", lora_rank=2)
    sent = P.RoundInstruction(server_round=3, bank="modality-ct", bank_version=4, base_fingerprint="ab" * 16,
                              adapter=adapter, images=2, local_epochs=1, clicks=4, mode="mid+post", lr=0.01, size=64)
    record = ConfigRecord({**sent.to_config(), P.CLIPPING_NORM: 0.5})
    back = P.RoundInstruction.from_config(record)
    assert back.model_dump(exclude={"clipping_norm"}) == sent.model_dump(exclude={"clipping_norm"})
    assert back.clipping_norm == 0.5 and back.adapter == adapter
    with pytest.raises(ValueError, match="bank-version"):
        P.RoundInstruction.from_config({k: v for k, v in record.items() if k != P.BANK_VERSION})


def test_a_packaged_base_is_found_from_a_flower_app_bundle(tmp_path):
    """FABs carry only code and text: the packaged weights come from the installed fedpoint."""
    from fedpoint.shared.bases import PACKAGED_CHECKPOINTS

    names = sorted(p.stem for p in PACKAGED_CHECKPOINTS.glob("*.safetensors"))
    if not names:
        pytest.skip("no packaged base checkpoint in this checkout")
    bundle = tmp_path / "fab"
    for source in (REPO / "fedpoint").rglob("*"):
        if source.suffix in {".py", ".toml", ".json"} and "__pycache__" not in source.parts:
            target = bundle / source.relative_to(REPO)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(source.read_bytes())
    probe = (f"import sys; sys.path.insert(0, {str(bundle)!r}); import fedpoint.shared.bases as B; "
             f"print(B.__file__); print(B.locate_base({names[0]!r}))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    module_file, found = out.stdout.split()
    assert module_file.startswith(str(bundle))  # the bundle's copy was imported...
    assert Path(found + ".safetensors").is_file()  # ...and still found the weights


def test_one_id_rule_for_site_ids_and_store_ids():
    from fedpoint.client.site_store import check_id

    for good in ("site-a", "Site_1.b", "x" * 128):
        assert P.check_site_id(good) == good and check_id(good) == good
    for bad in ("site-a\n", "-a", "a/b", "a..b", "x" * 129, "", None):  # a trailing newline passed `$` before
        with pytest.raises(ValueError):
            P.check_site_id(bad)
        with pytest.raises(ValueError):
            check_id(bad)


def test_an_instruction_that_leaves_fields_out_gets_the_models_defaults():
    adapter = AdapterConfig(kind="norm")
    minimal = {P.SERVER_ROUND: 1, P.BANK: "general", P.BANK_VERSION: 0, P.BASE_FINGERPRINT: "ab" * 16,
               P.ADAPTER_CONFIG: __import__("json").dumps(adapter.model_dump(mode="json"))}
    got = P.RoundInstruction.from_config(minimal)
    fields = P.RoundInstruction.model_fields
    for name in ("images", "local_epochs", "clicks", "mode", "lr", "size", "seed", "clipping_norm"):
        assert getattr(got, name) == fields[name].default, name
