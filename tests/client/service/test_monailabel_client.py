"""MONAI Label's own Python client against `fedpoint site serve`: login with a named user's token,
info, next sample, infer with points, save a multi-label map, train status.

The client is the `monailabel` wheel's `monailabel/client/client.py`, downloaded with `pip download
--no-deps` and imported alone (the rest of MONAI Label is never imported)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import zipfile

import numpy as np
import pytest
from service_helpers import TOKEN, LiveServer

from fedpoint.client.service.users import UserRegistry

MONAILABEL = "monailabel==0.8.5"


@pytest.fixture(scope="module")
def client_module(tmp_path_factory):
    folder = tmp_path_factory.mktemp("monailabel-wheel")
    try:
        done = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(folder), MONAILABEL],
                              capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired:
        pytest.skip(f"pip download {MONAILABEL} took over 300 s")
    wheels = list(folder.glob("monailabel-*.whl"))
    if done.returncode != 0 or not wheels:
        pytest.skip(f"could not download {MONAILABEL} (no package index?): {done.stderr.strip()[-200:]}")
    path = folder / "monailabel_client.py"
    path.write_bytes(zipfile.ZipFile(wheels[0]).read("monailabel/client/client.py"))
    spec = importlib.util.spec_from_file_location("monailabel_client", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert "monailabel" not in sys.modules, "only the client module may be imported"
    return module


@pytest.mark.slow
def test_monailabel_client_end_to_end(client_module, make_config, site, tmp_path):
    token = UserRegistry(site["store"] / "users.json").add("alice")
    with LiveServer(make_config(label="lesion")) as live:
        client = client_module.MONAILabelClient(live.url, tmpdir=str(tmp_path), client_id="someone-else")
        assert client.auth_enabled()
        client.update_auth(client.auth_token("alice", token))
        assert client.auth_valid_token()

        info = client.info()
        assert info["labels"] == ["lesion"] and "fedpoint" in info["models"]
        sample = client.next_sample("first", {})
        image_id = sample["id"]
        assert image_id in live.state.images.ids()

        label_file, params = client.infer("fedpoint", image_id, {"foreground": [[24, 24, 0]], "background": [[2, 2, 0]],
                                                                 "result_extension": ".nrrd", "result_dtype": "uint16"})
        import nrrd

        label, header = nrrd.read(label_file)
        assert label.dtype == np.uint16 and label.shape == live.state.desk.load(image_id).shape and label[24, 24] == 1
        assert params["label_names"] == {"lesion": 1}
        assert live.state.sessions.get((image_id, "alice", None, "lesion")) is not None  # the token's user, not client_id

        # a multi-label map: only our structure's value goes into the cache
        import nibabel as nib

        multi = np.zeros(label.shape, np.uint8)
        multi[18:30, 18:30] = 1
        multi[2:6, 2:6] = 2
        saved_path = tmp_path / "multi.nii.gz"
        nib.save(nib.Nifti1Image(multi, np.eye(4)), str(saved_path))
        reply = client.save_label(image_id, str(saved_path), params={"label_info": [{"name": "other", "idx": 2},
                                                                                     {"name": "lesion", "idx": 1}]})
        (case,) = reply["cases"]
        cached = np.load(site["store"] / "cache" / case / "mask.npy")
        assert np.array_equal(cached.reshape(multi.shape).astype(bool), multi == 1)
        meta = json.loads((site["store"] / "cache" / case / "meta.json").read_text())
        assert meta["user"] == "alice"

        status = client.train_status()
        assert status["status"] in ("NONE", "DONE", "RUNNING", "ERROR")
        assert client.train_status(check_if_running=True) in (True, False)


@pytest.mark.slow
def test_monailabel_client_gets_a_3d_label_of_a_volume_by_propagation(client_module, make_config, tmp_path):
    """A click on one slice of a volume through MONAI Label's own client, on a 2D base: the label
    that comes back is 3D, carried from the clicked slice to its neighbours (the default route)."""
    import nibabel as nib
    from test_volumes import SHAPE, slices_of, write_volume_site

    images = tmp_path / "volume-images"
    truth = write_volume_site(images)
    with LiveServer(make_config(images=str(images), store=str(tmp_path / "store"), base="base2d")) as live:
        client = client_module.MONAILabelClient(live.url, tmpdir=str(tmp_path), client_id="slicer")
        client.update_auth(client.auth_token("site", TOKEN))
        label_file, params = client.infer("fedpoint", "vol", {"foreground": [[32, 32, 12]]})
        label = np.asarray(nib.load(label_file).dataobj)
        assert label.shape == SHAPE and params["route"] == "propagate"
        held = slices_of(label > 0)
        assert {11, 12, 13} <= held <= slices_of(truth), sorted(held)
        box_file, box_params = client.infer("fedpoint", "vol", {"roi": [20, 22, 45, 43], "roi_slice": 12})
        boxed = np.asarray(nib.load(box_file).dataobj)
        assert box_params["user_slices"] == [12] and len(slices_of(boxed > 0)) > 1
