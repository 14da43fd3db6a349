"""The service through the real HTTP layer: the page's API and a MONAI Label client's call sequence."""

from __future__ import annotations

import gzip
import json
import time

import nibabel as nib
import numpy as np
from service_helpers import multipart_parts, unpack


def nifti(data: bytes) -> nib.Nifti1Image:
    return nib.Nifti1Image.from_bytes(gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data)


def cached(site) -> dict[str, dict]:
    cache = site["store"] / "cache"
    return {p.name: json.loads((p / "meta.json").read_text()) for p in cache.iterdir() if not p.name.startswith(".")}


def test_page_api_click_undo_accept(live, site):
    c = live.client
    assert [i["id"] for i in c.get("/api/images").json()["images"]] == ["img0", "img1", "img2", "vol"]
    meta = c.get("/api/images/img0").json()
    assert meta["shape"] == [48, 48] and meta["slices"] == 1 and not meta["per_slice"]
    pixels = c.get("/api/images/img0/slice/0")
    assert len(pixels.content) == 48 * 48 * 4 and pixels.headers["x-width"] == "48"
    rows = np.frombuffer(pixels.content, dtype="<f4").reshape(48, 48)
    assert np.allclose(rows.T, np.load(site["images"] / "img0.npy"))  # rows top first: (y, x)

    first = c.post("/api/sessions/img0/click", json={"point": [24, 24], "positive": True})
    assert first.status_code == 200, first.text
    body = first.json()
    assert body["clicks"] == [{"point": [24, 24], "positive": True}]
    assert unpack(body["mask"]).shape == (48, 48) and unpack(body["mask"]).sum() == body["mask"]["area"]
    second = c.post("/api/sessions/img0/click", json={"point": [3, 3], "positive": False}).json()
    assert len(second["clicks"]) == 2 and second["update_ms"] > 0  # the mid-interaction update ran
    undone = c.post("/api/sessions/img0/undo", json={}).json()
    assert undone["mask"] == body["mask"] and len(undone["clicks"]) == 1

    steps = live.state.engine.model.steps
    accepted = c.post("/api/sessions/img0/accept", json={})
    assert accepted.status_code == 200, accepted.text
    assert accepted.json()["case"] == "img0" and accepted.json()["cache_size"] == 1
    assert live.state.engine.model.steps > steps  # the post-interaction update ran
    meta = cached(site)["img0"]
    assert meta["image"] == "img0" and meta["user"] == "web" and meta["clicks"] == 1
    assert np.array_equal(np.load(site["store"] / "cache" / "img0" / "mask.npy"), unpack(body["mask"]))
    assert live.state.store.adapter_versions() == [1]  # an adapter version per accept by default
    assert c.get("/api/next", params={"after": "img0"}).json()["id"] == "img1"
    status = c.get("/api/status").json()
    assert status["cache"]["cases"] == 1 and status["adapter"]["saved_version"] == 1
    assert c.post("/api/sessions/img0/undo", json={}).status_code == 404  # the session closed on accept


def test_volume_on_a_2d_model_is_annotated_per_slice(live, site):
    c = live.client
    meta = c.get("/api/images/vol").json()
    assert meta["shape"] == [40, 40, 8] and meta["per_slice"] and meta["flip_y"]
    r = c.post("/api/sessions/vol/click", json={"point": [20, 20, 4], "positive": True}).json()
    assert r["slice"] == 4 and r["clicks"] == [{"point": [20, 20, 4], "positive": True}]
    other = c.get("/api/sessions/vol", params={"slice": 3}).json()
    assert other["clicks"] == [] and other["mask"]["area"] == 0
    assert r["mask"]["area"] > 0  # the seeded tiny base predicts something here
    assert c.post("/api/sessions/vol/accept", json={"slice": 4}).json()["case"] == "vol.z0004"
    meta = cached(site)["vol.z0004"]
    assert meta["slice"] == 4 and np.load(site["store"] / "cache" / "vol.z0004" / "image.npy").shape == (1, 40, 40)


