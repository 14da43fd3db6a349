"""Security and bad input, through the real HTTP layer: token, ids, sizes, points, CORS."""

from __future__ import annotations

import json
import re

import pytest
from fastapi.routing import APIRoute
from service_helpers import TOKEN, LiveServer

OPEN_ROUTES = {"/health", "/", "/static/{name}"}  # no site data: the health check and the page's own code
SAMPLE_PARAMS = {"image_id": "img0", "model": "fedpoint", "strategy": "first", "z": "0", "name": "app.js"}


def protected_routes(state) -> list[tuple[str, str]]:
    """Every data route, from the same router factories create_app includes."""
    from fedpoint.client.service import monailabel, routes_web

    routers = [routes_web.api_router(state, lambda: None), monailabel.router(state, lambda: None),
               routes_web.page_router()]
    out = []
    for route in (r for router in routers for r in router.routes):
        if isinstance(route, APIRoute) and route.path not in OPEN_ROUTES:
            path = re.sub(r"{(\w+)}", lambda m: SAMPLE_PARAMS[m.group(1)], route.path)
            out += [(method, path) for method in sorted(route.methods)]
    return out


def test_every_endpoint_but_health_needs_the_token(live):
    routes = protected_routes(live.state)
    assert len(routes) >= 20
    for method, path in routes:
        for headers in ({}, {"Authorization": "Bearer wrong-token-of-some-length"}, {"Authorization": TOKEN}):
            r = live.anonymous.request(method, path, headers=headers)
            assert r.status_code == 401, (method, path, headers, r.status_code)
            assert r.headers.get("www-authenticate") == "Bearer"
    assert live.anonymous.get("/health").json() == {"status": "ok"}
    page = live.anonymous.get("/")
    assert page.status_code == 200 and "app.js" in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]  # the page loads nothing from elsewhere
    assert live.anonymous.get("/openapi.json").status_code == 404 and live.anonymous.get("/docs").status_code == 404


def test_the_page_references_nothing_external(live):
    for name in ("/", "/static/app.js", "/static/style.css"):
        text = live.anonymous.get(name).text
        assert not re.search(r"(src|href)=[\"']?(https?:)?//", text), name
        assert "@import" not in text and "fonts.g" not in text


@pytest.mark.parametrize("path", [
    "/api/images/..%2F..%2Fetc%2Fpasswd",
    "/api/images/%2Fetc%2Fpasswd/slice/0",
    "/datastore/image?image=../../etc/passwd",
    "/datastore/image?image=%2Fetc%2Fpasswd",
    "/datastore/image?image=img0%00.npy",
    "/datastore/label?label=..%2Fstore%2Fcache%2Fimg0",
])
def test_path_traversal_ids_are_refused(live, path):
    r = live.client.get(path)
    assert r.status_code in (400, 404), (path, r.status_code)
    assert "root:" not in r.text


def test_static_files_are_a_fixed_listing(live):
    assert live.anonymous.get("/static/..%2Fstate.py").status_code == 404
    assert live.anonymous.get("/static/state.py").status_code == 404


def test_points_outside_the_image_are_refused_clearly(live):
    r = live.client.post("/api/sessions/img0/click", json={"point": [48, 3], "positive": True})
    assert r.status_code == 422 and "outside the image" in r.json()["detail"] and "(48, 48)" in r.json()["detail"]
    params = {"foreground": [[10, 10, 99]], "background": []}
    r = live.client.post("/infer/fedpoint", params={"image": "vol"}, data={"params": json.dumps(params)})
    assert r.status_code == 422 and "outside the image" in r.json()["detail"]
    r = live.client.post("/infer/fedpoint", params={"image": "img0"}, data={"params": json.dumps({"foreground": [[1, 2, 3, 4]]})})
    assert r.status_code == 422 and "[x, y]" in r.json()["detail"]
    r = live.client.post("/api/sessions/img0/click", content='{"point": [NaN, 3]}', headers={"content-type": "application/json"})
    assert r.status_code == 422


def test_too_many_points_are_refused(make_config):
    with LiveServer(make_config(max_points=3)) as live:
        params = {"foreground": [[5, 5], [6, 6]], "background": [[1, 1], [2, 2]]}
        r = live.client.post("/infer/fedpoint", params={"image": "img0"}, data={"params": json.dumps(params)})
        assert r.status_code == 422 and "at most 3" in r.json()["detail"]
        for i in range(3):
            assert live.client.post("/api/sessions/img1/click", json={"point": [10 + i, 10]}).status_code == 200
        r = live.client.post("/api/sessions/img1/click", json={"point": [20, 10]})
        assert r.status_code == 422 and "at most 3 clicks" in r.json()["detail"]


def test_oversize_uploads_are_refused(make_config):
    with LiveServer(make_config(max_upload_mb=0.01)) as live:  # about 10 KiB
        big = b"\0" * 20_000
        r = live.client.put("/datastore/label", params={"image": "img0"}, files={"label": ("l.nii.gz", big)})
        assert r.status_code == 413 and "max_upload_mb" in r.json()["detail"]

        def chunks():  # no Content-Length: the body is counted as it streams
            for _ in range(20):
                yield b"x" * 1000

        r = live.client.post("/api/sessions/img0/click", content=chunks(), headers={"content-type": "application/json"})
        assert r.status_code == 413
        assert live.client.get("/api/status").status_code == 200  # the service is fine afterwards


def test_bad_label_uploads_are_refused_with_reasons(live):
    r = live.client.put("/datastore/label", params={"image": "img0"}, files={"label": ("l.exe", b"MZ")})
    assert r.status_code == 422 and "use one of" in r.json()["detail"]
    r = live.client.put("/datastore/label", params={"image": "img0"}, files={"label": ("l.nii.gz", b"not a nifti")})
    assert r.status_code == 422 and "cannot be read" in r.json()["detail"]
    r = live.client.put("/datastore/label", params={"image": "nope"}, files={"label": ("l.nii.gz", b"x")})
    assert r.status_code == 404
    r = live.client.post("/infer/fedpoint", params={"image": "img0"}, data={"params": "{not json"})
    assert r.status_code == 422 and "not valid JSON" in r.json()["detail"]
    assert live.client.post("/infer/other-model", params={"image": "img0"}, data={"params": "{}"}).status_code == 404


def test_cors_is_closed_by_default(live):
    evil = {"Origin": "http://elsewhere.example"}
    r = live.client.get("/api/status", headers=evil)
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers
    preflight = live.anonymous.options("/api/status", headers={**evil, "Access-Control-Request-Method": "GET"})
    assert "access-control-allow-origin" not in preflight.headers


def test_cors_allows_only_configured_origins(make_config):
    with LiveServer(make_config(cors_origins=["http://viewer.hospital.example"])) as live:
        ok = live.client.get("/api/status", headers={"Origin": "http://viewer.hospital.example"})
        assert ok.headers["access-control-allow-origin"] == "http://viewer.hospital.example"
        other = live.client.get("/api/status", headers={"Origin": "http://elsewhere.example"})
        assert "access-control-allow-origin" not in other.headers


def test_token_in_path_for_header_less_clients(make_config):
    with LiveServer(make_config(token_in_path=True)) as live:
        assert live.anonymous.get(f"/t/{TOKEN}/info/").status_code == 200
        assert live.anonymous.get("/t/wrong-token-wrong-token/info/").status_code == 401
        assert live.anonymous.get("/info/").status_code == 401
    with LiveServer(make_config()) as live:  # off by default
        assert live.anonymous.get(f"/t/{TOKEN}/info/").status_code == 404
