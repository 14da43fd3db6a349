"""The hostile probe's classes, one test per root cause (issue 28): files outside the images, bombs,
store states that delete data, a silent fresh adapter, `site check` blind spots, 5xx causes,
the site token acting as a named user, one user evicting another, and a misbehaving PACS.

Each test is named for the root cause it pins down; each failed on the main branch before its fix.
"""

from __future__ import annotations

import gzip
import io
import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from service_helpers import AUTH, LiveServer

pytestmark = pytest.mark.hostile
HERE = Path(__file__).resolve().parent
SECRET = b"fedpoint-secret-token-0123456789"  # 32 bytes: an 8 x 4 uint8 image if a reader follows a header to it


def nrrd_detached(target: str, sizes: str = "8 4") -> bytes:
    return f"NRRD0004\ntype: uint8\ndimension: 2\nsizes: {sizes}\nencoding: raw\ndata file: {target}\n\n".encode()


def nii_gz(array: np.ndarray, affine=None) -> bytes:
    return gzip.compress(nib.Nifti1Image(np.asarray(array), np.eye(4) if affine is None else affine).to_bytes(),
                         compresslevel=1)


def gzip_stream(prefix: bytes, size: int) -> bytes:
    import zlib

    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    out = [compressor.compress(prefix)]
    chunk = b"\1" * (1 << 20)
    for _ in range(size >> 20):
        out.append(compressor.compress(chunk))
    out.append(compressor.flush())
    return b"".join(out)


def nifti_bomb(shape) -> bytes:
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(np.uint8)
    return gzip.compress(header.binaryblock + b"\0" * 4 + b"\0" * (256 << 10))


# ------------------------------------------------------------------------------ 1. data outside the file
def test_detached_nrrd_data_is_refused_by_the_shared_header_check(make_config, site):
    """Root cause: the images folder decoded NRRD files with a reader that follows `data file:`."""
    from fedpoint.client.service.images import ImageError, ImageFolder
    from fedpoint.client.service.uploads import read_label
    from fedpoint.data.readers import read_image
    from fedpoint.data.types import DataError

    (site["root"] / "site-token").write_bytes(SECRET)
    images = site["images"]
    (images / "leak-abs.nrrd").write_bytes(nrrd_detached(str(site["root"] / "site-token")))
    (images / "leak-rel.nrrd").write_bytes(nrrd_detached("../site-token"))
    (images / "leak-crlf.nrrd").write_bytes(nrrd_detached("../site-token").replace(b"\n", b"\r\n"))
    folder = ImageFolder(images, "MR", 1)
    for image_id in ("leak-abs", "leak-rel", "leak-crlf"):
        with pytest.raises(ImageError, match="detached data file"):
            folder.load(image_id)
        with pytest.raises(DataError, match="detached data file"):
            read_image(images / f"{image_id}.nrrd")
    with pytest.raises(ImageError, match="detached data file"):
        read_label(nrrd_detached("../site-token"), "l.nrrd", (8, 4))
    with LiveServer(make_config()) as live:
        for image_id in ("leak-abs", "leak-rel"):
            for path in (f"/api/images/{image_id}", f"/api/images/{image_id}/slice/0"):
                r = live.client.get(path)
                assert r.status_code == 422 and "detached" in r.json()["detail"], r.text
                assert SECRET not in r.content
            r = live.client.get("/datastore/image", params={"image": image_id})
            assert r.status_code == 422 and SECRET not in r.content
        assert "site-token" not in json.dumps(live.client.get("/api/status").json()).replace("../site-token", "")


# ------------------------------------------------------------------------------ 2. bombs
def _dicom_bombs(images: Path) -> tuple[str, Path]:
    """A real CT series, a series whose header declares 60000 x 60000 pixels, a deflated one, and a
    SEG upload declaring 4096 frames of 4096 x 4096; returns (the real series' id, the SEG's file)."""
    import pydicom
    from pydicom.uid import DeflatedExplicitVRLittleEndian
    from test_dicomweb import AXIAL, ct_volume, write_ct_series

    from fedpoint.data.dicom import build_seg, read_dicom_folder

    write_ct_series(images / "ct", ct_volume((24, 24, 4)), AXIAL)
    write_ct_series(images / "huge", ct_volume((24, 24, 2)), AXIAL)
    for path in (images / "huge").iterdir():
        ds = pydicom.dcmread(path)
        ds.Rows = ds.Columns = 60000
        ds.save_as(path)
    write_ct_series(images / "deflated", ct_volume((24, 24, 2)), AXIAL)
    for path in (images / "deflated").iterdir():
        ds = pydicom.dcmread(path)
        ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
        ds.save_as(path, enforce_file_format=True)
    series = read_dicom_folder(images / "ct")
    seg = build_seg(series, np.ones(series.array.shape, np.uint8), ["object"], "site", 1, "test")
    seg.NumberOfFrames, seg.Rows, seg.Columns = 4096, 4096, 4096
    buffer = io.BytesIO()
    seg.save_as(buffer)
    seg_file = images.parent / "seg-bomb.dcm"
    seg_file.write_bytes(buffer.getvalue())
    return "ct", seg_file


