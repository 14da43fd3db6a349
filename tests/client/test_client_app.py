"""The SuperNode's node config chooses the ClientApp's device."""

import pytest

from fedpoint.client.client_app import node_device


def test_node_device_defaults_to_cpu_and_resolves_auto():
    assert node_device({}) == "cpu"
    assert node_device({"device": "auto"}) in {"cpu", "cuda"}


def test_a_bad_node_device_is_refused_naming_the_forms():
    with pytest.raises(ValueError, match="cpu, cuda, cuda:N or auto"):
        node_device({"device": "tpu"})
