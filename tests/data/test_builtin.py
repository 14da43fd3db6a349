"""Preparing built-in datasets: manifest, checksums, rebuilds, fast reads, and the CLI."""

from __future__ import annotations

import io
import json
import tarfile
import time
import zipfile

import numpy as np
import pytest
from fpdata_files import msd_folder, nifti, nrrd_file
from typer.testing import CliRunner

from fedpoint.cli.data import app
from fedpoint.data import BUILTIN_DATASETS, DataError, default_data_dir, list_datasets, load_dataset, prepare
from fedpoint.data.builtin import BUILD_REVISION, read_manifest
from fedpoint.data.sources import _pyradiomics_case, build_stardist
from fedpoint.data.case_files import load_case_file


@pytest.fixture(scope="module")
def mni_dir(tmp_path_factory):
    """A data folder with mni152 prepared (from nilearn's bundled files: no network)."""
    folder = tmp_path_factory.mktemp("fpdata")
    prepare(folder, progress=False, names=["mni152"])
    return folder


def test_default_data_dir_honours_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("FEDPOINT_DATA", str(tmp_path / "d"))
    assert default_data_dir() == tmp_path / "d"
    monkeypatch.delenv("FEDPOINT_DATA")
    assert default_data_dir().parts[-3:] == (".cache", "fedpoint", "data")


def test_prepare_writes_manifest_with_checksums_and_info(mni_dir):
    entry = read_manifest(mni_dir)["datasets"]["mni152"]
    assert list(entry["files"]) == ["mni152/mni152.npz"]
    assert len(next(iter(entry["files"].values()))) == 64
    (info,) = list_datasets(mni_dir)
    assert (info.name, info.modality, info.cases, info.objects, info.labels) == ("mni152", "MR", 1, 3, "derived")
    assert info.shapes == [[197, 233, 189]] and info.spacing == [[1.0, 1.0, 1.0]]
    assert sorted(p.name for p in mni_dir.iterdir()) == [".lock", "manifest.json", "mni152"]


def test_rerun_verifies_and_a_changed_file_is_rebuilt(mni_dir):
    path = mni_dir / "mni152" / "mni152.npz"
    stamp = path.stat().st_mtime_ns
    prepare(mni_dir, progress=False, names=["mni152"])
    assert path.stat().st_mtime_ns == stamp  # verified, not rebuilt
    good = path.read_bytes()
    path.write_bytes(good[:-100] + b"x" * 100)
    prepare(mni_dir, progress=False, names=["mni152"])
    assert path.read_bytes() == good  # rebuilt, bit for bit


def test_entry_from_an_older_build_revision_is_rebuilt(mni_dir):
    manifest_path = mni_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["datasets"]["mni152"]["revision"] = 1
    manifest_path.write_text(json.dumps(manifest))
    path = mni_dir / "mni152" / "mni152.npz"
    stamp = path.stat().st_mtime_ns
    load_dataset("mni152", data_dir=mni_dir)
    assert path.stat().st_mtime_ns != stamp
    assert read_manifest(mni_dir)["datasets"]["mni152"]["revision"] == BUILD_REVISION


def test_loading_a_prepared_dataset_is_fast_and_complete(mni_dir):
    started = time.perf_counter()
    data = load_dataset("mni152", data_dir=mni_dir)
    assert time.perf_counter() - started < 1.0
    case = data.cases[0]
    assert case.image.shape == (1, 197, 233, 189) and case.modality == "MR"
    masks = {o.name: o.mask for o in case.objects}
    assert set(masks) == {"brain", "grey-matter", "white-matter"} and all(o.derived for o in case.objects)
    assert not (masks["grey-matter"] & masks["white-matter"]).any()
    assert masks["brain"].sum() > masks["white-matter"].sum() > 100_000


def test_builtin_is_prepared_on_first_use(tmp_path):
    data = load_dataset("mni152", data_dir=tmp_path)
    assert len(data.cases) == 1 and (tmp_path / "manifest.json").is_file()


def test_unknown_builtin_and_unavailable_colin27(tmp_path):
    with pytest.raises(DataError, match="not a built-in dataset"):
        prepare(tmp_path, progress=False, names=["imagenet"])
    with pytest.raises(DataError, match="mricron-data"):
        prepare(tmp_path, progress=False, names=["colin27-aal"], colin27_root=tmp_path / "none")


def test_colin27_builder_reads_atlas_names_and_regions(tmp_path):
    root = tmp_path / "templates"
    root.mkdir()
    t1 = np.random.default_rng(0).integers(0, 255, (20, 22, 18)).astype(np.uint8)
    aal = np.zeros(t1.shape, np.uint8)
    aal[2:8, 2:8, 2:8], aal[10:16, 10:16, 10:16] = 1, 2
    nifti(root / "ch2.nii.gz", t1)
    nifti(root / "ch2bet.nii.gz", np.where(aal > 0, t1, 0).astype(np.uint8))
    nifti(root / "aal.nii.gz", aal)
    (root / "aal.nii.txt").write_text("1 Precentral_L 2001\n2 Precentral_R 2002\n")
    prepare(tmp_path / "d", progress=False, names=["colin27-aal"], colin27_root=root)
    case = load_dataset("colin27-aal", data_dir=tmp_path / "d").cases[0]
    assert [o.name for o in case.objects] == ["brain", "aal-Precentral_L", "aal-Precentral_R"]
    assert case.objects[1].mask.sum() == 216 and case.objects[0].derived


