"""Per-structure cases and episodes in the service (site.toml `labels`): a structure's accepted cases
land in its own task store (`tasks/<task>/`), its episodes train on them only, a client trains a
structure by name, and everything that reads the cache (index, stored label, counts, `site check`,
crash recovery) reads every structure's store and the root's older cases."""

from __future__ import annotations

import gzip
import hashlib
import json
import time

import numpy as np
import torch
from service_helpers import LiveServer

EPISODES = {"post_clicks": 2, "episode_min_cases": 3, "episode_epochs": 1, "episode_iters": 2}


def _weights(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.net.named_parameters()}


def _same(before: dict[str, torch.Tensor], model) -> bool:
    return all(torch.equal(before[n], p) for n, p in model.net.named_parameters())


def _files(folder) -> dict[str, str]:
    """Every file under `folder` (relative name -> sha256): a cache bit for bit."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()} if folder.exists() else {}


def _cases(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")) if folder.exists() else []


def _nifti(label: np.ndarray) -> bytes:
    import nibabel as nib

    return gzip.compress(nib.Nifti1Image(label.astype(np.uint8), np.eye(4)).to_bytes())


def _read_nifti(data: bytes) -> np.ndarray:
    import nibabel as nib

    return np.asarray(nib.Nifti1Image.from_bytes(gzip.decompress(data)).dataobj)


def _accept(c, image_id: str, structure: str, point=(24, 24)) -> dict:
    assert c.post(f"/api/sessions/{image_id}/click", json={"point": list(point), "structure": structure}).status_code == 200
    r = c.post(f"/api/sessions/{image_id}/accept", json={"structure": structure})
    assert r.status_code == 200, r.text
    return r.json()


def _wait_for(c, structure: str, episodes: int, limit_s: float = 240) -> dict:
    """GET /train/ until `structure` has `episodes` episodes and nothing runs (bounded)."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        status = c.get("/train/").json()
        if status["structures"][structure]["episodes"] >= episodes and status["status"] != "RUNNING":
            return status
        time.sleep(0.3)
    raise AssertionError(f"{structure} did not reach {episodes} episode(s): {c.get('/train/').json()}")


def test_a_structures_accepts_and_automatic_episode_stay_in_its_own_task(make_config, site):
    store = site["store"]
    config = make_config(labels=["liver", "lesion"], mode="mid+post+episodes", adaptation=EPISODES)
    with LiveServer(config) as server:
        c, engine = server.client, server.state.engine
        assert _accept(c, "img0", "lesion", (10, 10))["case"] == "img0.lesion"  # one lesion case: no episode yet
        lesion_cache = _files(store / "tasks" / "lesion" / "cache")
        lesion = engine.slot("lesion").model
        lesion_before = _weights(lesion)

        for image_id in ("img0", "img1", "img2"):  # the third liver case starts liver's episode
            assert _accept(c, image_id, "liver")["case"] == f"{image_id}.liver"
        status = _wait_for(c, "liver", 1)

        liver_store = engine.slot("liver").store
        assert liver_store.root == store / "tasks" / "liver"
        assert _cases(store / "tasks" / "liver" / "cache") == ["img0.liver", "img1.liver", "img2.liver"]
        assert _cases(store / "cache") == []  # the root holds no structure's case
        splits = json.loads((liver_store.root / "splits.json").read_text())
        assert sorted(c for ids in splits.values() for c in ids) == ["img0.liver", "img1.liver", "img2.liver"]
        result = status["structures"]["liver"]["result"]
        assert result["structure"] == "liver" and result["train_cases"] + result["val_cases"] + result["judge_cases"] == 3
        assert [e["event"] for e in liver_store.read_log()].count("episode") == 1

        # the other structure: its adapter, cache and episodes untouched, bit for bit
        assert _same(lesion_before, lesion)
        assert _files(store / "tasks" / "lesion" / "cache") == lesion_cache
        assert status["structures"]["lesion"] == {"status": "NONE", "episodes": 0, "result": None}
        assert not (store / "tasks" / "lesion" / "splits.json").exists()
        shown = c.get("/api/status").json()
        assert shown["cache"] == {"cases": 4, "images_labelled": 3}
        # the status shows each structure's own adapter: the liver's stepped three times, the lesion's once
        adapters = shown["adapters"]
        assert adapters["liver"]["online_steps"] > adapters["lesion"]["online_steps"] > 0
        assert shown["adapter"] == adapters["liver"]  # the first structure's, not the never-adapted default


