"""A whole volume in the site service (`/api/volumes`, `volumes.VolumeOperations`): a box or click on
one slice with the packaged 2D base, the mask carried to the neighbouring slices, corrections,
progress while it runs, accept into the cache as 2D cases; the 3D base's route on the same API;
clear 422s; MONAI Label's `/infer` on the propagation route."""

from __future__ import annotations

import gzip
import json
import threading
import time

import nibabel as nib
import numpy as np
import pytest
from service_helpers import LiveServer

SHAPE = (64, 64, 24)  # an ellipsoid over slices 7..17 (slices along the last axis)


def ellipsoid(shape=SHAPE, radii=(14.0, 11.0, 6.0), seed=0):
    grid = np.indices(shape).astype(np.float32)
    centre = np.array(shape, dtype=np.float32) / 2
    mask = (((grid - centre[:, None, None, None]) / np.array(radii)[:, None, None, None]) ** 2).sum(0) <= 1
    image = 0.2 + 0.05 * np.random.default_rng(seed).standard_normal(shape) + 0.5 * mask
    return image.astype(np.float32), mask


def write_volume_site(folder):
    """A 2D image and the ellipsoid volume; returns the volume's mask."""
    folder.mkdir(parents=True, exist_ok=True)
    image, mask = ellipsoid()
    nib.save(nib.Nifti1Image(image * 1000.0, np.diag([1.0, 1.0, 2.0, 1.0])), str(folder / "vol.nii.gz"))
    np.save(folder / "flat.npy", image[..., 12])
    return mask


def slices_of(mask):
    return set(np.flatnonzero(mask.any((0, 1))).tolist())


def unpack(payload):
    bits = np.unpackbits(np.frombuffer(__import__("base64").b64decode(payload["bits"]), np.uint8))
    return bits[: payload["width"] * payload["height"]].reshape(payload["height"], payload["width"]).T.astype(bool)


@pytest.fixture(scope="module")
def volume_site(tmp_path_factory):
    root = tmp_path_factory.mktemp("volume-site")
    mask = write_volume_site(root / "images")
    return root, mask


@pytest.fixture
def packaged(volume_site, make_config, tmp_path):
    root, mask = volume_site
    config = make_config(images=str(root / "images"), store=str(tmp_path / "store"), base="base2d", mode="mid+post")
    with LiveServer(config) as live:
        yield live, mask, tmp_path / "store"


def test_a_box_on_one_slice_propagates_then_corrections_undo_and_accept(packaged):
    live, truth, store = packaged
    c = live.client
    empty = c.get("/api/volumes/vol", params={"slice": 12}).json()
    assert empty["route"] == "propagate" and empty["routes"] == ["propagate", "slice"]  # a 2D base's default
    assert empty["mask_slices"] == [] and empty["mask"]["area"] == 0
    xs, ys = np.nonzero(truth[..., 12])
    r = c.post("/api/volumes/vol/box", json={"lo": [int(xs.min()), int(ys.min()), 12],
                                              "hi": [int(xs.max()), int(ys.max()), 12]})
    assert r.status_code == 200, r.text
    first = r.json()
    held = set(first["mask_slices"])
    assert {11, 12, 13} <= held, f"the box's mask was not carried to the neighbouring slices: {sorted(held)}"
    assert held <= slices_of(truth), f"propagation ran past the object's end: {sorted(held - slices_of(truth))}"
    assert first["user_slices"] == [12] and first["boxes"] == [{"lo": [int(xs.min()), int(ys.min()), 12],
                                                                "hi": [int(xs.max()), int(ys.max()), 12]}]
    assert first["slices_predicted"] >= 3
    neighbour = c.get("/api/volumes/vol", params={"slice": 10}).json()
    shown = unpack(neighbour["mask"])
    assert shown.any() and (shown & truth[..., 10]).sum() / shown.sum() > 0.8  # the neighbour's mask lies on the object
    done = c.get("/api/volumes/vol/progress").json()
    assert done["running"] is False and done["done"] == first["slices_predicted"] - 1 and done["total"] == 23

    # a correction on slice 15 makes it a user slice and changes from there; undo restores it
    before = c.get("/api/volumes/vol", params={"slice": 16}).json()
    r = c.post("/api/volumes/vol/click", json={"point": [32, 32, 15], "positive": True}).json()
    assert r["user_slices"] == [12, 15] and r["clicks"] == [{"point": [32, 32, 15], "positive": True}]
    undone = c.post("/api/volumes/vol/undo", params={"slice": 16}, json={}).json()
    assert undone["user_slices"] == [12] and undone["mask"] == before["mask"]

    model = live.state.engine.model  # the 2D base with the site's adapter serves the route, and learns from its accept
    entry = live.state.volumes.sessions.get(("vol", "web", None, live.state.desk.structure(None)))
    assert entry.session.model is model
    steps = model.steps
    accepted = c.post("/api/volumes/vol/accept", json={"request_id": "vol-1"}).json()
    assert model.steps > steps, "the user slice's post-interaction update did not run on the site's adapter"
    assert accepted["slices"] == sorted(held) and accepted["route"] == "propagate"
    assert accepted["cases"] == [f"vol.z{z:04d}" for z in sorted(held)], accepted
    assert "after_effects" not in accepted
    again = c.post("/api/volumes/vol/accept", json={"request_id": "vol-1"}).json()
    assert again["duplicate"] and again["cases"] == accepted["cases"]  # a retry adds nothing
    metas = {z: json.loads((store / "cache" / f"vol.z{z:04d}" / "meta.json").read_text()) for z in held}
    assert {m["group"] for m in metas.values()} == {metas[12]["group"]}  # one all-or-none write
    assert metas[12]["clicks"] >= 1 and metas[min(held)]["clicks"] == 0  # the user slice went through the engine's accept
    label = nib.Nifti1Image.from_bytes(gzip.decompress(c.get("/datastore/label", params={"label": "vol"}).content))
    stored = np.asarray(label.dataobj) > 0
    assert slices_of(stored) == held and stored[..., 12].sum() == first["mask"]["area"]
    assert c.get("/api/images").json()["images"][1] == {"id": "vol", "labelled": True}
    assert c.post("/api/volumes/vol/undo", json={}).status_code == 404  # the session closed