def test_every_decoder_is_bounded_by_its_declared_size_before_it_inflates(site):
    """Root cause: NIfTI, NRRD, DICOM and DICOM-SEG were inflated whole before any check. Measured in
    a fresh process: its peak RSS under each bomb stays below 1.5x its idle peak."""
    images = site["images"]
    (images / "nii-declares-4g.nii.gz").write_bytes(nifti_bomb((1024, 1024, 1024)))
    (images / "nii-declares-512m.nii.gz").write_bytes(nifti_bomb((1024, 1024, 128)))
    nrrd = b"NRRD0004\ntype: uint8\ndimension: 2\nsizes: 48 48\nencoding: gzip\n\n"
    (images / "nrrd-inflates-256m.nrrd").write_bytes(nrrd + gzip_stream(b"", 256 << 20))
    (images / "nrrd-declares-1t.nrrd").write_bytes(nrrd.replace(b"48 48", b"1048576 1048576") + gzip.compress(b"\0"))
    series_id, seg_file = _dicom_bombs(images)
    bombs = ["nii-declares-4g", "nii-declares-512m", "nrrd-inflates-256m", "nrrd-declares-1t", "huge", "deflated"]
    run = subprocess.run([sys.executable, str(HERE / "bomb_child.py"), str(images), series_id, str(seg_file), *bombs],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout.strip().splitlines()[-1])
    idle = report["idle_mib"]
    print(f"\nbombs: idle peak {idle:.0f} MiB; " + ", ".join(f"{k} {v['peak_mib']:.0f} MiB"
                                                           for k, v in report["bombs"].items()))
    expected = {"nii-declares-4g": "declares shape", "nii-declares-512m": "declares shape",
                "nrrd-inflates-256m": "inflates to more", "nrrd-declares-1t": "declares shape",
                "huge": "60000 x 60000", "deflated": "deflated", "seg": "frames are 4096 x 4096"}
    for bomb, words in expected.items():
        answer = report["bombs"][bomb]
        assert words in answer["answer"], (bomb, answer)
        assert answer["peak_mib"] < 1.5 * idle, (bomb, answer, idle)


# ------------------------------------------------------------------------------ 3. the journal
def _store_with_cases(root: Path, n: int = 3):
    from fedpoint.client.site_store import SiteStore

    store = SiteStore(root)
    for i in range(n):
        store.add_case(f"case{i}", np.zeros((1, 8, 8), np.float32), np.ones((8, 8), bool), {"image": f"case{i}"})
    (root / "adapters" / "v0001").mkdir()
    (root / "adapters" / "v0001" / "weights.safetensors").write_bytes(b"x")
    return store


def test_a_journal_not_of_our_making_deletes_nothing(tmp_path):
    """Root cause: recovery trusted any `.group-*.json` and removed whatever names it held."""
    from fedpoint.client.service.check import check_store
    from fedpoint.client.service.journal import recover

    store = _store_with_cases(tmp_path / "store")
    cache = store.root / "cache"
    hostile = {"a" * 32: {"group": "a" * 32, "cases": [""]},
               "b" * 32: {"group": "b" * 32, "cases": ["../adapters"]},
               "c" * 32: {"group": "c" * 32, "cases": ["."]},
               "d" * 32: {"group": "other", "cases": ["case0"]},
               "not-hex": {"group": "not-hex", "cases": ["case1"]},
               "e" * 32: {"group": "e" * 32, "cases": ["case2"]}}  # ours in form, but case2 is not of its group
    for group, body in hostile.items():
        (cache / f".group-{group}.json").write_text(json.dumps(body))
    report = check_store(store.root)
    flagged = {f.file for f in report.errors}
    assert {f"cache/.group-{g}.json" for g in ("a" * 32, "b" * 32, "c" * 32, "d" * 32, "not-hex")} <= flagged
    assert recover(store) == []
    assert sorted(p.name for p in cache.iterdir() if not p.name.startswith(".")) == ["case0", "case1", "case2"]
    assert (store.root / "adapters" / "v0001" / "weights.safetensors").exists()
    # a journal of our own making still rolls its group back
    group = "f" * 32
    meta = json.loads((cache / "case1" / "meta.json").read_text())
    (cache / "case1" / "meta.json").write_text(json.dumps({**meta, "group": group}))
    (cache / f".group-{group}.json").write_text(json.dumps({"group": group, "cases": ["case1"]}))
    assert recover(store) == ["case1"]


