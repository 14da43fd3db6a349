"""MONAI Label's label work (`labels`): where a client's prompts land, and which label value is which
structure. The desk here has no model: every refusal below comes before a session opens."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from service_helpers import desk_config, engine_without_model

from fedpoint.client.service.desk import AnnotationDesk
from fedpoint.client.service.images import LoadedImage
from fedpoint.client.service.labels import LabelOperations, label_values
from fedpoint.client.service.sessions import SessionRegistry
from fedpoint.client.service.uploads import UploadError
from fedpoint.client.service.validation import LabelInfo
from fedpoint.client.session import InputError
from fedpoint.client.site_store import SiteStore
from fedpoint.shared.clicks import Box, Click


def _labels(tmp_path) -> LabelOperations:
    data = np.random.default_rng(0).random((6, 5, 4)).astype(np.float32)
    images = {"vol": LoadedImage("vol", Path("vol.npy"), data, data[None], np.eye(4), (0.0, 1.0), "MR")}
    folder = SimpleNamespace(ids=lambda: sorted(images), unreadable=dict, load=images.__getitem__)
    engine = engine_without_model(SiteStore(tmp_path / "store"))
    config = desk_config(tmp_path, ("liver", "lesion"), max_points=4, max_decoded_mb=1.0)
    return LabelOperations(AnnotationDesk(config, engine, folder, None, SessionRegistry(), audit=None, training=None))


def test_prompts_are_grouped_by_the_slice_they_land_on(tmp_path):
    labels = _labels(tmp_path)
    loaded = labels.desk.load("vol")
    groups, boxes = labels._place(loaded, [[1, 2, 3], [0, 0, 1]], [[2, 2, 3]], [0, 0, 3, 3], 1)
    assert groups == {1: [Click((0, 0), True)], 3: [Click((1, 2), True), Click((2, 2), False)]}
    assert boxes == {1: Box((0, 0), (3, 3))}
    labels.desk.close()


@pytest.mark.parametrize("foreground, roi, message", [
    ([[1, 2, 3], [9, 0, 0]], None, "outside"),  # the second point is off the image
    ([[1, 2, 3]], [0, 0, 9, 9], "outside"),  # the box reaches past the slice
    ([], None, "at least one"),
    ([[1, 1, 1]] * 5, None, "at most 4"),
])
def test_infer_places_every_prompt_before_any_session_opens(tmp_path, foreground, roi, message):
    labels = _labels(tmp_path)
    with pytest.raises(InputError, match=message):
        labels.infer("vol", "ana", foreground, [], roi=roi, roi_slice=0)
    assert len(labels.desk.sessions) == 0
    labels.desk.close()


def test_an_unknown_label_file_is_refused_before_any_session(tmp_path):
    labels = _labels(tmp_path)
    with pytest.raises(UploadError, match="use one of"):
        labels.save_upload("vol", "ana", b"not a label", "label.txt")
    assert len(labels.desk.sessions) == 0 and labels.desk.requests == {}
    labels.desk.close()


def test_label_values_say_which_value_is_which_structure():
    sites = {"liver": 1, "lesion": 2}
    assert label_values(None, {"liver": 1}) == {"liver": None}  # one structure: every non-zero voxel
    assert label_values(None, sites) == sites
    info = [LabelInfo(name="lesion", idx=7), LabelInfo(name="spleen", idx=3), LabelInfo(name="liver")]
    assert label_values(info, sites) == {"lesion": 7, "liver": 1}  # ours only; no idx: the site's value
    with pytest.raises(InputError, match="background value"):
        label_values([LabelInfo(name="liver", idx=0)], sites)
    with pytest.raises(InputError, match="this site labels liver, lesion"):
        label_values([LabelInfo(name="spleen", idx=1)], sites)