def test_monai_label_client_sequence(live, site):
    """info -> next sample -> infer with points -> save label -> train status, as MONAILabelClient calls them."""
    c = live.client
    info = c.get("/info/").json()
    model = next(iter(info["models"]))
    assert info["models"][model]["type"] == "deepgrow" and info["models"][model]["dimension"] == 2
    assert info["labels"] == ["object"] and set(info["strategies"]) == {"first", "random", "uncertain"}
    assert info["datastore"]["total"] == 4 and info["datastore"]["completed"] == 0

    sample = c.post("/activelearning/first", json={"client_id": "slicer-user"}).json()
    assert sample["id"] == "img0"
    image = c.get("/datastore/image", params={"image": sample["id"]})
    assert image.status_code == 200 and nifti(image.content).shape == (48, 48)

    params = {"label": "object", "foreground": [[24, 24]], "background": [[2, 2]], "client_id": "slicer-user"}
    reply = c.post(f"/infer/{model}", params={"image": sample["id"]}, data={"params": json.dumps(params)})
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"].startswith("multipart/form-data")
    parts = multipart_parts(reply)
    assert json.loads(parts["params"][1])["label_names"] == {"object": 1}
    filename, label_bytes = parts["image"]
    assert filename.endswith(".nii.gz")
    label = np.asarray(nifti(label_bytes).dataobj)
    assert label.shape == (48, 48) and set(np.unique(label)) <= {0, 1}
    session = live.state.sessions.get(("img0", "slicer-user", None, "object")).session
    assert len(session.clicks) == 2
    # the same points again change nothing; a new point is one more click
    c.post(f"/infer/{model}", params={"image": "img0", "output": "json"}, data={"params": json.dumps(params)})
    assert len(session.clicks) == 2
    params["foreground"].append([26, 22])
    c.post(f"/infer/{model}", params={"image": "img0", "output": "json"}, data={"params": json.dumps(params)})
    assert [cl.point for cl in session.clicks] == [(24, 24), (2, 2), (26, 22)]  # kept, kept, new

    truth = site["masks"]["img0"].astype(np.uint8)
    upload = gzip.compress(nib.Nifti1Image(truth, np.eye(4)).to_bytes())
    steps = live.state.engine.model.steps
    saved = c.put("/datastore/label", params={"image": "img0"}, files={"label": ("label.nii.gz", upload)},
                  data={"params": json.dumps({"label_info": [{"name": "object", "idx": 1}], "client_id": "slicer-user"})})
    assert saved.status_code == 200, saved.text
    assert saved.json()["image"] == "img0" and saved.json()["cases"] == ["img0"]
    assert live.state.engine.model.steps > steps  # post-interaction update from the saved label
    assert np.array_equal(np.load(site["store"] / "cache" / "img0" / "mask.npy"), truth.astype(bool))
    assert c.get("/datastore/", params={"output": "stats"}).json()["completed"] == 1
    assert "final" in c.get("/datastore/", params={"output": "all"}).json()["objects"]["img0"]["labels"]
    back = c.get("/datastore/label", params={"label": "img0", "tag": "final"})
    assert np.array_equal(np.asarray(nifti(back.content).dataobj).astype(bool), truth.astype(bool))

    status = c.get("/train/").json()
    assert status["status"] == "NONE" and status["episodes"] == 0
    assert c.get("/train/", params={"check_if_running": "true"}).status_code == 404
    assert c.post("/train/").status_code == 409  # one accepted case cannot train and validate

    assert c.post("/activelearning/first", json={}).json()["id"] == "img1"  # img0 is labelled now


def test_training_episode_on_request(live, site):
    c = live.client
    for image_id in ("img0", "img1", "img2"):
        mask = site["masks"][image_id].astype(np.uint8)
        upload = gzip.compress(nib.Nifti1Image(mask, np.eye(4)).to_bytes())
        assert c.put("/datastore/label", params={"image": image_id},
                     files={"label": ("l.nii.gz", upload)}).status_code == 200
    started = c.post("/train/fedpoint", json={})
    assert started.status_code == 200 and started.json()["status"] == "RUNNING"
    assert c.post("/train/", json={}).status_code in (409, 200)  # 409 while it still runs
    deadline = time.monotonic() + 240
    while c.get("/train/").json()["status"] == "RUNNING" and time.monotonic() < deadline:
        time.sleep(0.5)
    status = c.get("/train/").json()
    assert status["status"] == "DONE", status
    assert status["result"]["train_cases"] + status["result"]["val_cases"] + status["result"]["judge_cases"] == 3
    assert c.get("/api/status").json()["last_episode"]["episode"] == 1


def test_slicer_style_volume_infer_returns_the_slice(live):
    c = live.client  # slice by slice on request (a 2D base's default for a volume is propagation)
    params = {"foreground": [[20, 20, 5]], "background": [], "client_id": "slicer", "route": "slice"}
    reply = c.post("/infer/fedpoint", params={"image": "vol", "output": "image"}, data={"params": json.dumps(params)})
    assert reply.status_code == 200, reply.text
    image = nifti(reply.content)
    label = np.asarray(image.dataobj)
    assert label.shape == (40, 40, 8)
    assert not label[..., [z for z in range(8) if z != 5]].any()  # only the clicked slice is annotated
    assert np.allclose(np.diag(image.affine), [0.8, 0.8, 2.5, 1.0])  # on the image's grid