# ------------------------------------------------------------------------------ 4. current.json
def _adapter_store(root: Path, tiny_base_2d, versions: int = 3):
    from fedpoint.client.site_store import SiteStore
    from fedpoint.shared.adapters import make_adapter
    from fedpoint.shared.config import AdapterConfig
    from fedpoint.shared.model import load_base

    net, _, _ = load_base(str(tiny_base_2d), "cpu")
    adapter = make_adapter(net, AdapterConfig())
    store = SiteStore(root)
    for _ in range(versions):
        store.save_adapter(adapter, {"source": "test"})
    return store, adapter


@pytest.mark.parametrize("damage", ["deleted", "negative", "folder", "text", "unknown", "bool"])
def test_a_damaged_current_pointer_falls_back_to_the_newest_valid_version(tmp_path, tiny_base_2d, damage):
    """Root cause: a missing or negative `current.json` meant 'no version', so a fresh adapter."""
    import shutil

    from fedpoint.client.service.check import check_store

    store, adapter = _adapter_store(tmp_path / "store", tiny_base_2d)
    store.save_adapter(adapter, {"source": "client-app"}, make_current=False)  # v4: never made current
    pointer = store.root / "adapters" / "current.json"
    pointer.unlink()
    if damage == "negative":
        pointer.write_text('{"version": -3}')
    elif damage == "folder":
        pointer.mkdir()
    elif damage == "text":
        pointer.write_text('{"version": "v3"')
    elif damage == "unknown":
        pointer.write_text('{"version": 99}')
    elif damage == "bool":
        pointer.write_text('{"version": true}')
    assert store.usable_adapter().name == "v0003"  # the last the log records as current, not v4, never none
    report = check_store(store.root)
    assert report.adapter_in_use == "v0003"
    assert any(f.file == "adapters/current.json" for f in report.errors), report.findings
    if damage == "folder":
        shutil.rmtree(pointer)
    (store.root / "log.jsonl").unlink()  # without the log: the newest valid version on disk
    assert store.usable_adapter().name == "v0004"


