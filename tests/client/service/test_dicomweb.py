"""DICOM at a site: series folders as images, a real Orthanc as the datastore over DICOMweb, and
accepted labels back in the PACS as DICOM-SEG."""

from __future__ import annotations

import gzip
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx
import nibabel as nib
import numpy as np
import pytest
from service_helpers import LiveServer, unpack

LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
AXIAL = np.array([[-0.7, 0, 0, 8.0], [0, -0.7, 0, -12.0], [0, 0, 2.5, -40.0], [0, 0, 0, 1]])  # as a CT scanner writes
_c, _s = np.cos(0.4), np.sin(0.4)  # rotated about z, slices stacked toward the feet
OBLIQUE = np.array([[0.8 * _c, -0.8 * _s, 0, 5.0], [0.8 * _s, 0.8 * _c, 0, -3.0], [0, 0, -3.0, 20.0], [0, 0, 0, 1]])
ORTHANC_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")  # Debian's orthanc-dicomweb


def ct_volume(shape=(24, 24, 6), seed: int = 0) -> np.ndarray:
    """Integer HU: air around a soft-tissue body with a denser blob in it."""
    grid = np.indices(shape).astype(float)
    centre = (np.array(shape) - 1) / 2
    body = ((grid[0] - centre[0]) ** 2 + (grid[1] - centre[1]) ** 2) <= (shape[0] * 0.42) ** 2
    blob = ((grid[0] - centre[0] - 2) ** 2 + (grid[1] - centre[1]) ** 2 + (3 * (grid[2] - centre[2])) ** 2) <= 16
    noise = np.random.default_rng(seed).integers(-20, 21, shape)
    return np.where(body, 40, -1000) + np.where(blob, 160, 0) + noise


