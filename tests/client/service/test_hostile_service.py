"""A hostile test of the site service: bad inputs on every route, upload bombs, corrupt store files,
kill -9 during writes, parallel saves. Each test asserts what must hold: no 500, no crash, no
acknowledged label lost, bounded memory.

The tally of the bad-input barrage is printed (run with -s to see it).
"""

from __future__ import annotations

import functools
import gzip
import io
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import tracemalloc
from pathlib import Path

import httpx
import nibabel as nib
import numpy as np
import pytest
from service_helpers import AUTH, TOKEN, LiveServer

pytestmark = pytest.mark.hostile
HERE = Path(__file__).resolve().parent


def nii_gz(array: np.ndarray) -> bytes:
    return gzip.compress(nib.Nifti1Image(np.asarray(array), np.eye(4)).to_bytes(), compresslevel=1)


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def gzip_stream(prefix: bytes, fill: bytes, size: int) -> bytes:
    """gzip of `prefix` then `size` bytes of `fill`, compressed chunk by chunk (never held whole)."""
    import zlib

    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    out = [compressor.compress(prefix)]
    chunk = fill * (1 << 20)
    for _ in range(size >> 20):
        out.append(compressor.compress(chunk))
    out.append(compressor.flush())
    return b"".join(out)


@functools.lru_cache(maxsize=None)
def nifti_bomb(shape=(1024, 1024, 1024), zeros: int = 0) -> bytes:
    """A .nii.gz whose header declares `shape` (uint8), followed by `zeros` bytes of data."""
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(np.uint8)
    return gzip_stream(header.binaryblock + b"\0" * 4, b"\0", zeros)