# ------------------------------------------------------------------------------ 5. what `site check` reads
def test_site_check_reads_every_file_the_service_reads_and_the_service_still_starts(make_config, site):
    """Root cause: `site check` never read users.json or the audit log, passed log lines that stop the
    service, and crashed on a crafted DICOM folder; the service parsed those files without a guard."""
    from typer.testing import CliRunner

    from fedpoint.cli import app
    from fedpoint.client.site_store import SiteStore
    from fedpoint.client.service.users import TOKEN_PREFIX
    from test_dicomweb import AXIAL, ct_volume, write_ct_series

    store_root = site["store"]
    SiteStore(store_root).log("bank-review", path="banks/b/v0001")
    toml = site["root"] / "site.toml"
    toml.write_text(f'site = "s"\nmodality = "CT"\nstore = "{store_root}"\nimages = "{site["images"]}"\n'
                    f'token = "{"t" * 20}"\n')
    runner = CliRunner()

    def check() -> tuple[int, str]:
        result = runner.invoke(app, ["site", "check", "--config", str(toml)])
        assert result.exception is None or isinstance(result.exception, SystemExit), result.output
        return result.exit_code, result.output

    assert check()[0] == 0
    damages = {
        "log.jsonl": [b"5\n", b"null\n", b'{"event": "x"}\n\xff\xfe\n'],
        "users.json": [b'{"users": {"alice": {"name": "alice", "digest": 5, "created": "yesterday"}}}',
                       b'{"users": {"alice": \xff}}', b'{"users": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"],
        "splits.json": [b'{"train": [1, 2', b'{"train": "case0"}'],
        "audit.jsonl": [b'{"user": "a"}\n7\n{"user": "b"}\n'],
    }
    log = (store_root / "log.jsonl").read_bytes()
    for name, variants in damages.items():
        for content in variants:
            path = store_root / name
            path.write_bytes(log + content if name == "log.jsonl" else content)
            code, output = check()
            assert code == 1 and name in output, (name, content[:40], output)
            with LiveServer(make_config()) as live:  # starts, and the damage gives no 500
                for r in (live.client.get("/api/status"), live.client.post("/api/sessions/img0/click", json={"point": [5, 5]}),
                          live.anonymous.get("/api/status", headers={"Authorization": f"Bearer {TOKEN_PREFIX}{'x' * 40}"}),
                          live.client.post("/train/", json={})):
                    assert r.status_code < 500, (name, content[:40], r.status_code, r.text)
            path.unlink()
    # a crafted DICOM folder: a tag of the wrong type; the check reports it, the service answers 422
    write_ct_series(site["images"] / "crafted", ct_volume((24, 24, 2)), AXIAL)
    import pydicom

    for path in (site["images"] / "crafted").iterdir():
        ds = pydicom.dcmread(path)
        del ds[0x00280030]
        ds.add_new(0x00280030, "LO", "abc")  # PixelSpacing as text
        ds.save_as(path)
    code, output = check()
    assert code == 1 and "images/crafted" in output and "Traceback" not in output, output
    with LiveServer(make_config()) as live:
        r = live.client.get("/api/images/crafted")
        assert r.status_code == 422 and "crafted" in r.json()["detail"], r.text


# ------------------------------------------------------------------------------ 6. 5xx causes
def test_failures_after_a_side_effect_answer_what_happened_and_retries_are_idempotent(make_config, site):
    """Root cause: an accept wrote its case, then an unwritable audit log, a damaged splits.json or a
    folder in place of current.json turned the reply into a 500, and the client's retry got a 404."""
    import shutil

    store = site["store"]
    with LiveServer(make_config(save_adapter_every=1)) as live:
        c = live.client
        assert c.post("/api/sessions/img0/click", json={"point": [24, 24]}).status_code == 200
        (store / "audit.jsonl").unlink(missing_ok=True)
        (store / "audit.jsonl").mkdir()  # unwritable, even for root
        (store / "adapters" / "current.json").unlink(missing_ok=True)
        (store / "adapters" / "current.json").mkdir()
        (store / "splits.json").write_text('{"train": [')
        r = c.post("/api/sessions/img0/click", json={"point": [20, 20]})
        assert r.status_code == 200 and "audit log" in r.json()["after_effects"][0], r.text
        r = c.post("/api/sessions/img0/accept", json={"request_id": "req-1"})
        assert r.status_code == 200, r.text
        effects = " ".join(r.json()["after_effects"])
        assert "the case is stored" in effects and "audit log" in effects and "adapter version" in effects
        case = r.json()["case"]
        assert (store / "cache" / case).is_dir()
        retry = c.post("/api/sessions/img0/accept", json={"request_id": "req-1"})
        assert retry.status_code == 200 and retry.json()["duplicate"] is True and retry.json()["case"] == case
        r = c.post("/train/", json={})
        assert r.status_code == 409 and "splits.json" in r.json()["detail"], r.text
        shutil.rmtree(store / "audit.jsonl")
        shutil.rmtree(store / "adapters" / "current.json")


def test_inputs_that_gave_500s_get_a_clear_4xx(make_config, site):
    """Root causes: images too small for the model, the `uncertain` choice failing for everyone on one
    such image, an RGB NIfTI label, and DICOM-SEGs with frames of the wrong size or no pixel data."""
    from test_dicomweb import AXIAL, ct_volume, write_ct_series

    from fedpoint.data.dicom import build_seg, read_dicom_folder

    np.save(site["images"] / "tiny.npy", np.ones((2, 2), np.float32))
    write_ct_series(site["images"] / "ct", ct_volume((24, 24, 3)), AXIAL)
    series = read_dicom_folder(site["images"] / "ct")
    with LiveServer(make_config()) as live:
        c = live.client
        r = c.post("/api/sessions/tiny/click", json={"point": [1, 1]})
        assert r.status_code == 422 and "at least 8" in r.json()["detail"], r.text
        for _ in range(2):
            r = c.post("/activelearning/uncertain", json={"seed": 1})
            assert r.status_code == 200 and r.json().get("id") != "tiny", r.text
        rgb = nib.Nifti1Image(np.zeros((48, 48), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")]), np.eye(4))
        r = c.put("/datastore/label", params={"image": "img0"},
                  files={"label": ("l.nii.gz", gzip.compress(rgb.to_bytes()))})
        assert r.status_code == 422, r.text
        good = build_seg(series, np.ones(series.array.shape, np.uint8), ["object"], "s", 1, "t")
        for spoil, words in ((lambda ds: setattr(ds, "Rows", 23), "frames are 23 x 24"),
                             (lambda ds: delattr(ds, "PixelData"), "no pixel data"),
                             (lambda ds: setattr(ds, "NumberOfFrames", 999), "declares 999 frames")):
            seg = build_seg(series, np.ones(series.array.shape, np.uint8), ["object"], "s", 1, "t")
            spoil(seg)
            buffer = io.BytesIO()
            seg.save_as(buffer)
            r = c.put("/datastore/label", params={"image": "ct"}, files={"label": ("seg.dcm", buffer.getvalue())})
            assert r.status_code == 422 and words in r.json()["detail"], r.text
        buffer = io.BytesIO()
        good.save_as(buffer)
        r = c.put("/datastore/label", params={"image": "ct"}, files={"label": ("seg.dcm", buffer.getvalue())})
        assert r.status_code == 200, r.text


# ------------------------------------------------------------------------------ 7. the site token
def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def test_the_site_token_never_acts_as_a_named_user(make_config, site):
    """Root cause: the site token took any typed name, named users' included, and the audit log could
    not tell it from them; `allow_shared_token` stayed on after named users were added."""
    from fedpoint.client.service.users import AuditLog, UserRegistry

    registry = UserRegistry(site["store"] / "users.json")
    tokens = {name: registry.add(name) for name in ("alice", "dave")}
    registry.revoke("dave")
    with LiveServer(make_config()) as live:  # users.json exists: the site token is off by default
        r = live.client.get("/api/status")
        assert r.status_code == 401 and "named users" in r.json()["detail"]
        assert live.anonymous.post("/auth/token", data={"username": "carol", "password": live.client.headers["authorization"][7:]}).status_code == 401
    with LiveServer(make_config(allow_shared_token=True)) as live:
        c = live.client
        assert c.post("/api/sessions/img0/click", json={"point": [24, 24]},
                      headers={"Authorization": f"Bearer {tokens['alice']}"}).status_code == 200
        for name in ("alice", "dave"):
            r = c.get(f"/api/sessions/img0", headers={"X-Fedpoint-User": name})
            assert r.status_code == 403 and "named user" in r.json()["detail"], r.text
            r = c.post("/api/sessions/img0/accept", json={}, headers={"X-Fedpoint-User": name})
            assert r.status_code == 403
            r = c.post("/infer/fedpoint", params={"image": "img0", "output": "json"},
                       data={"params": json.dumps({"foreground": [[5, 5]], "client_id": name})})
            assert r.status_code == 403
            site_token = c.headers["authorization"][7:]
            assert live.anonymous.post("/auth/token", data={"username": name, "password": site_token}).status_code == 401
        assert live.state.sessions.get(("img0", "alice", None, "object")).session.clicks  # alice's click, untouched
        assert c.post("/api/sessions/img1/click", json={"point": [24, 24]}, headers={"X-Fedpoint-User": "carol"}).status_code == 200
    audit = AuditLog(site["store"] / "audit.jsonl").read()
    clicks = {(e["user"], e.get("token")) for e in audit if e["action"] == "click"}
    assert clicks == {("alice", None), ("carol", "site")}


# ------------------------------------------------------------------------------ 8. eviction, bodies
def test_one_users_many_sessions_never_evict_anothers_unsaved_work(make_config, site):
    """Root cause: past `max_sessions` the oldest session went, whoever's it was; and JSON bodies were
    bounded only by the upload limit, then parsed on the event loop."""
    with LiveServer(make_config(max_sessions=4, allow_shared_token=True)) as live:
        c = live.client
        assert c.post("/api/sessions/img0/click", json={"point": [24, 24]}, headers={"X-Fedpoint-User": "alice"}).status_code == 200
        for z in range(8):
            r = c.post("/api/sessions/vol/click", json={"point": [20, 20, z]}, headers={"X-Fedpoint-User": "bob"})
            assert r.status_code == 200, r.text
        assert live.state.sessions.get(("img0", "alice", None, "object")) is not None
        assert len(live.state.sessions) == 4
        big = b'{"point": [5, 5], "pad": "' + b"x" * (60 << 20) + b'"}'
        r = c.post("/api/sessions/img0/click", content=big, headers={"content-type": "application/json"})
        assert r.status_code == 413 and "JSON body" in r.json()["detail"]
        assert c.head("/health").status_code == 200 and c.head("/api/status").status_code == 200


# ------------------------------------------------------------------------------ 9. a misbehaving PACS
class MisbehavingPacs:
    """A DICOMweb root on loopback that lists one series and answers WADO as `mode` says: `other`
    (instances of another series), `bomb` (a gzip QIDO reply inflating to 64 MiB), `trickle` (a byte
    every 0.2 s, never finishing), `slow` (WADO after 3 s)."""

    def __init__(self, mode: str, study: str, series: str, instances: list[bytes]):
        import http.server
        import threading

        self.mode, self.stop = mode, threading.Event()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                if self.path.startswith("/dicom-web/series"):
                    return outer.qido(self, study, series)
                return outer.wado(self, instances)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/dicom-web"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.server.shutdown()
        self.server.server_close()

    def qido(self, handler, study, series):
        import time

        if "offset=0" not in handler.path:
            body = b"[]"
        else:
            body = json.dumps([{"0020000D": {"vr": "UI", "Value": [study]}, "0020000E": {"vr": "UI", "Value": [series]},
                                "00080060": {"vr": "CS", "Value": ["CT"]}}]).encode()
        if self.mode == "trickle":
            handler.send_response(200)
            handler.send_header("Content-Type", "application/dicom+json")
            handler.end_headers()
            while not self.stop.is_set():
                handler.wfile.write(b" ")
                handler.wfile.flush()
                time.sleep(0.2)
            return
        if self.mode == "bomb":
            body = gzip_stream(b"[" + b" " * 16, 64 << 20)
        handler.send_response(200)
        handler.send_header("Content-Type", "application/dicom+json")
        if self.mode == "bomb":
            handler.send_header("Content-Encoding", "gzip")
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    def wado(self, handler, instances):
        import time

        if self.mode == "slow":
            self.stop.wait(3)
        body = b"".join(b"--xyz\r\nContent-Type: application/dicom\r\n\r\n" + part + b"\r\n" for part in instances)
        body += b"--xyz--\r\n"
        handler.send_response(200)
        handler.send_header("Content-Type", 'multipart/related; type="application/dicom"; boundary=xyz')
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)


@pytest.mark.parametrize("mode", ["other", "bomb", "trickle", "slow"])
def test_a_misbehaving_pacs_is_bounded_and_never_holds_the_request_workers(make_config, site, tmp_path, mode):
    """Root cause: the PACS client ran in the request workers with per-read timeouts only, read
    whole replies (gzip inflated) into memory, and took any series WADO returned."""
    import threading
    import time

    import httpx
    from test_dicomweb import AXIAL, ct_volume, write_ct_series

    from fedpoint.client.service.dicomweb import series_id

    study, asked = "1.2.826.0.1.3680043.8.498.1", "1.2.826.0.1.3680043.8.498.2"
    other = write_ct_series(tmp_path / "other", ct_volume((24, 24, 2)), AXIAL, study_uid=study)
    sent = other if mode == "other" else asked
    write_ct_series(tmp_path / "sent", ct_volume((24, 24, 2)), AXIAL, study_uid=study, series_uid=sent)
    instances = [p.read_bytes() for p in sorted((tmp_path / "sent").iterdir())]
    with MisbehavingPacs(mode, study, asked, instances) as pacs:
        t0 = time.monotonic()
        with LiveServer(make_config(modality="CT", dicomweb=pacs.url)) as live:
            started = time.monotonic() - t0
            c, image_id = live.client, series_id(asked)
            status = c.get("/api/status").json()["pacs"]
            if mode in ("bomb", "trickle"):
                assert started < 40 and status["reachable"] is False, (started, status)
                assert ("more than" if mode == "bomb" else "no complete answer") in status["error"], status
                assert c.post("/api/sessions/img0/click", json={"point": [24, 24]}).status_code == 200
                return
            assert status["reachable"] is True and status["series"] == 1, status
            if mode == "other":
                r = c.get(f"/api/images/{image_id}")
                assert r.status_code == 422 and "asked for" in r.json()["detail"], r.text
                return
            answers: list[int] = []
            opens = [threading.Thread(target=lambda: answers.append(
                httpx.get(f"{live.url}/api/images/{image_id}", headers=AUTH, timeout=60).status_code)) for _ in range(45)]
            for t in opens:
                t.start()
            health = httpx.get(f"{live.url}/health", timeout=10)  # answered while 45 opens wait on the PACS
            click = c.post("/api/sessions/img0/click", json={"point": [24, 24]}, timeout=30)
            for t in opens:
                t.join(90)
            assert health.status_code == 200 and click.status_code == 200
            assert set(answers) <= {200, 422} and 200 in answers and max(answers) < 500, answers


def test_a_sessions_older_masks_are_bit_packed_and_undo_restores_them(tiny_base_2d, blob):
    """Root cause: every retained click held its mask at one byte a voxel (3.4 GB for a 64-click
    session on a 512 x 512 x 200 volume); now all but the newest two are packed, one bit a voxel."""
    from fedpoint.client.engine import SiteEngine
    from fedpoint.client.packed_masks import PackedMask
    from fedpoint.shared.config import AdaptationConfig

    engine = SiteEngine.create(str(tiny_base_2d), adaptation=AdaptationConfig(mode="mid"))
    image, _ = blob((64, 64), seed=3)
    session = engine.open(image, "packed", seed=0)
    shown = []
    for k in range(6):
        shown.append(session.click((10 + 7 * k, 30), k % 2 == 0).copy())
    packed = [s for s in session.steps if isinstance(s.mask, PackedMask)]
    assert len(packed) == 4 and all(p.mask.nbytes == 64 * 64 // 8 for p in packed)
    assert all(isinstance(s.mask, type(session.steps[-1].mask)) for s in session.steps[-2:])
    for k in range(5, 0, -1):
        assert np.array_equal(session.undo(), shown[k - 1])


# ------------------------------------------------------------------------------ 10. smaller
def test_smaller_leaks_and_wrong_2xx_of_the_probe(make_config, site, caplog):
    """Root causes: label_info idx 0 stored the background; a label's affine was never compared with
    the image's; `$` let an id ending in a newline pass; a query token reached the access log."""
    import logging

    from fedpoint.client.service.security import RedactQueryTokens
    from fedpoint.client.site_store import check_id

    with pytest.raises(ValueError):
        check_id("img0\n")
    mask = site["masks"]["vol"].astype(np.uint8)
    with LiveServer(make_config()) as live:
        c = live.client
        r = c.put("/datastore/label", params={"image": "img0"},
                  data={"params": json.dumps({"label_info": [{"name": "object", "idx": 0}]})},
                  files={"label": ("l.nii.gz", nii_gz(site["masks"]["img0"].astype(np.uint8)))})
        assert r.status_code == 422 and "idx 0" in r.json()["detail"], r.text
        shifted = np.diag([0.8, 0.8, 2.5, 1.0])
        shifted[:3, 3] = [30.0, 0.0, 0.0]
        r = c.put("/datastore/label", params={"image": "vol"}, files={"label": ("l.nii.gz", nii_gz(mask, shifted))})
        assert r.status_code == 422 and "affine" in r.json()["detail"], r.text
        r = c.put("/datastore/label", params={"image": "vol"},
                  files={"label": ("l.nii.gz", nii_gz(mask, np.diag([0.8, 0.8, 2.5, 1.0])))})
        assert r.status_code == 200, r.text
        assert c.get("/api/images/img0%0A").status_code in (400, 404)
        record = logging.LogRecord("uvicorn.access", logging.INFO, "", 0, '%s - "%s %s HTTP/%s" %d',
                                   ("127.0.0.1:1", "GET", "/api/status?token=s3cret&image=img0", "1.1", 200), None)
        assert any(isinstance(f, RedactQueryTokens) for f in logging.getLogger("uvicorn.access").filters)
        for f in logging.getLogger("uvicorn.access").filters:
            f.filter(record)
        assert "s3cret" not in record.getMessage() and "image=img0" in record.getMessage()