def test_a_client_trains_a_structure_by_name_and_an_unknown_name_is_a_422(make_config, site):
    store = site["store"]
    with LiveServer(make_config(labels=["liver", "lesion"], adaptation=EPISODES)) as server:
        c, engine = server.client, server.state.engine
        info = c.get("/info/").json()
        assert set(info["trainers"]) == {"fedpoint", "liver", "lesion"}
        # one label map with both structures: each value into its own structure's store, in one save
        both = np.zeros((48, 48), np.uint8)
        both[14:34, 14:34] = 1
        both[20:26, 20:26] = 2
        r = c.put("/datastore/label", params={"image": "img0"}, files={"label": ("l.nii.gz", _nifti(both))})
        assert r.status_code == 200 and sorted(r.json()["cases"]) == ["img0.lesion", "img0.liver"], r.text
        for image_id in ("img1", "img2"):  # lesion-only maps
            lesion_only = (site["masks"][image_id]).astype(np.uint8)
            r = c.put("/datastore/label", params={"image": image_id}, files={"label": ("l.nii.gz", _nifti(lesion_only))},
                      data={"params": json.dumps({"label_info": [{"name": "lesion", "idx": 1}]})})
            assert r.status_code == 200 and r.json()["cases"] == [f"{image_id}.lesion"], r.text
        assert _cases(store / "tasks" / "liver" / "cache") == ["img0.liver"]
        assert _cases(store / "tasks" / "lesion" / "cache") == ["img0.lesion", "img1.lesion", "img2.lesion"]
        liver_mask = np.load(store / "tasks" / "liver" / "cache" / "img0.liver" / "mask.npy")
        assert np.array_equal(liver_mask.reshape(both.shape), both == 1)

        for bad, field in ((c.post("/train/", json={"structure": "spleen"}), "structure"),
                           (c.post("/train/spleen", json={}), "model"),
                           (c.post("/train/liver", json={"structure": "lesion"}), "structure"),
                           (c.post("/train/", json={"structure": 5}), "structure")):
            assert bad.status_code == 422 and field in bad.json()["detail"], bad.text
        refused = c.post("/train/", json={})  # the first structure, liver, has one case: not enough
        assert refused.status_code == 409 and "of liver holds 1" in refused.json()["detail"], refused.text

        liver = engine.slot("liver").model
        liver_before, liver_cache = _weights(liver), _files(store / "tasks" / "liver" / "cache")
        started = c.post("/train/lesion", json={})
        assert started.status_code == 200, started.text
        assert started.json()["status"] == "RUNNING" and started.json()["structure"] == "lesion"
        status = _wait_for(c, "lesion", 1)
        assert status["status"] == "DONE" and status["result"]["structure"] == "lesion"
        result = status["structures"]["lesion"]["result"]
        assert result["train_cases"] + result["val_cases"] + result["judge_cases"] == 3
        assert status["structures"]["liver"]["episodes"] == 0 and status["episodes"] == 1
        assert _same(liver_before, liver) and _files(store / "tasks" / "liver" / "cache") == liver_cache
        assert not (store / "tasks" / "liver" / "splits.json").exists()
        again = c.post("/train/", json={"structure": "lesion"})  # the body's field names it too
        assert again.status_code == 200 and again.json()["structure"] == "lesion", again.text
        status = _wait_for(c, "lesion", 2)
        assert status["structures"]["liver"]["episodes"] == 0 and _same(liver_before, liver)


