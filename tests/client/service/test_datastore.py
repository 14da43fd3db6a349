"""The declared datastore (`datastore`): the images folder, the PACS and their union each fulfil it."""

from __future__ import annotations

import numpy as np

from fedpoint.client.service.datastore import Datastore, LabelSink
from fedpoint.client.service.dicomweb import PacsImages, SiteImages
from fedpoint.client.service.images import ImageFolder


def _members(protocol) -> set[str]:
    return {name for name in vars(protocol) if not name.startswith("_")}


def test_the_pacs_and_the_union_declare_every_member():
    """Checked on the classes: building either needs a PACS (test_dicom runs them against Orthanc)."""
    for source in (PacsImages, SiteImages):
        missing = _members(Datastore) - set(dir(source))
        assert not missing, f"{source.__name__} lacks {missing}"
    for sink in (PacsImages, SiteImages):
        assert not _members(LabelSink) - set(dir(sink))
    assert "write_back" not in dir(ImageFolder)  # a folder's images stay on the site's disk


def test_an_images_folder_is_a_datastore_and_no_label_sink(tmp_path):
    (tmp_path / "images").mkdir()
    np.save(tmp_path / "images" / "a.npy", np.random.default_rng(0).random((16, 16), dtype=np.float32))
    folder = ImageFolder(tmp_path / "images", "MR", 1)
    assert isinstance(folder, Datastore) and not isinstance(folder, LabelSink)  # `skipped` is its attribute
    assert folder.ids() == ["a"] and folder.load("a").shape == (16, 16)
    assert folder.skipped_list() == [] and folder.unreadable() == {}