def test_stardist_builder_reads_the_wheel_without_importing_stardist(tmp_path):
    image = np.arange(64 * 48, dtype=np.uint16).reshape(64, 48)  # (rows, cols)
    instances = np.zeros((64, 48), np.uint16)
    instances[5:10, 5:12], instances[30:40, 20:25] = 3, 9
    wheel = tmp_path / "downloads" / "stardist-0.9.2-py3-none-any.whl"
    wheel.parent.mkdir()
    import tifffile

    with zipfile.ZipFile(wheel, "w") as zf:
        for name, array in (("img2d.tif", image), ("mask2d.tif", instances)):
            buffer = io.BytesIO()
            tifffile.imwrite(buffer, array)
            zf.writestr(f"stardist/data/images/{name}", buffer.getvalue())
    (summary,) = build_stardist(tmp_path / "stardist-nuclei", tmp_path / "downloads")
    assert summary["object_names"] == ["nucleus-3", "nucleus-9"] and summary["shape"] == [48, 64]


def test_cli_list_json_and_sites(mni_dir, tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["list", "--data-dir", str(mni_dir), "--json"])
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.output)
    assert {"name", "modality", "cases", "objects", "labels"} <= set(row) and row["objects"] == 3
    table = runner.invoke(app, ["list", "--data-dir", str(mni_dir)])
    assert table.exit_code == 0 and "mni152" in table.output and "197×233×189" in table.output

    data = msd_folder(tmp_path / "Task", n_cases=2)
    config = tmp_path / "exp.toml"
    config.write_text(
        f'[[sites]]\nname = "template"\ndataset = "mni152"\nmax_per_object = 2\nshift = "bias"\n\n'
        f'[[sites]]\nname = "ct"\ndataset = "{data.as_posix()}"\nshift = "noise"\n'
    )
    out = tmp_path / "sheet.png"
    result = runner.invoke(app, ["sites", "--config", str(config), "--out", str(out), "--data-dir", str(mni_dir)])
    assert result.exit_code == 0, result.output
    assert "template" in result.output and out.read_bytes()[:4] == b"\x89PNG"
    config.write_text('[[sites]]\nname = "x"\ndataset = "mni152"\nshift = "fog"\n')
    bad = runner.invoke(app, ["sites", "--config", str(config), "--data-dir", str(mni_dir)])
    assert bad.exit_code == 2 and "exp.toml" in bad.output and "sites[0].shift" in bad.output


def _nrrd_bytes(tmp_path, array, spacing):
    path = nrrd_file(tmp_path / "x.nrrd", array, spacing)
    return path.read_bytes()


def test_pyradiomics_builder_reads_the_sdist_layout(tmp_path):
    """The builder's archive reading, on a small archive laid out like the sdist."""
    archive = tmp_path / "downloads" / "pyradiomics-3.0.1.tar.gz"
    archive.parent.mkdir()
    image = np.full((12, 10, 6), -900, np.int16)
    image[2:10, 2:8, 1:5] = 30  # a "body"
    image[3:6, 3:7, 2:4] = -850  # with "lung" inside
    label = np.zeros(image.shape, np.uint8)
    label[4, 4, 2] = 1
    with tarfile.open(archive, "w:gz") as tf:
        for case in ("lung1", "lung2"):
            for kind, array in (("image", image), ("label", label)):
                blob = _nrrd_bytes(tmp_path, array, (0.6, 0.6, 5.0))
                info = tarfile.TarInfo(f"pyradiomics-3.0.1/data/{case}_{kind}.nrrd")
                info.size = len(blob)
                tf.addfile(info, io.BytesIO(blob))
    # This archive is not the published sdist, so preparing from it is refused...
    with pytest.raises(DataError, match="pyradiomics-3.0.1.tar.gz: sha256 .* is not that of the published"):
        prepare(tmp_path, progress=False, names=["pyradiomics-lung"])
    # ...but its cases read through the same code as the real ones.
    _pyradiomics_case(archive, tmp_path / "out", "lung1", "CT", derived_ct=True)
    case = load_case_file(tmp_path / "out" / "lung1.npz")
    objects = {o.name: o for o in case.objects}
    assert case.spacing == pytest.approx((0.6, 0.6, 5.0)) and case.modality == "CT"
    assert objects["lesion"].mask.sum() == 1 and not objects["lesion"].derived
    assert objects["body"].derived and objects["body"].mask.sum() == 8 * 6 * 4
    assert objects["lung-field"].mask.sum() == 3 * 4 * 2


@pytest.mark.slow
def test_real_prepare_and_list(tmp_path):
    """The real thing: downloads the pyradiomics sdist and stardist wheel (~38 MB) with pip."""
    runner = CliRunner()
    result = runner.invoke(app, ["prepare", "--data-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    rows = {r["name"]: r for r in json.loads(runner.invoke(app, ["list", "--data-dir", str(tmp_path), "--json"]).output)}
    assert {"mni152", "pyradiomics-brain", "pyradiomics-lung", "pyradiomics-breast", "stardist-nuclei"} <= set(rows)
    assert {r["modality"] for r in rows.values()} >= {"MR", "CT", "microscopy"}
    assert rows["stardist-nuclei"]["objects"] == 125
    assert rows["pyradiomics-lung"]["shapes"] == [[512, 512, 48], [512, 512, 61]]
    lesion_voxels = {
        c.case_id: int(next(o for o in c.objects if o.name == "lesion").mask.sum())
        for name in ("pyradiomics-brain", "pyradiomics-lung", "pyradiomics-breast")
        for c in load_dataset(name, data_dir=tmp_path).cases
    }
    assert lesion_voxels == {"brain1": 4137, "brain2": 453, "lung1": 837, "lung2": 24644, "breast1": 143}
    # pip's scratch files stayed inside the data folder, and a rerun only verifies
    assert set(BUILTIN_DATASETS) - set(rows) <= {"colin27-aal"}
    again = runner.invoke(app, ["prepare", "--data-dir", str(tmp_path)])
    assert again.exit_code == 0 and "built" not in again.output
