"""The service routes each structure's sessions (site.toml `labels`) to that structure's adapter."""

from __future__ import annotations

import torch
from service_helpers import LiveServer


def _weights(model):
    return {n: p.detach().clone() for n, p in model.net.named_parameters()}


def test_a_structure_accept_adapts_its_own_adapter_only(make_config):
    with LiveServer(make_config(labels=["liver", "lesion"], save_adapter_every=1)) as server:
        engine = server.state.engine
        lesion = engine.slot("lesion").model
        before = _weights(lesion)
        c = server.client
        for point in ([24, 24], [20, 26]):
            assert c.post("/api/sessions/img0/click", json={"point": point, "structure": "liver"}).status_code == 200
        assert c.post("/api/sessions/img0/accept", json={"structure": "liver"}).status_code == 200
        liver = engine.slot("liver").model
        assert liver is not lesion and liver is not engine.model
        assert all(torch.equal(before[n], p) for n, p in _weights(lesion).items())
        assert liver.steps > 0 and lesion.steps == 0
        store = engine.root_store
        assert store.for_task("liver").adapter_versions() == [1] and store.for_task("lesion").adapter_versions() == []
