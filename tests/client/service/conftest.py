"""Fixtures for the site service: a small site folder, configs, and the real service on a socket."""

from __future__ import annotations

import pytest
from service_helpers import TOKEN, LiveServer, write_images


@pytest.fixture
def site(tmp_path, blob) -> dict:
    images = tmp_path / "images"
    return {"root": tmp_path, "images": images, "store": tmp_path / "store", "masks": write_images(images, blob)}


@pytest.fixture
def make_config(site, tiny_base_2d):
    from fedpoint.client.service import make_service_config

    def make(**overrides):
        data = {"site": "test-site", "modality": "MR", "store": str(site["store"]), "images": str(site["images"]),
                "base": str(tiny_base_2d), "token": TOKEN, "bank_poll_s": 0.2, "mode": "mid+post",
                "adaptation": {"post_clicks": 2}}
        data.update(overrides)
        return make_service_config(data, "test")

    return make


@pytest.fixture
def live(make_config):
    with LiveServer(make_config()) as server:
        yield server
