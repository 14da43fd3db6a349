"""The run config split by reader and parsed in one place (fedpoint.shared.run_config)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from fedpoint.shared.run_config import (CoordinatorConfig, FederationConfig, SimulationConfig, SiteRoundConfig,
                                        parse_run_config)

READERS = (CoordinatorConfig, SiteRoundConfig, SimulationConfig)


def test_every_key_has_a_reader_and_the_whole_is_the_readers_together():
    assert set(FederationConfig.model_fields) == set().union(*(r.model_fields for r in READERS))
    assert {"num-server-rounds", "dp-noise-multiplier", "site-registry"} <= set(CoordinatorConfig().to_run_config())
    assert not {"num-server-rounds", "dp-noise-multiplier", "clicks"} & set(SiteRoundConfig().to_run_config())
    assert {"base", "sites-config", "size", "output-dir"} <= set(SiteRoundConfig().to_run_config())
    assert {"output-dir", "bank-store"} <= set(SimulationConfig().to_run_config())


@pytest.mark.parametrize("reader", READERS)
def test_each_reader_gets_its_part_of_the_whole_with_defaults_under_the_run_config(reader, tmp_path):
    run_config = {"num-server-rounds": 7, "size": 64, "output-dir": str(tmp_path), "base": "tiny"}
    part = parse_run_config(run_config, {"size": 32, "sites-config": "mine"}, reader)
    whole = parse_run_config(run_config, {"size": 32, "sites-config": "mine"})
    assert type(part) is reader and type(whole) is FederationConfig
    assert part.to_run_config() == {k: v for k, v in whole.to_run_config().items() if k in part.to_run_config()}
    assert (part.size, part.sites_config, part.output_path) == (64, "mine", tmp_path)
    assert part.bank_store_path == tmp_path / "banks"


@pytest.mark.parametrize("reader", (*READERS, FederationConfig))
def test_a_bad_or_unknown_key_is_refused_by_every_reader_naming_the_key(reader):
    with pytest.raises(ValueError, match="num-rounds"):
        parse_run_config({"num-rounds": 3}, reader=reader)  # a typo is not silently ignored, whoever reads
    with pytest.raises(ValueError, match="num-server-rounds"):
        parse_run_config({"num-server-rounds": 0}, reader=reader)  # another reader's key is still checked


def test_the_coordinator_reads_its_privacy_variant_and_adapter_config():
    assert parse_run_config({}, reader=CoordinatorConfig).privacy == "none"
    dp = parse_run_config({"dp-noise-multiplier": 0.5, "adapter-kind": "lora", "lora-rank": 8}, reader=CoordinatorConfig)
    assert dp.privacy == "central-dp" and dp.dp and dp.adapter_config().lora_rank == 8


def test_parsing_the_run_config_imports_neither_torch_nor_flower():
    code = ("import sys; from fedpoint.shared.run_config import parse_run_config, CoordinatorConfig; "
            "parse_run_config({'num-server-rounds': 3}, reader=CoordinatorConfig); "
            "heavy = [m for m in ('torch', 'flwr', 'monai', 'peft') if m in sys.modules]; assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True)