def write_ct_series(folder: Path, hu: np.ndarray, affine: np.ndarray, *, series_uid=None, study_uid=None,
                    skip=(), prefix: str = "IM") -> str:
    """A CT Image Storage series (pydicom), one file per slice, in shuffled file order, some without .dcm.
    `affine` is index (x, y, z) -> RAS, as fedpoint reads NIfTI; returns the SeriesInstanceUID."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    lps = LPS @ affine
    row, column = lps[:3, 0] / np.linalg.norm(lps[:3, 0]), lps[:3, 1] / np.linalg.norm(lps[:3, 1])
    series_uid, study_uid, frame = series_uid or generate_uid(), study_uid or generate_uid(), generate_uid()
    for k in range(hu.shape[2]):
        if k in skip:
            continue
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.TransferSyntaxUID = CTImageStorage, ExplicitVRLittleEndian
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Phantom^Test", "PHANTOM-1", "19700101", "O"
        ds.StudyInstanceUID, ds.StudyDate, ds.StudyTime, ds.StudyID = study_uid, "20240101", "120000", "1"
        ds.ReferringPhysicianName, ds.AccessionNumber = "", "ACC1"
        ds.SeriesInstanceUID, ds.SeriesNumber, ds.Modality = series_uid, 3, "CT"
        ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = frame, ""
        ds.Manufacturer, ds.ImageType, ds.KVP = "fedpoint-test", ["ORIGINAL", "PRIMARY", "AXIAL"], 120
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [round(float(v), 6) for v in (lps @ [0, 0, k, 1])[:3]]
        ds.ImageOrientationPatient = [round(float(v), 8) for v in (*row, *column)]
        ds.PixelSpacing = [float(np.linalg.norm(lps[:3, 1])), float(np.linalg.norm(lps[:3, 0]))]  # rows, columns
        ds.SliceThickness = float(np.linalg.norm(lps[:3, 2]))
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows, ds.Columns = hu.shape[1], hu.shape[0]
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = -1024, 1, "HU"
        ds.PixelData = np.ascontiguousarray((hu[:, :, k].T + 1024).astype("<u2")).tobytes()  # frame rows are y
        name = f"{prefix}{(k * 5 + 3) % 97:04d}" + (".dcm" if k % 2 else "")
        ds.save_as(folder / name, enforce_file_format=True)
    return series_uid


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------------ reading
@pytest.mark.parametrize("affine, reversed_z", [(AXIAL, False), (OBLIQUE, True)], ids=["axial", "oblique-feetward"])
def test_series_folder_reads_like_its_nifti(tmp_path, affine, reversed_z):
    from fedpoint.client.service.images import open_image, read_array, read_dicom_series

    hu = ct_volume()
    series_uid = write_ct_series(tmp_path / "ct", hu, affine)
    nib.save(nib.Nifti1Image(hu.astype(np.float32), affine), str(tmp_path / "ct.nii.gz"))
    array, dicom_affine = read_array(tmp_path / "ct")
    nifti, nifti_affine = read_array(tmp_path / "ct.nii.gz")
    assert array.shape == nifti.shape == (1, 24, 24, 6)
    # DICOM has no file order: slices run along +normal (row x column cosines), so a NIfTI stacked
    # the other way holds the same voxels at the same places with z reversed.
    flip = np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, -1, 5], [0, 0, 0, 1]]) if reversed_z else np.eye(4)
    assert np.array_equal(array, nifti[..., ::-1] if reversed_z else nifti)
    assert np.array_equal(array[0], hu[..., ::-1] if reversed_z else hu)  # HU after RescaleIntercept
    assert np.allclose(dicom_affine, nifti_affine @ flip, atol=1e-4)
    series = read_dicom_series(tmp_path / "ct")
    assert series.series_uid == series_uid and len(series.sop_instance_uids) == 6 and series.frame_of_reference_uid
    assert all(h.SOPInstanceUID == uid for h, uid in zip(series.headers, series.sop_instance_uids))
    loaded = open_image("ct", tmp_path / "ct", "CT", 1, None)
    assert np.allclose(loaded.spacing, np.linalg.norm(affine[:3, :3], axis=0))
    assert loaded.dicom.series_uid == series_uid
    assert loaded.flip_y is (affine[1, 1] > 0)  # a medical volume, like its NIfTI


def _spoil_orientation(folder: Path) -> None:
    import pydicom

    path = sorted(folder.iterdir())[2]
    ds = pydicom.dcmread(path)
    ds.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]
    ds.save_as(path)


def _spoil_shape(folder: Path) -> None:
    import pydicom

    path = sorted(folder.iterdir())[1]
    ds = pydicom.dcmread(path)
    ds.Rows, ds.PixelData = 12, ds.PixelData[: 12 * 24 * 2]
    ds.save_as(path)


@pytest.mark.parametrize("spoil, message", [
    (lambda f: write_ct_series(f, ct_volume(seed=1), AXIAL, prefix="B"), "holds 2 series"),
    (None, "missing slice"),
    (_spoil_orientation, "differ in ImageOrientationPatient"),
    (_spoil_shape, "differ in pixel shape"),
    ("empty", "holds no DICOM image files"),
], ids=["mixed-series", "missing-slice", "orientation", "pixel-shape", "no-dicom"])
def test_bad_series_refused_naming_the_folder(tmp_path, spoil, message):
    from fedpoint.client.service.images import ImageError, read_array

    folder = tmp_path / "chest-7"
    if spoil == "empty":
        folder.mkdir()
        (folder / "README.txt").write_text("exported by the PACS\n")
    else:
        write_ct_series(folder, ct_volume(), AXIAL, skip=(3,) if spoil is None else ())
        if spoil is not None:
            spoil(folder)
    with pytest.raises(ImageError, match=message) as err:
        read_array(folder)
    assert str(err.value).startswith("chest-7/")


def test_service_serves_a_series_folder(make_config, site):
    write_ct_series(site["images"] / "chest-ct", ct_volume(), AXIAL)
    with LiveServer(make_config(modality="CT")) as live:
        c = live.client
        ids = [i["id"] for i in c.get("/api/images").json()["images"]]
        assert "chest-ct" in ids and "vol" in ids
        meta = c.get("/api/images/chest-ct").json()
        assert meta["shape"] == [24, 24, 6] and meta["per_slice"] and meta["flip_y"] is False
        plane = np.frombuffer(c.get("/api/images/chest-ct/slice/3").content, dtype="<f4").reshape(24, 24).T
        assert np.array_equal(plane, ct_volume()[:, :, 3])  # HU reach the page
        click = c.post("/api/sessions/chest-ct/click", json={"point": [12, 12, 3], "positive": True})
        assert click.status_code == 200, click.text
        assert unpack(click.json()["mask"]).shape == (24, 24) and click.json()["slice"] == 3
        image = c.get("/datastore/image", params={"image": "chest-ct"})  # what 3D Slicer downloads
        volume = nib.Nifti1Image.from_bytes(gzip.decompress(image.content))
        assert np.allclose(volume.affine, AXIAL, atol=1e-4) and np.array_equal(np.asarray(volume.dataobj), ct_volume())
        spoiled = site["images"] / "gap-ct"
        write_ct_series(spoiled, ct_volume(), AXIAL, skip=(2,))
        bad = c.get("/api/images/gap-ct")
        assert bad.status_code == 422 and "gap-ct/" in bad.json()["detail"] and "missing slice" in bad.json()["detail"]
        assert any(s["file"] == "gap-ct" for s in c.get("/api/status").json()["images"]["skipped"])
    from fedpoint.client.service.check import CheckReport, check_images

    report = CheckReport()  # `fedpoint site check` decodes series folders too
    check_images(site["images"], report)
    assert [(f.file, "missing slice" in f.reason) for f in report.findings] == [("images/gap-ct", True)]


# ------------------------------------------------------------------------------------ the PACS
def test_unreachable_pacs_logs_and_serves_the_folder(make_config, site, caplog):
    port = free_port()  # nothing listens there
    caplog.set_level(logging.WARNING, logger="fedpoint.service")
    with LiveServer(make_config(modality="CT", dicomweb=f"http://127.0.0.1:{port}/dicom-web")) as live:
        assert [i["id"] for i in live.client.get("/api/images").json()["images"]] == ["img0", "img1", "img2", "vol"]
        status = live.client.get("/api/status").json()
        assert status["pacs"]["reachable"] is False and "unreachable" in status["pacs"]["error"]
        assert status["pacs"]["retry_in_s"] > 0  # listed again after a back-off, not at every request
        assert any(s["file"].startswith("PACS http://127.0.0.1") for s in status["images"]["skipped"])
        assert live.client.post("/api/sessions/img0/click", json={"point": [24, 24], "positive": True}).status_code == 200
    assert any("unreachable" in r.getMessage() and "retrying" in r.getMessage() for r in caplog.records)


def test_config_needs_images_or_dicomweb_and_reads_the_credential(make_config, monkeypatch):
    from fedpoint.client.service import ServiceConfigError
    from fedpoint.client.service.dicomweb import auth_headers, shown_url

    with pytest.raises(ServiceConfigError, match="give images"):
        make_config(images=None)
    with pytest.raises(ServiceConfigError, match="http"):
        make_config(dicomweb="ftp://pacs/dicom-web")
    config = make_config(images=None, dicomweb="http://fp:pw@127.0.0.1:8042/dicom-web/", dicomweb_token_env="FP_PACS")
    assert config.dicomweb.endswith("/dicom-web") and shown_url(config.dicomweb) == "http://127.0.0.1:8042/dicom-web"
    monkeypatch.setenv("FP_PACS", "fedpoint:secret")
    assert auth_headers(config) == {"Authorization": "Basic ZmVkcG9pbnQ6c2VjcmV0"}
    monkeypatch.setenv("FP_PACS", "eyJhbGciOi.token")
    assert auth_headers(config) == {"Authorization": "Bearer eyJhbGciOi.token"}
    monkeypatch.delenv("FP_PACS")
    with pytest.raises(ServiceConfigError, match="FP_PACS"):
        auth_headers(config)


class Orthanc:
    """A real Orthanc with its DICOMweb plugin on loopback ports, storage under a test folder."""

    def __init__(self, folder: Path, port: int):
        binary = shutil.which("Orthanc") or ("/usr/sbin/Orthanc" if os.access("/usr/sbin/Orthanc", os.X_OK) else None)
        if binary is None or not ORTHANC_PLUGIN.is_file():
            pytest.skip("Orthanc or its DICOMweb plugin is missing (Debian: apt-get install orthanc orthanc-dicomweb)")
        self.binary, self.port, self.folder = binary, port, folder
        folder.mkdir(parents=True, exist_ok=True)
        self.config = folder / "orthanc.json"
        self.config.write_text(json.dumps({
            "Name": "fedpoint-test", "HttpPort": port, "DicomServerEnabled": False, "DicomPort": free_port(),
            "StorageDirectory": str(folder / "storage"), "IndexDirectory": str(folder / "index"),
            "RemoteAccessAllowed": False, "AuthenticationEnabled": False, "Plugins": [str(ORTHANC_PLUGIN)],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"}}))
        self.url = f"http://127.0.0.1:{port}"
        self.process = None

    def start(self) -> "Orthanc":
        log = open(self.folder / "orthanc.log", "ab")
        self.process = subprocess.Popen([self.binary, str(self.config)], stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Orthanc exited: {(self.folder / 'orthanc.log').read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/system", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError("Orthanc did not answer /system within 30 s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait(5)
        self.process = None

    def upload(self, folder: Path) -> None:
        for path in sorted(folder.iterdir()):
            assert httpx.post(f"{self.url}/instances", content=path.read_bytes(), timeout=10).status_code == 200


@pytest.fixture
def orthanc(tmp_path):
    server = Orthanc(tmp_path / "orthanc", free_port())
    try:
        yield server.start()
    finally:
        server.stop()


def _wait_for_seg(client: httpx.Client, count: int) -> dict:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        seg = client.get("/api/status").json()["pacs"]["seg"]
        if seg["pending"] == 0 and seg["stored"] + seg["failed"] >= count:
            return seg
        time.sleep(0.1)
    raise AssertionError("the SEG write-back did not finish within 60 s")


@pytest.mark.slow
def test_orthanc_series_annotated_and_seg_stored_back(make_config, site, orthanc, tmp_path):
    from dicomweb_client.api import DICOMwebClient

    from fedpoint.client.service.dicomweb import series_id
    from fedpoint.data.dicom import DicomError, read_dicom_folder, read_seg

    hu = ct_volume()
    series_uid = write_ct_series(tmp_path / "export", hu, AXIAL)
    orthanc.upload(tmp_path / "export")
    config = make_config(modality="CT", labels=["nodule", "vessel"], dicomweb=f"{orthanc.url}/dicom-web")
    with LiveServer(config) as live:
        c = live.client
        listing = [i["id"] for i in c.get("/api/images").json()["images"]]
        image_id = series_id(series_uid)
        assert listing == ["img0", "img1", "img2", "vol", image_id]  # the folder and the PACS side by side
        assert c.get("/api/status").json()["pacs"]["reachable"] is True
        meta = c.get(f"/api/images/{image_id}").json()
        assert meta["shape"] == [24, 24, 6] and meta["modality"] == "CT"
        plane = np.frombuffer(c.get(f"/api/images/{image_id}/slice/2").content, dtype="<f4").reshape(24, 24).T
        assert np.array_equal(plane, hu[:, :, 2])  # fetched by WADO-RS, HU intact

        click = c.post(f"/api/sessions/{image_id}/click", json={"point": [13, 12, 2], "positive": True}).json()
        accepted = c.post(f"/api/sessions/{image_id}/accept", json={"slice": 2})
        assert accepted.status_code == 200, accepted.text
        written = _wait_for_seg(c, 1)
        assert written["stored"] == 1 and written["failed"] == 0
        last = written["last"]

        dicomweb = DICOMwebClient(f"{orthanc.url}/dicom-web")
        found = dicomweb.search_for_instances(search_filters={"Modality": "SEG"})
        assert len(found) == 1
        study = found[0]["0020000D"]["Value"][0]
        seg = dicomweb.retrieve_instance(study, last["series_instance_uid"], last["sop_instance_uid"])
        assert seg.Modality == "SEG" and [s.SegmentLabel for s in seg.SegmentSequence] == ["nodule", "vessel"]
        assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == series_uid and seg.StudyInstanceUID == study
        loaded = live.state.desk.load(image_id)
        mask = read_seg(seg, loaded.dicom)
        assert np.array_equal(mask[:, :, 2], unpack(click["mask"])) and not mask[:, :, [0, 1, 3, 4, 5]].any()
        assert not read_seg(seg, loaded.dicom, segment=2).any()  # nothing accepted for the vessel yet

        # What OHIF's MONAI Label mode sends: the SeriesInstanceUID as the image, an .nrrd label back.
        import io

        import nrrd

        ohif = c.post("/infer/fedpoint", params={"image": series_uid, "output": "image"},
                      data={"params": json.dumps({"foreground": [[13, 12, 4]], "label": "vessel",
                                                  "result_extension": ".nrrd", "result_dtype": "uint16"})})
        assert ohif.status_code == 200, ohif.text
        header = nrrd.read_header(io.BytesIO(ohif.content))
        assert header["type"] in ("uint16", "unsigned short") and list(header["sizes"]) == [24, 24, 6]
        # a volume on a 2D base: propagated from the clicked slice (the default route), one session per volume
        assert live.state.volumes.user_slices(image_id, "monailabel", "vessel") == [4]

        # A label a MONAI Label client saves (a known one): the next SEG carries it, beside the accepted slice.
        known = np.zeros(hu.shape, np.uint8)
        known[8:16, 6:18, 0:2] = 1
        upload = gzip.compress(nib.Nifti1Image(known, loaded.affine).to_bytes())
        saved = c.put("/datastore/label", params={"image": image_id}, files={"label": ("label.nii.gz", upload)},
                      data={"params": json.dumps({"label_info": [{"name": "nodule", "idx": 1}]})})
        assert saved.status_code == 200, saved.text
        last = _wait_for_seg(c, 2)["last"]
        assert last["stored"] and last["series_instance_uid"] == seg.SeriesInstanceUID  # one SEG series per image
        newest = read_seg(dicomweb.retrieve_instance(study, last["series_instance_uid"], last["sop_instance_uid"]),
                          loaded.dicom)
        assert np.array_equal(newest, live.state.desk.stored_label(loaded))
        assert np.array_equal(newest[:, :, :2], known[:, :, :2]) and np.array_equal(newest[:, :, 2], mask[:, :, 2])

        other = read_dicom_folder(_other_series(tmp_path))
        with pytest.raises(DicomError, match="references series"):  # a SEG for another series is refused
            read_seg(seg, other)

        orthanc.stop()  # the PACS goes down: annotation goes on, the case is kept, the SEG failure reported
        c.post(f"/api/sessions/{image_id}/click", json={"point": [12, 12, 3], "positive": True})
        assert c.post(f"/api/sessions/{image_id}/accept", json={"slice": 3}).status_code == 200
        seg_status = _wait_for_seg(c, 3)
        assert seg_status["failed"] == 1 and "connection failed" in seg_status["last"]["error"]
        assert len(live.state.desk.cases_by_image[image_id]) == 4  # slices 2, 0, 1, then 3: all cached
        live.state.pacs.refresh(force=True)
        status = c.get("/api/status").json()
        assert status["pacs"]["reachable"] is False and image_id in [i["id"] for i in c.get("/api/images").json()["images"]]

        orthanc.start()  # back: the next listing after the back-off finds it again
        live.state.pacs.refresh(force=True)
        assert c.get("/api/status").json()["pacs"]["reachable"] is True


def _other_series(tmp_path: Path) -> Path:
    write_ct_series(tmp_path / "other", ct_volume(seed=3), AXIAL)
    return tmp_path / "other"


def test_a_dicom_seg_upload_is_a_label_for_its_own_series_only(make_config, site):
    """PUT /datastore/label with a DICOM-SEG: taken on the series it was made for, refused (and
    nothing stored) on another series or on an image that is not DICOM."""
    import io

    import pydicom

    from fedpoint.data.dicom import build_seg

    write_ct_series(site["images"] / "chest-ct", ct_volume(), AXIAL)
    write_ct_series(site["images"] / "other-ct", ct_volume(seed=3), AXIAL)
    with LiveServer(make_config(modality="CT", label="nodule")) as live:
        loaded = live.state.desk.load("chest-ct")
        known = np.zeros(loaded.shape, np.uint8)
        known[6:14, 8:16, 2:4] = 1
        buffer = io.BytesIO()
        pydicom.dcmwrite(buffer, build_seg(loaded.dicom, known, ["nodule"], "test-site", 1, "test"))
        seg = buffer.getvalue()

        def put(image):
            return live.client.put("/datastore/label", params={"image": image}, files={"label": ("seg.dcm", seg)},
                                   data={"params": json.dumps({"client_id": "slicer"})})

        for image, message in (("other-ct", "references series"), ("img0", "not a DICOM series")):
            r = put(image)
            assert r.status_code == 422 and message in r.json()["detail"], r.text
        assert not [c for c in live.state.store.case_ids() if c.startswith(("other-ct", "img0"))]
        r = put("chest-ct")
        assert r.status_code == 200, r.text
        assert np.array_equal(live.state.desk.stored_label(loaded), known)