def test_progress_is_shown_while_a_propagation_runs(packaged):
    """While the model is busy the click waits; its progress is readable beside it (slices done of at most how many)."""
    live, truth, _ = packaged
    model = live.state.engine.model
    reply = {}
    with model.lock:  # the model's thread waits at the clicked slice's prediction
        worker = threading.Thread(target=lambda: reply.update(r=live.client.post(
            "/api/volumes/vol/click", json={"point": [32, 32, 12]})))
        worker.start()
        deadline = time.monotonic() + 60
        while not (state := live.client.get("/api/volumes/vol/progress").json())["running"]:
            assert time.monotonic() < deadline, state
            time.sleep(0.05)
        assert state == {"running": True, "done": 0, "total": 23, "slice": None, "seconds": state["seconds"]}
    worker.join(120)
    assert reply["r"].status_code == 200, reply["r"].text
    final = live.client.get("/api/volumes/vol/progress").json()
    assert not final["running"] and final["done"] == reply["r"].json()["slices_predicted"] - 1 > 0


def test_bad_volume_requests_are_422s_naming_the_field(packaged):
    live, _, _ = packaged
    c = live.client
    cases = [
        (c.post("/api/volumes/vol/click", json={"point": [32, 32, 12], "route": "banana"}), "route"),
        (c.post("/api/volumes/vol/click", json={"point": [32, 32, 12], "route": "3d"}), "route: route '3d' needs a 3D base"),
        (c.post("/api/volumes/flat/click", json={"point": [32, 32]}), "route: flat is a 2D image"),
        (c.get("/api/volumes/vol", params={"slice": 24}), "slice: vol has 24 slices"),
        (c.post("/api/volumes/vol/box", json={"lo": [1, 1], "hi": [9, 9], "slice": 99}), "box: slice 99 is outside"),
        (c.post("/api/volumes/vol/click", json={"point": [32, 32, 24]}), "outside the image"),
        (c.post("/api/volumes/vol/box", json={"lo": [1, 1, 3], "hi": [9, 9, 5]}), "lies on one slice"),
    ]
    for reply, text in cases:
        assert reply.status_code == 422 and text in str(reply.json()["detail"]), (text, reply.status_code, reply.text)
    assert c.post("/api/volumes/vol/accept", json={}).status_code == 404  # nothing open


def test_monailabel_infer_on_a_volume_propagates_by_default(packaged):
    live, truth, _ = packaged
    c = live.client

    def infer(params):
        r = c.post("/infer/fedpoint", params={"image": "vol", "output": "all"}, data={"params": json.dumps(params)})
        assert r.status_code == 200, r.text
        from service_helpers import multipart_parts

        parts = multipart_parts(r)
        label = nib.Nifti1Image.from_bytes(gzip.decompress(parts["image"][1]))
        return np.asarray(label.dataobj), json.loads(parts["params"][1])

    label, params = infer({"foreground": [[32, 32, 12]], "client_id": "slicer"})
    assert params["route"] == "propagate" and label.shape == SHAPE and label[32, 32, 12] == 1
    assert {11, 12, 13} <= slices_of(label > 0) <= slices_of(truth), params["slices"]
    assert params["slices"] == sorted(slices_of(label > 0))
    # the client sends every point again: the first stays, the new one is applied alone
    label2, params2 = infer({"foreground": [[32, 32, 12]], "background": [[3, 3, 15]], "client_id": "slicer"})
    assert params2["slices_predicted"] and len(params2["slices_predicted"]) == 1 and params2["user_slices"] == [12, 15]
    sliced, params3 = infer({"foreground": [[32, 32, 12]], "route": "slice", "client_id": "other"})
    assert slices_of(sliced > 0) == {12} and "route" not in params3  # today's slice by slice, on request
    bad = c.post("/infer/fedpoint", params={"image": "vol"}, data={"params": json.dumps({"foreground": [[32, 32, 12]],
                                                                                          "route": "3d"})})
    assert bad.status_code == 422 and "params.route" in bad.json()["detail"]


def test_a_3d_base_serves_the_same_volume_api(make_config, volume_site, tiny_base_3d, tmp_path):
    root, _ = volume_site
    config = make_config(images=str(root / "images"), store=str(tmp_path / "store3d"), base=str(tiny_base_3d))
    with LiveServer(config) as live:
        c = live.client
        r = c.post("/api/volumes/vol/click", json={"point": [32, 32, 12]}).json()
        assert r["route"] == "3d" and r["clicks"] == [{"point": [32, 32, 12], "positive": True}]
        assert c.get("/api/volumes/vol", params={"slice": 12}).json()["routes"] == ["3d"]
        refused = c.post("/api/volumes/vol/click", json={"point": [32, 32, 12], "route": "propagate"})
        assert refused.status_code == 422 and "needs a 2D base" in refused.json()["detail"]
        accepted = c.post("/api/volumes/vol/accept", json={}).json()
        assert accepted["case"] == "vol" and accepted["route"] == "3d"
        assert np.load(tmp_path / "store3d" / "cache" / "vol" / "mask.npy").shape == SHAPE
