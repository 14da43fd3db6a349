"""The annotation desk on its own: its cache index and its slice geometry (no model runs)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from service_helpers import desk_config, engine_without_model

from fedpoint.client.service.desk import AnnotationDesk
from fedpoint.client.service.images import ImageError, LoadedImage
from fedpoint.client.service.sessions import SessionRegistry
from fedpoint.client.session import InputError
from fedpoint.client.site_store import SiteStore


def _image(image_id: str, shape: tuple[int, ...]) -> LoadedImage:
    data = np.random.default_rng(0).random(shape).astype(np.float32)
    return LoadedImage(image_id, Path(f"{image_id}.npy"), data, data[None], np.eye(4), (0.0, 1.0), "MR")


def _desk(tmp_path, dims: int = 2, structures=("object",)) -> AnnotationDesk:
    store = SiteStore(tmp_path / "store")
    store.add_case("img0", np.zeros((1, 4, 4), np.float32), np.eye(4, dtype=bool), {"image": "img0", "request": "img0|web|r1"})
    store.add_case("vol.z0002", np.zeros((1, 4, 4), np.float32), np.eye(4, dtype=bool), {"image": "vol", "slice": 2})
    store.add_case("vol.z0003", np.zeros((1, 4, 4), np.float32), np.eye(4, dtype=bool), {"image": "vol", "slice": 3})
    images = {"img0": _image("img0", (6, 5)), "img1": _image("img1", (6, 5)), "vol": _image("vol", (6, 5, 4))}
    folder = SimpleNamespace(ids=lambda: sorted(images), unreadable=lambda: {"img1"}, load=images.__getitem__)
    return AnnotationDesk(desk_config(tmp_path, structures), engine_without_model(store, dims), folder, None,
                          SessionRegistry(), audit=None, training=None)


def test_the_cache_index_comes_from_the_store(tmp_path):
    desk = _desk(tmp_path)
    names = {image: [case.name for case in cases] for image, cases in desk.cases_by_image.items()}
    assert names == {"img0": ["img0"], "vol": ["vol.z0002", "vol.z0003"]}
    assert desk.requests == {"img0|web|r1": ["img0"]} and desk.cache_size() == 3
    assert desk.unlabelled() == []  # img1 is known unreadable: no next-image choice offers it
    desk.close()


def test_geometry_of_a_2d_model(tmp_path):
    desk = _desk(tmp_path)
    image, volume = desk.load("img0"), desk.load("vol")
    assert not desk.sliced(image) and desk.sliced(volume)
    assert desk.locate(image, [3, 4]) == (None, (3, 4))
    assert desk.locate(image, [3, 4, 0]) == (None, (3, 4))  # MONAI Label's [x, y, 0] on a 2D image
    with pytest.raises(InputError, match="z = 1"):
        desk.locate(image, [3, 4, 1])
    assert desk.locate(volume, [1, 2, 3]) == (3, (1, 2))  # a click's z picks the slice
    assert desk.locate(volume, [1, 2], slice_index=1) == (1, (1, 2))
    with pytest.raises(InputError, match="image index space"):
        desk.locate(volume, [6, 0, 0])
    assert desk.session_image(volume, 3).shape == (1, 6, 5)
    assert desk.slice_of(np.zeros((6, 5, 4), bool), 2).shape == (6, 5)
    desk.close()


def test_geometry_of_a_3d_model_and_structures(tmp_path):
    desk = _desk(tmp_path, dims=3, structures=("liver", "lesion"))
    assert not desk.sliced(desk.load("vol")) and desk.locate(desk.load("vol"), [1, 2, 3]) == (None, (1, 2, 3))
    with pytest.raises(ImageError, match="2D image"):
        desk.load("img0")
    assert desk.structure(None) == "liver" and desk.structure("lesion") == "lesion"
    with pytest.raises(InputError, match="unknown structure"):
        desk.structure("spleen")
    desk.close()


def test_one_call_answers_a_route_and_the_key_is_built_once(tmp_path):
    """The desk resolves the page's slice and the structure itself: a route passes what the request says."""
    desk = _desk(tmp_path, structures=("liver", "lesion"))
    assert desk.key("vol", "ana", 2, None) == ("vol", "ana", 2, "liver")
    view = desk.view("vol", "ana", 2)  # nothing open: an empty mask of the slice, no clicks, no box
    assert (view.slice, view.shown, view.structure, view.mask.shape) == (2, 2, "liver", (6, 5))
    assert view.clicks == [] and view.box is None and view.mask_slices is None and not view.plane.any()
    assert desk.view("img0", "ana", 3).slice is None  # a 2D image has no slices: the page's slice is ignored
    with pytest.raises(LookupError, match="no open annotation of vol slice 1 by 'ana'"):
        desk.undo("vol", "ana", 1, "lesion")
    with pytest.raises(InputError, match="unknown structure"):
        desk.undo("vol", "ana", 1, "spleen")
    desk.discard("vol", "ana", 1)  # nothing open: nothing to do
    assert len(desk.sessions) == 0
    desk.close()
