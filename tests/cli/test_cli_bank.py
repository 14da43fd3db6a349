"""`fedpoint bank list|show|export` on a bank store built here."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from fedpoint.cli import app
from fedpoint.server.aggregate import aggregate, round_record
from fedpoint.server.banks import BankStore
from fedpoint.server.checks import Reply

runner = CliRunner()


@pytest.fixture(scope="module")
def bank_store(tmp_path_factory, tiny_base_2d):
    from fedpoint.shared.adapters import make_adapter
    from fedpoint.shared.model import load_base
    from fedpoint.shared.payload import to_numpy

    model, _, _ = load_base(tiny_base_2d)
    adapter = make_adapter(model, "norm")
    state = to_numpy(adapter.state())
    store = BankStore(tmp_path_factory.mktemp("cli") / "banks")
    store.init_bank("general", state, adapter.base_fingerprint, "norm")
    store.init_bank("modality-ct", state, adapter.base_fingerprint, "norm")
    rng = np.random.default_rng(0)
    replies = [Reply(f"site-{i}", "general", {k: 0.01 * rng.standard_normal(v.shape).astype(np.float32) for k, v in state.items()},
                     2.0 + i, adapter.base_fingerprint, {"dice1": 0.4 + 0.1 * i}) for i in range(2)]
    store.write("general", aggregate(state, replies, "norm"), round_record(1, replies))
    return store


def _run(*args):
    return runner.invoke(app, ["bank", *map(str, args)])


def test_list_as_json_and_table(bank_store):
    result = _run("list", "--store", bank_store.root, "--json")
    assert result.exit_code == 0, result.output
    rows = {row["bank"]: row for row in json.loads(result.output)}
    assert rows["general"]["version"] == 2 and rows["general"]["round"] == 1
    assert rows["general"]["sites"] == 2 and rows["general"]["accepted_cases"] == 5.0
    assert rows["modality-ct"]["version"] == 1 and rows["modality-ct"]["kind"] == "norm"
    table = _run("list", "--store", bank_store.root)
    assert table.exit_code == 0 and "modality-ct" in table.output and "general" in table.output


def test_show_gives_manifest_size_and_history(bank_store):
    result = _run("show", "general", "--store", bank_store.root, "--json")
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)
    assert shown["manifest"]["version"] == 2 and shown["manifest"]["metrics"]["dice1"] == pytest.approx(0.46)
    assert shown["bytes"] == 4 * shown["parameters"] > 0
    assert [h["version"] for h in shown["history"]] == [1, 2]
    older = json.loads(_run("show", "general", "--store", bank_store.root, "--version", 1, "--json").output)
    assert older["manifest"]["parent"] is None
    table = _run("show", "general", "--store", bank_store.root)
    assert table.exit_code == 0 and "history" in table.output and "weighted-mean-of-deltas" in table.output


def test_export_writes_a_loadable_adapter(bank_store, tmp_path, tiny_base_2d):
    from fedpoint.shared.adapters import load_adapter
    from fedpoint.shared.model import load_base

    out = tmp_path / "exported"
    result = _run("export", "general", "--store", bank_store.root, "--out", out, "--base", tiny_base_2d)
    assert result.exit_code == 0, result.output
    assert "v2" in result.output
    adapter = load_adapter(load_base(tiny_base_2d)[0], out)
    assert adapter.kind == "norm"
    again = _run("export", "general", "--store", bank_store.root, "--out", out)
    assert again.exit_code == 2 and "not empty" in again.output


@pytest.mark.parametrize(
    "args, message",
    [
        (("show", "modality-mr"), "no bank 'modality-mr'"),
        (("show", "general", "--version", 9), "no version 9"),
        (("show", "../x"), "bad bank name"),
        (("export", "nope", "--out", "OUT"), "no bank 'nope'"),
    ],
)
def test_clear_errors_exit_2(bank_store, tmp_path, args, message):
    args = [str(tmp_path / "o") if a == "OUT" else a for a in args]
    result = _run(*args, "--store", bank_store.root)
    assert result.exit_code == 2
    assert message in result.output


def test_unknown_store_exits_2(tmp_path):
    result = _run("list", "--store", tmp_path / "nowhere")
    assert result.exit_code == 2 and "not a bank store" in result.output


def test_show_gives_the_sites_scores_of_a_version(bank_store):
    """The federated evaluation round's scores, kept beside a version, appear in `bank show`
    (JSON and table) without touching the manifest its integrity check covers."""
    bank_store.record_evaluation("general", 2, {"round": 1, "sites": 2, "cases": 7, "dice_auc": 0.612, "clicks": 5})
    assert bank_store.check("general", 2) is None  # the version still verifies
    shown = json.loads(_run("show", "general", "--store", bank_store.root, "--json").output)
    assert shown["evaluation"]["dice_auc"] == 0.612
    assert [(h["version"], h["eval_dice_auc"]) for h in shown["history"]] == [(1, None), (2, 0.612)]
    table = _run("show", "general", "--store", bank_store.root).output
    assert "0.612 (7)" in table


def test_show_gives_the_epsilon_a_dp_round_reached(bank_store):
    """A version written under central DP carries epsilon in its manifest; `bank show` lists it."""
    state = bank_store.latest("general").state
    dp = {"noise_multiplier": 1.0, "clipping_norm": 0.1, "delta": 1e-5, "sampling_rate": 1.0,
          "effective_noise_multiplier": 1.0, "epsilon": 3.25}
    bank_store.write("modality-ct", state, {"round": 2, "dp": dp})
    shown = json.loads(_run("show", "modality-ct", "--store", bank_store.root, "--json").output)
    assert shown["manifest"]["dp"]["epsilon"] == 3.25
    assert [h["epsilon"] for h in shown["history"]] == [None, 3.25]
    assert "3.25" in _run("show", "modality-ct", "--store", bank_store.root).output