def npy_claiming(shape, dtype="<f8") -> bytes:
    """A .npy header that claims `shape` and almost no data after it."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": dtype, "fortran_order": False, "shape": tuple(shape)})
    return buffer.getvalue() + b"\0" * 64


NRRD_GZ_HEADER = b"NRRD0004\ntype: uint8\ndimension: 2\nsizes: 48 48\nencoding: gzip\n\n"


# --------------------------------------------------------------------------------------- the barrage
HOSTILE_VALUES = [True, False, None, "x", "", [], {}, [[]], [1], [1, 2, 3, 4], {"a": 1}, -1, 0, 1.5, 2**40,
                  "../../etc/passwd", "a" * 300, [True, False], ["1", "2"], [[1, 2]] * 3]


def _raw_json_variants() -> list[str]:
    return ['{"foreground": [[' + "9" * 400 + ', 5]]}',
            '{"foreground": [[5, 5]], "client_id": ' + "7" * 5000 + "}",
            '{"foreground": [[NaN, 5]]}', '{"foreground": [[Infinity, 5]]}', '{"foreground": [[-Infinity, 5]]}',
            "[" * 100_000 + "]" * 100_000, '{"foreground": [[1e999, 5]]}', "{not json", '"a string"', "42", "null",
            "[1, 2]", '{"foreground": "[[5,5]]"}', "\xff\xfe", '{"foreground": [[5, 5]], "background": {"x": 1}}']


def bad_requests(rng: random.Random) -> list[tuple[str, str, dict]]:
    """(method, path, httpx kwargs) of distinct bad requests, written and generated."""
    label = nii_gz(np.ones((48, 48), np.uint8))
    out: list[tuple[str, str, dict]] = []
    infer = "/infer/fedpoint"
    for text in _raw_json_variants():
        out.append(("POST", infer, {"params": {"image": "img0"}, "data": {"params": text}}))
        out.append(("PUT", "/datastore/label", {"params": {"image": "img0"}, "data": {"params": text},
                                                "files": {"label": ("l.nii.gz", label)}}))
        out.append(("POST", "/activelearning/random", {"content": text, "headers": {"content-type": "application/json"}}))
        out.append(("POST", "/api/sessions/img0/click", {"content": text, "headers": {"content-type": "application/json"}}))
    written = [
        ("POST", infer, {"params": {"image": "img0"}, "data": {"params": json.dumps({"foreground": [[True, False]]})}}),
        ("POST", infer, {"params": {"image": "img0"}, "data": {"params": json.dumps({"foreground": [["1", "2"]]})}}),
        ("POST", infer, {"params": {"image": "img0"}, "data": {"params": json.dumps({"foreground": [[5, 5, 3]]})}}),
        ("POST", infer, {"params": {"image": "img0"}, "data": {"params": json.dumps({"client_id": ["a"], "foreground": [[5, 5]]})}}),
        ("POST", infer, {"params": {"image": "../img0"}, "data": {"params": "{}"}}),
        ("POST", infer, {"params": {"image": "img0", "output": "dicom_seg"}, "data": {"params": "{}"}}),
        ("POST", infer, {"params": {"image": "img0"}, "data": {"params": "{}"}, "files": {"file": ("x.nii.gz", label)}}),
        ("POST", infer, {"params": {"image": "img0"}, "content": b"\x00" * 100, "headers": {"content-type": "multipart/form-data; boundary=zz"}}),
        ("POST", infer, {"params": {"image": "img0"}, "content": b"garbage", "headers": {"content-type": "multipart/form-data"}}),
        ("PUT", "/datastore/label", {"params": {"image": "img0"}, "data": {"params": json.dumps({"label_info": 5})}, "files": {"label": ("l.nii.gz", label)}}),
        ("PUT", "/datastore/label", {"params": {"image": "img0"}, "data": {"params": json.dumps({"label_info": True})}, "files": {"label": ("l.nii.gz", label)}}),
        ("PUT", "/datastore/label", {"params": {"image": "img0"}, "data": {"params": json.dumps({"label_info": [{"name": "object", "idx": True}]})}, "files": {"label": ("l.nii.gz", label)}}),
        ("PUT", "/datastore/label", {"params": {"image": "img0"}, "data": {"params": json.dumps({"request_id": "../x"})}, "files": {"label": ("l.nii.gz", label)}}),
        ("PUT", "/datastore/label", {"params": {"image": "img0"}, "files": {"label": ("l.nii.gz", nifti_bomb())}}),
        ("PUT", "/datastore/label", {"params": {"image": "img0"}, "files": {"label": ("l.nii.gz", nifti_bomb((48, 48, 1), 256 << 20))}}),
        ("PUT", "/datastore/label", {"params": {"image": "img0"}, "files": {"label": ("l.npy", npy_claiming((200_000, 100_000)))}}),
        ("PUT", "/datastore/label", {"params": {"image": "img0"}, "files": {"label": ("l.npy", npy_claiming((48, 48), "|O"))}}),
        ("PUT", "/datastore/label", {"params": {"image": "img0"}, "files": {"label": ("l.npy", npy_claiming((48, 48)))}}),
        ("PUT", "/datastore/label", {"params": {"image": "img0"}, "files": {"label": ("l.nrrd", b"NRRD0004\ntype: uint8\ndimension: 2\nsizes: 48 48\ndata file: /etc/passwd\nencoding: raw\n\n")}}),
        ("PUT", "/datastore/label", {"params": {"image": "img0"}, "files": {"label": ("l.nrrd", b"NRRD0004\ntype: uint8\ndimension: 2\nsizes: 99999 99999\nencoding: gzip\n\n" + gzip.compress(b"\0" * 1000))}}),
        ("PUT", "/datastore/label", {"params": {"image": "img0"}, "files": {"label": ("l.nrrd", NRRD_GZ_HEADER[:0] + gzip_stream(b"", b"\1", 64 << 20))}}),
        ("PUT", "/datastore/label", {"params": {"image": "img0"}, "files": {"label": ("l.nrrd", NRRD_GZ_HEADER + gzip_stream(b"", b"\1", 64 << 20))}}),
        ("PUT", "/datastore/label", {"params": {"image": "img0"}, "files": {"label": ("l.nrrd", b"NRRD0004\n" + b"x" * 70000)}}),
        ("PUT", "/datastore/label", {"params": {"image": "img0"}, "files": {"label": ("l.png", b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\1\0\0\0\1\0\0\x08\0\0\0\0")}}),
        ("PUT", "/datastore/label", {"params": {"image": "img0"}, "files": {"label": ("l.nii", b"\0" * 100)}}),
        ("PUT", "/datastore/label", {"params": {"image": "img0"}, "files": {"label": ("l.nii.gz", gzip.compress(b"\0" * 2000))}}),
        ("PUT", "/datastore/label", {"params": {"image": "img0"}, "files": {"label": ("l.nii.gz", label[:len(label) // 2])}}),
        ("PUT", "/datastore/label", {"params": {"image": "img0"}, "files": {"label": ("l.nii.gz", nii_gz(np.full((48, 48), -3, np.int16)))}}),
        ("PUT", "/datastore/label", {"params": {"image": "img0"}, "files": {"label": ("l.nii.gz", nii_gz(np.full((48, 48), np.nan, np.float32)))}}),
        ("PUT", "/datastore/label", {"params": {"image": "img0"}, "files": {"label": ("l.nii.gz", nii_gz(np.zeros((48, 48), np.uint8)))}}),
        ("PUT", "/datastore/label", {"params": {"image": "img0"}, "files": {"label": ("l.nii.gz", nii_gz(np.ones((47, 48), np.uint8)))}}),
        ("PUT", "/datastore/label", {"params": {"image": "img0"}, "files": {"label": ("../../l.nii.gz", b"x")}}),
        ("PUT", "/datastore/label", {"params": {"image": "img0"}}),
        ("POST", "/activelearning/random", {"json": {"seed": [1, 2]}}),
        ("POST", "/activelearning/random", {"json": {"seed": {"a": 1}}}),
        ("POST", "/activelearning/uncertain", {"json": {"seed": [1]}}),
        ("POST", "/activelearning/uncertain", {"json": {"seed": True}}),
        ("POST", "/activelearning/first", {"json": [1, 2]}),
        ("POST", "/activelearning/nope", {"json": {}}),
        ("POST", "/train/", {"content": "[" * 50_000, "headers": {"content-type": "application/json"}}),
        ("POST", "/train/other", {"json": {}}),
        ("GET", "/datastore/", {"params": {"output": "everything"}}),
        ("GET", "/datastore/image", {"params": {"image": "/etc/passwd"}}),
        ("GET", "/datastore/image", {"params": {"image": "img0%00"}}),
        ("GET", "/datastore/label", {"params": {"label": "img0", "tag": "other"}}),
        ("GET", "/datastore/label", {"params": {"label": "nope"}}),
        ("GET", "/api/images/" + "9" * 400, {}),
        ("GET", "/api/images/img0/slice/" + "9" * 400, {}),
        ("GET", "/api/images/img0/slice/-1", {}),
        ("GET", "/api/sessions/img0", {"params": {"slice": "9" * 5000}}),
        ("POST", "/api/sessions/img0/click", {"json": {"point": [True, False]}}),
        ("POST", "/api/sessions/img0/click", {"json": {"point": [10**400, 5]}}),
        ("POST", "/api/sessions/img0/click", {"json": {"point": [5, 5], "positive": "yes"}}),
        ("POST", "/api/sessions/img0/click", {"json": {"point": [5, 5], "extra": 1}}),
        ("POST", "/api/sessions/img0/click", {"json": {"point": [5, 5, 2]}}),
        ("POST", "/api/sessions/img0/click", {"json": {"point": [5, 5]}, "headers": {"x-fedpoint-user": "../../root"}}),
        ("POST", "/api/sessions/img0/undo", {"json": {"slice": True}}),
        ("POST", "/api/sessions/img0/undo", {"json": {"slice": 10**30}}),
        ("POST", "/api/sessions/img0/accept", {"json": {"slice": -1}}),
        ("POST", "/api/sessions/img0/accept", {"json": {"request_id": ["a"]}}),
        ("POST", "/api/sessions/nope/discard", {"json": {}}),
        ("DELETE", "/train/", {}),
        ("PUT", "/datastore/", {"files": {"file": ("x.nii.gz", label)}}),
        ("GET", "/session/abc", {}),
    ]
    out.extend(written)
    # generated: a valid body with one field replaced by a hostile value, per route
    templates = [
        ("POST", infer, "form", {"foreground": [[10, 10]], "background": [], "client_id": "u1"}),
        ("PUT", "/datastore/label", "form", {"label_info": [{"name": "object", "idx": 1}], "client_id": "u1"}),
        ("POST", "/activelearning/random", "json", {"seed": 3}),
        ("POST", "/activelearning/uncertain", "json", {"seed": 3}),
        ("POST", "/api/sessions/img1/click", "json", {"point": [10, 10], "positive": True}),
        ("POST", "/api/sessions/img1/undo", "json", {"slice": 0}),
        ("POST", "/train/", "json", {"epochs": 1}),
    ]
    for method, path, kind, body in templates:
        for _ in range(8):
            mutated = json.loads(json.dumps(body))
            key = rng.choice(list(mutated))
            value = rng.choice(HOSTILE_VALUES + [[rng.choice(HOSTILE_VALUES)], [[rng.choice(HOSTILE_VALUES), 5]]])
            mutated[key] = value
            if kind == "form":
                kwargs = {"params": {"image": "img1"}, "data": {"params": json.dumps(mutated)}}
                if method == "PUT":
                    kwargs["files"] = {"label": ("l.nii.gz", label)}
            else:
                kwargs = {"json": mutated}
            out.append((method, path, kwargs))
    return out


def test_barrage_of_bad_requests_gets_no_500(live):
    requests = bad_requests(random.Random(15))
    tally = {"tried": 0, "4xx": 0, "2xx": 0, "500": 0}
    failures = []
    for method, path, kwargs in requests:
        r = live.client.request(method, path, **kwargs)
        tally["tried"] += 1
        bucket = "4xx" if 400 <= r.status_code < 500 or r.status_code == 501 else "2xx" if r.status_code < 300 else "500"
        tally[bucket] += 1
        if r.status_code >= 500 and r.status_code != 501:
            failures.append((method, path, str(kwargs)[:200], r.status_code, r.text[:200]))
        if r.status_code >= 400 and r.headers.get("content-type", "").startswith("application/json"):
            detail = json.dumps(r.json())
            assert str(live.state.config.store) not in detail and str(live.state.config.images) not in detail, detail
    print(f"\nhostile barrage: {tally}")
    assert not failures, failures
    assert tally["tried"] >= 120 and live.anonymous.get("/health").status_code == 200


def test_the_issues_500s_are_clear_422s_naming_the_field(live):
    c = live.client

    def infer(params: str):
        return c.post("/infer/fedpoint", params={"image": "img0", "output": "json"}, data={"params": params})

    r = infer('{"foreground": [[' + "9" * 400 + ", 5]]}")
    assert r.status_code == 422 and "params" in r.json()["detail"] and "digits" in r.json()["detail"]
    r = infer('{"foreground": [[5, 5]], "client_id": ' + "7" * 5000 + "}")
    assert r.status_code == 422 and "digits" in r.json()["detail"]
    r = infer(json.dumps({"foreground": [[True, False]]}))
    assert r.status_code == 422 and "params.foreground.0.0" in r.json()["detail"]
    label = nii_gz(np.ones((48, 48), np.uint8))
    for bad in (5, True):
        r = c.put("/datastore/label", params={"image": "img0"}, data={"params": json.dumps({"label_info": bad})},
                  files={"label": ("l.nii.gz", label)})
        assert r.status_code == 422 and "params.label_info" in r.json()["detail"], r.text
    for strategy in ("random", "uncertain"):
        for seed in ([1, 2], {"a": 1}):
            r = c.post(f"/activelearning/{strategy}", json={"seed": seed})
            assert r.status_code == 422 and "body.seed" in r.json()["detail"], r.text
    assert c.post("/activelearning/random", json={"seed": 4}).status_code == 200


def test_monai_label_2d_points_with_z_0(live):
    c = live.client
    r = c.post("/infer/fedpoint", params={"image": "img0", "output": "json"},
               data={"params": json.dumps({"foreground": [[20, 22, 0]], "background": [[2, 3, 0]]})})
    assert r.status_code == 200, r.text
    session = live.state.sessions.get(("img0", "monailabel", None, "object"))
    assert [c.point for c in session.session.clicks] == [(20, 22), (2, 3)]
    r = c.post("/infer/fedpoint", params={"image": "img0", "output": "json"},
               data={"params": json.dumps({"foreground": [[20, 22, 1]]})})
    assert r.status_code == 422 and "2D image" in r.json()["detail"] and "[x, y, 0]" in r.json()["detail"]
    assert c.post("/api/sessions/img1/click", json={"point": [10, 12, 0]}).status_code == 200


# --------------------------------------------------------------------------------------- bombs
def test_upload_bombs_are_refused_from_their_header_with_bounded_memory(live):
    from fedpoint.client.service.uploads import read_label

    shape = (48, 48)
    bombs = {"nii.gz declares 1024^3": ("l.nii.gz", nifti_bomb()),
             "nii.gz declares the image, inflates to 512 MiB": ("l.nii.gz", nifti_bomb((48, 48, 1), 512 << 20)),
             "npy declares 160 GB": ("l.npy", npy_claiming((200_000, 100_000))),
             "nrrd gzip inflates to 256 MiB": ("l.nrrd", NRRD_GZ_HEADER + gzip_stream(b"", b"\1", 256 << 20))}
    tracemalloc.start()
    try:
        for what, (name, data) in bombs.items():
            assert len(data) < 2 << 20, what  # each is small on the wire
            t0 = time.perf_counter()
            with pytest.raises(ValueError) as err:
                read_label(data, name, shape, max_bytes=64 << 20)
            assert time.perf_counter() - t0 < 5, what
            assert name in str(err.value)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    print(f"\npeak memory decoding {len(bombs)} upload bombs: {peak / 2**20:.2f} MiB")
    assert peak < 16 << 20
    for name, data in bombs.values():
        r = live.client.put("/datastore/label", params={"image": "img0"}, files={"label": (name, data)})
        assert r.status_code == 422, r.text


# --------------------------------------------------------------------------------------- store faults
def _accept_some(live, site, images=("img0", "img1", "img2")) -> None:
    for image_id in images:
        r = live.client.put("/datastore/label", params={"image": image_id},
                            files={"label": ("l.nii.gz", nii_gz(site["masks"][image_id].astype(np.uint8)))})
        assert r.status_code == 200, r.text


def test_corrupt_store_files_do_not_stop_the_site(make_config, site, caplog):
    from typer.testing import CliRunner

    from fedpoint.cli import app

    with LiveServer(make_config(save_adapter_every=1)) as live:
        _accept_some(live, site)
    store = site["store"]
    versions = sorted((store / "adapters").glob("v*"))
    assert len(versions) == 3
    # fault 1: the current version's weights truncated; fault 2: the one before has a broken manifest
    weights = next(versions[2].glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:50])
    (versions[1] / "fedpoint_adapter.json").write_text('{"kind": "norm", "config": {"ki')
    # fault 3: one case's meta.json cut; fault 4: another case's mask.npy cut
    cases = sorted((store / "cache").iterdir())
    (cases[0] / "meta.json").write_text('{"case_id": "img0", "accepted_at": 17')
    mask = cases[1] / "mask.npy"
    mask.write_bytes(mask.read_bytes()[:90])
    # fault 5: an image that cannot be decoded; fault 6: a link to a file outside the images folder
    (site["images"] / "broken.nii.gz").write_bytes(b"\x1f\x8b\x08\x00 not really gzip")
    outside = site["root"] / "secret.npy"
    np.save(outside, np.ones((48, 48), np.float32))
    os.symlink(outside, site["images"] / "leak.npy")

    report = CliRunner().invoke(app, ["site", "check", "--store", str(store)])
    assert report.exit_code == 1, report.output
    for expected in (f"adapters/{versions[2].name}/{weights.name}", f"adapters/{versions[1].name}/fedpoint_adapter.json",
                     f"cache/{cases[0].name}/meta.json", f"cache/{cases[1].name}/mask.npy"):
        assert expected in report.output, report.output
    assert str(store) not in report.output

    with caplog.at_level("WARNING"), LiveServer(make_config()) as live:
        c = live.client
        status = c.get("/api/status").json()
        assert status["adapter"]["saved_version"] == 3  # the pointer still names v3 ...
        log = [e for e in live.state.store.read_log() if e["event"] == "adapter-skipped"]
        assert [e["version"] for e in log] == [3, 2] and weights.name in log[0]["reason"]  # ... but v1 is in use
        assert sorted(q["case"] for q in status["quarantined"]) == sorted([cases[0].name, cases[1].name])
        assert status["cache"]["cases"] == 1
        third = cases[2].name
        assert c.get("/datastore/label", params={"label": third}).status_code == 200
        images = {s["file"]: s["reason"] for s in c.get("/api/images").json()["skipped"]}
        assert "leak.npy" in images and "outside" in images["leak.npy"]
        assert c.get("/datastore/image", params={"image": "leak"}).status_code == 404
        r = c.get("/api/images/broken")
        assert r.status_code == 422 and "broken.nii.gz" in r.json()["detail"] and str(site["images"]) not in r.text
        for _ in range(3):
            r = c.post("/activelearning/uncertain", json={})
            assert r.status_code == 200 and r.json().get("id") not in ("broken", "leak"), r.text
        assert "broken" not in {c.post("/activelearning/random", json={"seed": s}).json().get("id") for s in range(6)}
        _accept_some(live, site, ("img0",))  # the site keeps accepting and saving versions
        assert live.state.store.usable_adapter().name == "v0004"
    after = CliRunner().invoke(app, ["site", "check", "--store", str(store)])
    assert "QUARANTINED" in after.output and cases[1].name in after.output


def test_corrupt_current_pointer_falls_back_to_the_newest_valid_version(make_config, site):
    with LiveServer(make_config(save_adapter_every=1)) as live:
        _accept_some(live, site, ("img0", "img1"))
    (site["store"] / "adapters" / "current.json").write_text('{"vers')
    with LiveServer(make_config()) as live:
        assert live.client.get("/api/status").status_code == 200
        assert live.state.store.usable_adapter().name == "v0002"
        assert any(e.get("file") == "adapters/current.json" for e in live.state.store.read_log())


GROUP = "5f1e2d3c4b5a69788796a5b4c3d2e1f0"  # a group id as write_cases makes them (uuid4 hex)


def test_an_interrupted_multi_slice_save_is_rolled_back(make_config, site):
    from fedpoint.client.service.journal import JOURNAL_PREFIX
    from fedpoint.client.site_store import SiteStore
    from fedpoint.shared.fileio import write_json_atomic

    store = SiteStore(site["store"])
    for z in range(3):  # what a kill -9 after the second of four renames leaves
        store.add_case(f"vol.z{z:04d}", np.zeros((1, 4, 4), np.float32), np.ones((4, 4), bool),
                       {"image": "vol", "slice": z, "group": GROUP if z else None})
    write_json_atomic(store.root / "cache" / f"{JOURNAL_PREFIX}{GROUP}.json",
                      {"group": GROUP, "cases": ["vol.z0001", "vol.z0002", "vol.z0003", "vol.z0004"]})
    with LiveServer(make_config()) as live:
        assert live.state.store.case_ids() == ["vol.z0000"]  # the finished single accept stays
        assert not list((site["store"] / "cache").glob(f"{JOURNAL_PREFIX}*"))


# --------------------------------------------------------------------------------------- idempotency
def test_retried_saves_and_accepts_do_not_duplicate(live, site):
    c = live.client
    label = nii_gz(site["masks"]["img0"].astype(np.uint8))
    first = c.put("/datastore/label", params={"image": "img0"}, files={"label": ("l.nii.gz", label)}).json()
    again = c.put("/datastore/label", params={"image": "img0"}, files={"label": ("l.nii.gz", label)}).json()
    assert again["cases"] == first["cases"] and again["duplicate"] is True
    params = {"params": json.dumps({"request_id": "req-1", "client_id": "slicer"})}
    keyed = c.put("/datastore/label", params={"image": "img1"}, data=params,
                  files={"label": ("l.nii.gz", nii_gz(site["masks"]["img1"].astype(np.uint8)))}).json()
    retried = c.put("/datastore/label", params={"image": "img1"}, data=params,
                    files={"label": ("l.nii.gz", nii_gz(site["masks"]["img1"].astype(np.uint8)))}).json()
    assert retried["cases"] == keyed["cases"] and retried["duplicate"]
    c.post("/api/sessions/img2/click", json={"point": [20, 20]})
    accepted = c.post("/api/sessions/img2/accept", json={"request_id": "web-7"}).json()
    retry = c.post("/api/sessions/img2/accept", json={"request_id": "web-7"}).json()
    assert retry["case"] == accepted["case"] and retry["duplicate"]
    assert live.state.desk.cache_size() == 3 == len(live.state.store.case_ids())


def test_parallel_saves_without_client_id_are_all_kept_or_clearly_refused(live, site):
    labels = []
    for i in range(8):
        mask = np.zeros((40, 40, 8), np.uint8)
        mask[5 + i:20 + i, 5:25, 2:4] = 1
        labels.append(nii_gz(mask))
    replies: list[httpx.Response] = []

    def save(data):
        with httpx.Client(base_url=live.url, headers=AUTH, timeout=120) as client:
            replies.append(client.put("/datastore/label", params={"image": "vol"}, files={"label": ("l.nii.gz", data)}))

    threads = [threading.Thread(target=save, args=(d,)) for d in labels]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=180)
    assert len(replies) == 8
    codes = sorted(r.status_code for r in replies)
    assert set(codes) <= {200, 409}, [r.text for r in replies]
    assert all("already accepted" not in r.text for r in replies)
    saved = [name for r in replies if r.status_code == 200 for name in r.json()["cases"]]
    assert len(saved) == 2 * codes.count(200) == len(live.state.store.case_ids())


# --------------------------------------------------------------------------------------- kill -9
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rss_mib(pid: int) -> dict[str, float]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("VmRSS", "VmHWM")):
            key, value = line.split(":")
            fields[key] = int(value.split()[0]) / 1024
    return fields


class Child:
    """The real service in a child process (uvicorn on loopback), to kill -9."""

    def __init__(self, config: dict):
        self.port = _free_port()
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
        self.proc = subprocess.Popen([sys.executable, str(HERE / "hostile_child.py"), json.dumps({**config, "port": self.port})],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 90
        while True:
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.proc.kill()
                raise RuntimeError("the child service did not start")
            time.sleep(0.2)
        self.client = httpx.Client(base_url=self.url, headers=AUTH, timeout=60)

    def kill9(self) -> None:
        self.client.close()
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)


@pytest.mark.slow
def test_kill_9_during_saves_and_accepts_loses_no_acknowledged_label(site, tiny_base_2d):
    from fedpoint.client.site_store import SiteStore

    config = {"site": "kill-site", "modality": "MR", "store": str(site["store"]), "images": str(site["images"]),
              "base": str(tiny_base_2d), "token": TOKEN, "mode": "mid+post", "adaptation": {"post_clicks": 2}}
    acknowledged: list[str] = []
    rng = random.Random(9)
    memory = None
    for round_ in range(3):
        child = Child(config)
        try:
            if round_ == 0:  # the upload bomb against the real process: resident memory stays put
                before = _rss_mib(child.proc.pid)
                for _ in range(2):
                    r = child.client.put("/datastore/label", params={"image": "img0"},
                                         files={"label": ("l.nii.gz", nifti_bomb((40, 40, 1024)))})
                    assert r.status_code == 422
                    r = child.client.put("/datastore/label", params={"image": "vol"},
                                         files={"label": ("l.nii.gz", nifti_bomb((40, 40, 8), 512 << 20))})
                    assert r.status_code == 422
                memory = (before, _rss_mib(child.proc.pid))
            mask = np.zeros((40, 40, 8), np.uint8)
            mask[8:24, 10:26, 1:5] = 1 + round_ % 2
            mask[8 + round_:20, 10:20, 1:5] = 1
            done = threading.Event()
            reply: list[httpx.Response] = []

            def save():
                try:
                    reply.append(child.client.put("/datastore/label", params={"image": "vol"},
                                                  files={"label": ("l.nii.gz", nii_gz(mask))}))
                except httpx.HTTPError:
                    pass
                done.set()

            def accept():
                try:
                    reply.append(child.client.post("/api/sessions/img1/accept", json={}))
                except httpx.HTTPError:
                    pass
                done.set()

            if round_ == 2:  # a web accept, killed during it or just after its reply
                child.client.post("/api/sessions/img1/click", json={"point": [20, 20]})
                threading.Thread(target=accept).start()
            else:
                threading.Thread(target=save).start()
            time.sleep(rng.uniform(0.0, 0.4))
            child.kill9()
            done.wait(10)
            if reply and reply[0].status_code == 200:
                body = reply[0].json()
                acknowledged.extend(body.get("cases") or [body["case"]])
        finally:
            if child.proc.poll() is None:
                child.proc.kill()
    child = Child(config)  # the restart rolls back any group cut in the middle
    try:
        assert child.client.get("/api/status").status_code == 200
        store = SiteStore(site["store"])
        present = store.case_ids()
        assert set(acknowledged) <= set(present), (acknowledged, present)
        groups: dict[str, list[int]] = {}
        for name in present:
            meta = json.loads((site["store"] / "cache" / name / "meta.json").read_text())
            if meta.get("group"):
                groups.setdefault(meta["group"], []).append(meta["group_size"])
        assert all(len(sizes) == sizes[0] for sizes in groups.values()), groups  # whole or not at all
    finally:
        child.kill9()
    before, after = memory
    print(f"\nchild service resident memory: {before['VmRSS']:.0f} MiB before 4 upload bombs, "
          f"{after['VmRSS']:.0f} MiB after, peak {after['VmHWM']:.0f} MiB")
    assert after["VmHWM"] - before["VmHWM"] < 200


_SWAPPER = r'''
import sys, torch
from fedpoint.client.site_store import SiteStore
from fedpoint.shared.adapters import make_adapter
from fedpoint.shared.model import base_fingerprint, load_base
net, _, _ = load_base(sys.argv[2])
adapter = make_adapter(net, "norm", base_fingerprint(net))
store = SiteStore(sys.argv[1])
print("ready", flush=True)
step = 0
while True:  # what an accepted episode does: write a version, then make it current
    step += 1
    with torch.no_grad():
        for p in adapter.trainable_parameters():
            p.add_(0.001)
    path = store.save_adapter(adapter, {"source": "episode", "step": step}, make_current=False,
                              optimizer={"state": {}, "param_groups": []})
    store.set_current(int(path.name[1:]), "episode accepted")
'''


def test_kill_9_during_episode_swaps_leaves_a_loadable_adapter(tmp_path, tiny_base_2d):
    """Three kill -9s at random moments of a loop that writes adapter versions and swaps them in:
    after each, the store opens, `usable_adapter` names a version that loads, and `site check`
    finds nothing it cannot explain."""
    import subprocess
    import sys

    from fedpoint.client.service.check import check_store
    from fedpoint.client.site_store import SiteStore
    from fedpoint.shared.adapters import load_adapter
    from fedpoint.shared.model import base_fingerprint, load_base

    from fedpoint.shared.adapters import make_adapter

    root = tmp_path / "store"
    net, _, _ = load_base(tiny_base_2d)
    SiteStore(root).save_adapter(make_adapter(net, "norm", base_fingerprint(net)), {"source": "first"})  # a current one
    rng = np.random.default_rng(9)
    for round_ in range(3):
        child = subprocess.Popen([sys.executable, "-c", _SWAPPER, str(root), str(tiny_base_2d)],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            assert child.stdout.readline().strip() == b"ready", child.stderr.read().decode()[-2000:]
            time.sleep(float(rng.uniform(0.2, 1.2)))
        finally:
            child.kill()  # SIGKILL
            child.wait(timeout=30)
        store = SiteStore(root)
        assert store.adapter_versions(), "some version should have landed"
        usable = store.usable_adapter()
        assert usable is not None, f"round {round_}: no usable adapter after kill -9"
        load_adapter(net, usable, base_fingerprint(net))  # raises if the version is cut
        report = check_store(root)
        assert report.adapter_in_use is not None and usable.name in report.adapter_in_use, report
        assert not [f for f in report.errors if f.file.startswith("adapters/current")], report


def test_a_corrupt_or_misdirected_bank_is_refused_naming_the_file(live, site):
    store = live.state.store
    live.state.banks.stop()  # reviews only on request here: the poll must not see the bank before it is cut
    folder = store.receive_bank("general", 7, live.state.engine.adapter)
    weights = next(folder.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:40])  # a bank cut in transfer
    checked = live.client.post("/api/banks/check").json()
    review = checked["review"]
    assert review["accepted"] is False and "banks/general/v0007" in review["reason"]
    assert str(site["root"]) not in json.dumps(checked) and str(site["root"].resolve()) not in json.dumps(checked)
    (site["store"] / "banks" / "latest.json").write_text('{"path": "../../etc"}')  # points outside the store
    assert live.client.post("/api/banks/check").status_code == 200
    (site["store"] / "banks" / "latest.json").write_text('{"pa')  # cut pointer
    assert live.client.post("/api/banks/check").status_code == 200
    assert live.client.post("/api/sessions/img0/click", json={"point": [24, 24]}).status_code == 200
    logged = [e for e in store.read_log() if e["event"] == "bank-skipped"]
    assert len(logged) >= 2 and all(e["file"] == "banks/latest.json" for e in logged)
    for _ in range(3):  # the watcher polls: the same broken pointer is logged once, not on every poll
        live.client.post("/api/banks/check")
    assert len([e for e in store.read_log() if e["event"] == "bank-skipped"]) == len(logged)