def test_labels_and_counts_read_every_structure_and_the_roots_older_cases(make_config, site, blob):
    from typer.testing import CliRunner

    from fedpoint.cli import app
    from fedpoint.client.site_store import SiteStore

    store = site["store"]
    root = SiteStore(store)  # a site that set `labels` before structures had stores: its liver case in the root
    image, old_liver = blob((48, 48), seed=1)
    root.add_case("img1.liver", image, old_liver, {"image": "img1", "structure": "liver"})
    root.add_case("img2", image, old_liver, {"image": "img2"})  # from before `labels`: the first structure
    with LiveServer(make_config(labels=["liver", "lesion"])) as server:
        c = server.client
        assert c.get("/api/status").json()["cache"] == {"cases": 2, "images_labelled": 2}
        assert c.get("/datastore/", params={"output": "stats"}).json()["completed"] == 2
        assert c.post("/activelearning/first", json={}).json()["id"] == "img0"  # img1 and img2 are labelled
        _accept(c, "img1", "lesion", (10, 10))
        listing = c.get("/datastore/", params={"output": "all"}).json()["objects"]["img1"]["labels"]["final"]
        assert listing["info"]["cases"] == ["img1.liver", "tasks/lesion/img1.lesion"]

        label = _read_nifti(c.get("/datastore/label", params={"label": "img1"}).content)
        lesion = np.load(store / "tasks" / "lesion" / "cache" / "img1.lesion" / "mask.npy").reshape(label.shape)
        assert lesion.any() and np.array_equal(label == 2, lesion)
        assert np.array_equal(label == 1, old_liver & ~lesion)
        assert c.get("/api/status").json()["cache"] == {"cases": 3, "images_labelled": 2}

    checked = CliRunner().invoke(app, ["site", "check", "--store", str(store)])
    assert checked.exit_code == 0, checked.output
    assert "3 cases" in checked.output and "2 tasks" in checked.output
    (store / "tasks" / "lesion" / "cache" / "img1.lesion" / "mask.npy").write_bytes(b"\x93NUMPY cut")
    checked = CliRunner().invoke(app, ["site", "check", "--store", str(store)])
    assert checked.exit_code == 1 and "tasks/lesion/cache/img1.lesion/mask.npy" in checked.output


def test_a_cut_save_of_several_structures_is_rolled_back_in_every_store(tmp_path):
    from fedpoint.client.service.journal import JOURNAL_PREFIX, recover, write_cases
    from fedpoint.client.site_store import SiteStore

    root = SiteStore(tmp_path / "store")
    liver, lesion = root.for_task("liver"), root.for_task("lesion")
    zero, one = np.zeros((1, 4, 4), np.float32), np.ones((4, 4), bool)
    names = write_cases(root, [(liver, "a.liver", zero, one, {}), (lesion, "a.lesion", zero, one, {})])
    assert names == ["a.liver", "a.lesion"] and liver.case_ids() == ["a.liver"] and lesion.case_ids() == ["a.lesion"]
    assert not list((root.root / "cache").glob(f"{JOURNAL_PREFIX}*"))

    group = "ab" * 16  # what a kill -9 between the two renames leaves: one case in, the journal still there
    liver.add_case("b.liver", zero, one, {"group": group})
    (root.root / "cache" / f"{JOURNAL_PREFIX}{group}.json").write_text(
        json.dumps({"group": group, "cases": ["b.liver", "b.lesion"], "tasks": ["liver", "lesion"]}))
    assert recover(root) == ["tasks/liver/b.liver"]
    assert liver.case_ids() == ["a.liver"] and lesion.case_ids() == ["a.lesion"]

    hostile = "cd" * 16  # a task that is no task of the store removes nothing
    (root.root / "cache" / f"{JOURNAL_PREFIX}{hostile}.json").write_text(
        json.dumps({"group": hostile, "cases": ["a.liver"], "tasks": ["../tasks/liver"]}))
    assert recover(root) == [] and liver.case_ids() == ["a.liver"]