def test_active_learning_strategies(live, site):
    c = live.client
    uncertain = c.post("/activelearning/uncertain", json={}).json()
    assert uncertain["id"] in {"img0", "img1", "img2", "vol"} and 0.0 <= uncertain["score"] <= 1.0
    assert c.post("/activelearning/random", json={"seed": 3}).json()["id"] == \
        c.post("/activelearning/random", json={"seed": 3}).json()["id"]
    assert c.post("/activelearning/epistemic", json={}).status_code == 404
    for image_id in ("img0", "img1", "img2"):
        mask = site["masks"][image_id].astype(np.uint8)
        c.put("/datastore/label", params={"image": image_id},
              files={"label": ("l.nii.gz", gzip.compress(nib.Nifti1Image(mask, np.eye(4)).to_bytes()))})
    assert c.post("/activelearning/uncertain", json={}).json()["id"] == "vol"
    vol = np.zeros((40, 40, 8), np.uint8)
    vol[10:20, 10:20, 2:4] = 1
    saved = c.put("/datastore/label", params={"image": "vol"},
                  files={"label": ("l.nii.gz", gzip.compress(nib.Nifti1Image(vol, np.eye(4)).to_bytes()))}).json()
    assert saved["cases"] == ["vol.z0002", "vol.z0003"]
    assert c.post("/activelearning/first", json={}).json() == {}  # nothing left to label


def test_a_3d_model_annotates_the_whole_volume(make_config, site, tiny_base_3d):
    from service_helpers import LiveServer

    with LiveServer(make_config(base=str(tiny_base_3d))) as live:
        c = live.client
        assert c.get("/info/").json()["models"]["fedpoint"]["dimension"] == 3
        refused = c.post("/api/sessions/img0/click", json={"point": [24, 24]})
        assert refused.status_code == 422 and "2D image" in refused.json()["detail"]
        meta = c.get("/api/images/vol").json()
        assert not meta["per_slice"]
        r = c.post("/api/sessions/vol/click", json={"point": [20, 20, 4], "positive": True}).json()
        assert r["slice"] == 4 and r["clicks"] == [{"point": [20, 20, 4], "positive": True}]
        # one 3D prediction: the mask reaches past the clicked slice, and the page is told where
        assert r["mask_slices"] and set(r["mask_slices"]) & {3, 5}, r["mask_slices"]
        view = c.get("/api/sessions/vol", params={"slice": 5}).json()
        assert view["clicks"] == r["clicks"]  # one session for the whole volume
        assert view["mask_slices"] == r["mask_slices"]
        from fedpoint.client.service.routes_web import DEFAULT_USER

        opened = live.state.sessions.get(("vol", DEFAULT_USER, None, "object"))
        assert opened.session.spacing is not None  # windows measured in mm on the volume's grid
        # MONAI Label infer with 3D points returns the 3D label on the volume's grid
        params = {"foreground": [[20, 20, 4]], "background": [[2, 2, 7]], "client_id": "slicer"}
        reply = c.post("/infer/fedpoint", params={"image": "vol", "output": "image"}, data={"params": json.dumps(params)})
        assert reply.status_code == 200, reply.text
        label = np.asarray(nib.Nifti1Image.from_bytes(gzip.decompress(reply.content)).dataobj)
        assert label.shape == (40, 40, 8) and label[20, 20, 4] == 1 and label[2, 2, 7] == 0
        assert len({z for z in range(8) if label[..., z].any()}) > 1  # more than the clicked slice
        volume = np.zeros((40, 40, 8), np.uint8)
        volume[15:25, 15:25, 3:6] = 1
        saved = c.put("/datastore/label", params={"image": "vol"},
                      files={"label": ("l.nii.gz", gzip.compress(nib.Nifti1Image(volume, np.eye(4)).to_bytes()))})
        assert saved.status_code == 200 and saved.json()["cases"] == ["vol"]
        assert np.load(site["store"] / "cache" / "vol" / "image.npy").shape == (1, 40, 40, 8)


def test_png_and_rgb_images_are_read(make_config, site):
    from PIL import Image
    from service_helpers import LiveServer

    rgb = np.zeros((30, 40, 3), np.uint8)  # PIL: 30 rows, 40 columns
    rgb[10:20, 5:15] = (200, 180, 160)
    Image.fromarray(rgb).save(site["images"] / "photo.png")
    with LiveServer(make_config()) as live:
        meta = live.client.get("/api/images/photo").json()
        assert meta["shape"] == [40, 30]  # (x, y): columns first, as fedpoint reads every file
        r = live.client.post("/api/sessions/photo/click", json={"point": [10, 15]})
        assert r.status_code == 200 and r.json()["mask"]["width"] == 40


def test_unsupported_monai_label_routes_answer_501_naming_what_is_missing(live):
    c = live.client
    for method, path, word in (("post", "/session/", "sessions"), ("get", "/session/abc", "sessions"),
                               ("get", "/model/fedpoint", "model download"), ("post", "/scoring/dice", "scoring"),
                               ("post", "/batch/infer/fedpoint", "batch"), ("get", "/logs/", "logs"),
                               ("put", "/datastore/", "images folder"), ("delete", "/datastore/", "images folder")):
        r = getattr(c, method)(path)
        assert r.status_code == 501, (method, path, r.status_code)
        assert word in r.json()["detail"], (path, r.json())
    assert c.get("/model/fedpoint", headers={"Authorization": "Bearer wrong"}).status_code == 401  # still behind auth
