"""Several structures per image (site.toml `labels`): a session and a cache entry per structure,
MONAI Label multi-label maps in and out, and clear errors for unknown structure names."""

from __future__ import annotations

import json

import numpy as np
import pytest
from service_helpers import LiveServer


@pytest.fixture
def two(make_config):
    with LiveServer(make_config(labels=["liver", "lesion"])) as server:
        yield server


def _nifti(label: np.ndarray) -> bytes:
    import gzip

    import nibabel as nib

    return gzip.compress(nib.Nifti1Image(label.astype(np.uint8), np.eye(4)).to_bytes())


def test_each_structure_has_its_own_session_and_cache_entry(two, site):
    c = two.client
    liver = c.post("/api/sessions/img0/click", json={"point": [24, 24], "structure": "liver"}).json()
    lesion = c.post("/api/sessions/img0/click", json={"point": [10, 10], "structure": "lesion"}).json()
    assert liver["structure"] == "liver" and lesion["structure"] == "lesion"
    assert len(liver["clicks"]) == 1 and len(lesion["clicks"]) == 1  # not one session of two clicks
    assert c.get("/api/sessions/img0", params={"structure": "lesion"}).json()["clicks"][0]["point"] == [10, 10]
    first = c.post("/api/sessions/img0/accept", json={"structure": "liver"}).json()
    second = c.post("/api/sessions/img0/accept", json={"structure": "lesion"}).json()
    assert (first["case"], second["case"]) == ("img0.liver", "img0.lesion")
    meta = json.loads((site["store"] / "tasks" / "lesion" / "cache" / "img0.lesion" / "meta.json").read_text())
    assert meta["structure"] == "lesion"
    # the stored label is a multi-label map: liver 1, lesion 2 (lesion painted last where they overlap)
    r = c.get("/datastore/label", params={"label": "img0"})
    import gzip

    import nibabel as nib

    label = np.asarray(nib.Nifti1Image.from_bytes(gzip.decompress(r.content)).dataobj)
    liver_mask = np.load(site["store"] / "tasks" / "liver" / "cache" / "img0.liver" / "mask.npy").reshape(label.shape)
    lesion_mask = np.load(site["store"] / "tasks" / "lesion" / "cache" / "img0.lesion" / "mask.npy").reshape(label.shape)
    assert np.array_equal(label == 2, lesion_mask)
    assert np.array_equal(label == 1, liver_mask & ~lesion_mask)
    status = c.get("/api/status").json()
    assert [s["name"] for s in status["structures"]] == ["liver", "lesion"]
    assert len({s["color"] for s in status["structures"]}) == 2


def test_unknown_structures_are_refused_by_name(two):
    r = two.client.post("/api/sessions/img0/click", json={"point": [24, 24], "structure": "spleen"})
    assert r.status_code == 422 and "spleen" in r.json()["detail"] and "liver, lesion" in r.json()["detail"]
    assert two.client.get("/api/sessions/img0", params={"structure": "spleen"}).status_code == 422
    label = np.zeros((48, 48), np.uint8)
    label[20:28, 20:28] = 1
    r = two.client.put("/datastore/label", params={"image": "img1"}, files={"label": ("l.nii.gz", _nifti(label))},
                       data={"params": json.dumps({"label_info": [{"name": "spleen", "idx": 1}]})})
    assert r.status_code == 422 and "spleen" in r.json()["detail"]
    assert not list(two.state.store.root.rglob("img1*")), "nothing may be stored"


def test_monai_label_multi_label_save_and_infer(two, site):
    info = two.client.get("/info/").json()
    assert info["labels"] == ["liver", "lesion"] and info["models"]["fedpoint"]["labels"] == {"liver": 1, "lesion": 2}
    label = np.zeros((48, 48), np.uint8)
    label[18:30, 18:30] = 7   # Slicer's segment values need not be ours
    label[2:8, 2:8] = 3
    label[40:44, 40:44] = 9   # a segment this site does not label: ignored
    info_list = [{"name": "lesion", "idx": 3}, {"name": "liver", "idx": 7}, {"name": "bone", "idx": 9}]
    r = two.client.put("/datastore/label", params={"image": "img2"}, files={"label": ("l.nii.gz", _nifti(label))},
                       data={"params": json.dumps({"label_info": info_list})})
    assert r.status_code == 200, r.text
    assert sorted(r.json()["cases"]) == ["img2.lesion", "img2.liver"]
    lesion = np.load(site["store"] / "tasks" / "lesion" / "cache" / "img2.lesion" / "mask.npy").reshape(label.shape)
    assert np.array_equal(lesion, label == 3)
    r = two.client.post("/infer/fedpoint", params={"image": "img0", "output": "json"},
                        data={"params": json.dumps({"foreground": [[24, 24]], "label": "lesion"})})
    assert r.status_code == 200 and r.json()["label_names"] == {"lesion": 2}
    assert two.state.sessions.get(("img0", "monailabel", None, "lesion")) is not None


def test_label_names_are_checked_in_site_toml(make_config):
    from fedpoint.client.service import ServiceConfigError

    with pytest.raises(ServiceConfigError, match="repeat"):
        make_config(labels=["liver", "liver"])
    with pytest.raises(ServiceConfigError, match="labels"):
        make_config(labels=["../x"])
    with pytest.raises(ServiceConfigError, match="one task"):  # each structure keeps its own task store
        make_config(labels=["Liver", "liver"])
