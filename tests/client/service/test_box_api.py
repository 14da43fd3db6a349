"""A box prompt through the service: the page's API, MONAI Label's `/infer` params, and clear 422s."""

from __future__ import annotations

import numpy as np
import pytest
from service_helpers import TOKEN, LiveServer, unpack

from test_monailabel_client import client_module  # noqa: F401  (the fixture: MONAI Label's own client)


@pytest.fixture
def box_live(make_config, tiny_box_base_2d):
    with LiveServer(make_config(base=str(tiny_box_base_2d))) as server:
        yield server


def test_page_api_box_then_click_then_undo(box_live, site):
    c = box_live.client
    first = c.post("/api/sessions/img0/box", json={"lo": [10, 12], "hi": [30, 34]})
    assert first.status_code == 200, first.text
    body = first.json()
    assert body["box"] == {"lo": [10, 12], "hi": [30, 34]} and body["clicks"] == []
    assert unpack(body["mask"]).shape == (48, 48)
    second = c.post("/api/sessions/img0/click", json={"point": [20, 20], "positive": True}).json()
    assert second["box"] == body["box"] and len(second["clicks"]) == 1 and second["update_ms"] > 0
    assert c.get("/api/sessions/img0").json()["box"] == body["box"]
    c.post("/api/sessions/img0/undo", json={})
    assert c.post("/api/sessions/img0/undo", json={}).json()["box"] is None
    on_slice = c.post("/api/sessions/vol/box", json={"lo": [5, 5, 3], "hi": [20, 22, 3]})
    assert on_slice.status_code == 200 and on_slice.json()["slice"] == 3, on_slice.text


@pytest.mark.parametrize("body, words", [
    ({"lo": [10, 12], "hi": [60, 34]}, "box: from (10, 12) to (61, 35) reaches outside"),
    ({"lo": [30, 12], "hi": [10, 34]}, "box: from (30, 12) to (11, 35) is inverted"),
    ({"lo": [10, 12, 1], "hi": [30, 34, 1]}, "box: corners"),
    ({"lo": [10], "hi": [30, 34]}, "lo"),
    ({"lo": [10, "a"], "hi": [30, 34]}, "lo.1"),
    ({"lo": [10, 12], "hi": [30, 1e300]}, "hi.1"),
])
def test_bad_boxes_are_a_clear_422_naming_the_field(box_live, body, words):
    refused = box_live.client.post("/api/sessions/img0/box", json=body)
    assert refused.status_code == 422 and words in refused.text, refused.text
    assert box_live.state.sessions.get(("img0", "web", None, box_live.state.desk.structure(None))) is None or \
        not box_live.state.sessions.get(("img0", "web", None, box_live.state.desk.structure(None))).session.steps


def test_a_click_only_base_refuses_a_box_with_a_422(live):
    refused = live.client.post("/api/sessions/img0/box", json={"lo": [10, 12], "hi": [30, 34]})
    assert refused.status_code == 422 and "takes no box" in refused.json()["detail"]


@pytest.mark.slow
def test_monailabel_client_infers_from_a_box(client_module, make_config, tiny_box_base_2d, tmp_path):  # noqa: F811
    with LiveServer(make_config(base=str(tiny_box_base_2d), label="lesion")) as live:
        client = client_module.MONAILabelClient(live.url, tmpdir=str(tmp_path), client_id="slicer")
        client.update_auth({"token_type": "Bearer", "access_token": TOKEN})
        label_file, params = client.infer("fedpoint", "img1", {"roi": [8, 8, 40, 40], "result_extension": ".nii.gz"})
        import nibabel as nib

        label = np.asarray(nib.load(label_file).dataobj)
        session = live.state.sessions.get(("img1", "slicer", None, "lesion")).session
        assert session.drawn_box.lo == (8, 8) and session.drawn_box.hi == (40, 40) and session.clicks == []
        assert np.array_equal(label == 1, session.mask)
        label_file, _ = client.infer("fedpoint", "img1", {"roi": [8, 8, 40, 40], "foreground": [[24, 24, 0]]})
        assert len(session.clicks) == 1 and session.drawn_box.hi == (40, 40), "the same box is kept, the click refines it"
        bad = client_module.MONAILabelClient(live.url, tmpdir=str(tmp_path), client_id="slicer")
        bad.update_auth({"token_type": "Bearer", "access_token": TOKEN})
        with pytest.raises(Exception) as err:
            bad.infer("fedpoint", "img1", {"roi": [8, 8, 60, 40]})
        assert "params.roi" in str(err.value) and "outside" in str(err.value)
