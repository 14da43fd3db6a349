"""Simulated federations on Flower's simulation engine (Ray), with the real ServerApp and ClientApp,
the tiny base and small real image files."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import threading
import time

import pytest

from fedpoint.server.banks import BankStore
from fedpoint.simulations.flower_sim import run_federation

pytestmark = pytest.mark.flower


def test_simulated_federation_fills_the_bank_store_despite_a_failing_site(fast_run_config, blob_sites, tmp_path,
                                                                      write_sites_config):
    sites = write_sites_config(tmp_path / "sites.toml", [
        ("mr-site", str(blob_sites.parent / "mr")),
        ("ct-site", str(blob_sites.parent / "ct")),
        ("broken-site", str(tmp_path / "no-such-dataset")),  # its ClientApp fails every round
    ])
    summary = run_federation({**fast_run_config, "sites-config": str(sites)}, num_sites=3, timeout=480)

    assert summary["rounds"] == 2 and summary["round_numbers"] == [1, 2]
    for status in summary["status"]:
        assert status["mr-site"] == status["ct-site"] == "accepted"
        assert [s for name, s in status.items() if name not in ("mr-site", "ct-site")] == ["failed"]
    assert summary["banks"] == {"general": [1, 2, 3], "modality-ct": [1, 2], "modality-mr": [1, 2]}
    for round_bytes in summary["bytes"]:
        assert round_bytes["mr-site"]["up"] == round_bytes["mr-site"]["down"] > 0
    assert 0 <= summary["metrics"][-1]["dice1"] <= 1

    store = BankStore(summary["bank_store"])
    assert store.latest("modality-mr").manifest["round"] == 2
    assert len(store.latest("general").manifest["sites"]) == 2  # hashed ids of the two good sites
    output = tmp_path / "federation"
    assert sorted(p.name for p in (output / "records" / "mr-site").iterdir()) == ["round-0001.json", "round-0002.json"]
    site_log = [json.loads(line)["event"] for line in (output / "sites" / "ct-site" / "log.jsonl").read_text().splitlines()]
    assert site_log.count("federation-round") == 2 and site_log.count("bank") == 2

    # The federated evaluation round after each aggregation: the sites scored the new versions on
    # their held-out cached cases; the scores sit beside each version and in federation.json.
    assert site_log.count("federation-evaluate") == 2
    history = json.loads((output / "federation.json").read_text())["rounds"]
    assert len(history) == 2
    for entry in history:
        evaluation = entry["evaluation"]
        assert evaluation["sites"]["mr-site"]["status"] == evaluation["sites"]["ct-site"]["status"] == "scored"
        assert [s["status"] for n, s in evaluation["sites"].items() if n not in ("mr-site", "ct-site")] == ["failed"]
        # each site scores the new version of the bank it trains from (its modality's)
        assert set(evaluation["banks"]) == {f"{b}@v{v}" for b, v in entry["versions"].items() if b != "general"}
    latest = store.latest("modality-mr")
    report = store.evaluation("modality-mr", latest.version)
    assert report["round"] == 2 and report["sites"] == 1 and report["cases"] >= 1 and 0 <= report["dice_auc"] <= 1


@pytest.mark.slow
def test_a_coordinator_killed_mid_federation_resumes_with_nothing_lost(fast_run_config, tmp_path):
    config = {**fast_run_config, "num-server-rounds": 8}
    store = BankStore(tmp_path / "federation" / "banks")
    outcome: dict = {}
    runner = threading.Thread(target=lambda: outcome.update(error=_run(config)), daemon=True)
    runner.start()
    deadline = time.monotonic() + 400
    while time.monotonic() < deadline and len(store.versions("general")) < 2:
        time.sleep(1)
    assert len(store.versions("general")) >= 2, "round 1 never finished"
    child = next(p for p in multiprocessing.active_children() if p.name == "fedpoint-simulation")
    os.killpg(child.pid, signal.SIGKILL)  # the coordinator (and its sites) die mid-federation
    runner.join(60)
    assert isinstance(outcome.get("error"), RuntimeError)
    before = {bank: store.versions(bank) for bank in store.banks()}
    last = store.latest("general")

    summary = run_federation({**config, "num-server-rounds": 1}, num_sites=2, timeout=400)
    resumed = store.latest("general")
    assert summary["round_numbers"] == [last.manifest["round"] + 1]
    assert (resumed.version, resumed.manifest["parent"]) == (last.version + 1, last.version)
    for bank, versions in before.items():  # every version written before the kill is still there
        assert store.versions(bank)[: len(versions)] == versions


def _run(config):
    try:
        run_federation(config, num_sites=2, timeout=600)
    except Exception as err:  # noqa: BLE001 - the test inspects it
        return err
    return None


@pytest.mark.slow
def test_central_dp_clips_at_the_sites_and_noises_the_banks(fast_run_config):
    summary = run_federation({**fast_run_config, "dp-noise-multiplier": 0.5, "dp-clipping-norm": 0.01},
                             num_sites=2, timeout=480)
    assert summary["banks"] == {"general": [1, 2, 3], "modality-ct": [1, 2], "modality-mr": [1, 2]}
    assert summary["metrics"][-1]["dice1"] >= 0
    dp = BankStore(summary["bank_store"]).latest("general").manifest["dp"]
    assert dp["noise_multiplier"] == 0.5 and dp["noise_stdv"] == pytest.approx(0.5 * 0.01 / 2)
    for r in summary["bytes"]:
        assert all(s["up"] > 0 for s in r.values())


def _blob_volumes(blob, folder, modality, seed):
    import nibabel as nib
    import numpy as np

    folder.mkdir(parents=True)
    for i in range(3):
        image, mask = blob((24, 24, 12), seed=seed + i)
        affine = np.diag([0.8, 0.8, 2.0, 1.0])
        nib.save(nib.Nifti1Image(image[0], affine), str(folder / f"vol{i:02d}.nii.gz"))
        nib.save(nib.Nifti1Image(mask.astype(np.uint8), affine), str(folder / f"vol{i:02d}_label.nii.gz"))
    (folder / "fedpoint.json").write_text(json.dumps({"modality": modality, "labels": {"1": "blob"}}))
    return folder


@pytest.mark.slow
def test_a_3d_federation_of_two_sites_runs_a_round_with_3d_adapters(fast_run_config, tiny_base_3d, blob, tmp_path,
                                                                  write_sites_config):
    from fedpoint.shared.model import base_fingerprint, load_base

    sites = write_sites_config(tmp_path / "sites3d.toml", [
        ("mr3d", str(_blob_volumes(blob, tmp_path / "mr3d", "MR", 0))),
        ("ct3d", str(_blob_volumes(blob, tmp_path / "ct3d", "CT", 10))),
    ])
    config = {**fast_run_config, "num-server-rounds": 1, "base": str(tiny_base_3d), "sites-config": str(sites),
              "images-per-round": 1, "clicks": 2}
    summary = run_federation(config, num_sites=2, timeout=480)
    assert summary["rounds"] == 1
    assert summary["status"][0] == {"mr3d": "accepted", "ct3d": "accepted"}
    store = BankStore(summary["bank_store"])
    manifest = store.latest("general").manifest
    net, _, _ = load_base(tiny_base_3d)
    assert manifest["base_fingerprint"] == base_fingerprint(net)  # a 3D bank: never mixed with a 2D one
    records = json.loads((tmp_path / "federation" / "records" / "mr3d" / "round-0001.json").read_text())["records"]
    assert len(records[0]["windows"][0]["size"]) == 3  # whole volumes, 3D focus windows
