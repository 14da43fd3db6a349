"""The wheel, installed into a fresh venv with the base dependencies only, serves a site; with the
`federation` extra it builds the Flower app bundle. Slow: pip installs every dependency from the
package index, but torch: as `make setup` and the README install torch first (pinned) and pip keeps
it, the venv starts with this environment's torch, the Makefile's pin, linked in (a `.pth` file;
copying its 750 MB was most of the test's time). Nothing is byte-compiled at install (`--no-compile`):
Python compiles what it imports either way."""

from __future__ import annotations

import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]


def _run(cmd, timeout, **kw):
    out = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, **kw)
    assert out.returncode == 0, f"{cmd}: {out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out.stdout


def _size_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink()) / 2**20


def _link_torch(venv: Path) -> Path:
    """This environment's torch (its packages and metadata only) on the fresh venv's path; returns
    the folder of links."""
    dist = importlib.metadata.distribution("torch")
    pin = re.search(r"pip install -q torch==(\S+)", (REPO / "Makefile").read_text()).group(1)
    assert dist.version.split("+")[0] == pin, f"this environment's torch {dist.version} is not the Makefile's {pin}"
    site = Path(dist.locate_file(""))
    tops = {Path(str(f)).parts[0] for f in dist.files if not str(f).startswith("..")}
    links = venv / "linked-torch"
    links.mkdir()
    for top in sorted(tops):
        if (site / top).exists():
            (links / top).symlink_to(site / top)
    (next((venv / "lib").glob("python3*")) / "site-packages" / "linked-torch.pth").write_text(f"{links}\n")
    return links


def test_wheel_in_a_fresh_venv(tmp_path):
    if shutil.which("uv") is None and not (Path(sys.executable).parent / "pip").exists():
        pytest.skip("no pip")
    dist = tmp_path / "dist"
    _run([sys.executable, "-m", "build", "--no-isolation", "--wheel", "--outdir", dist, REPO], 300)
    wheel = next(dist.glob("fedpoint-*.whl"))

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", venv], 120)
    py, bin_ = venv / "bin" / "python", venv / "bin"
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "OMP_NUM_THREADS": "1",
           "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1", "FLWR_TELEMETRY_ENABLED": "0",
           "FLWR_DISABLE_UPDATE_CHECK": "1", "FLWR_HOME": str(tmp_path / "flwr-home")}
    env.pop("VIRTUAL_ENV", None)
    links = _link_torch(venv)
    _run([py, "-m", "pip", "install", "-q", "--no-compile", wheel], 900, env=env)
    # pip kept the torch the venv had (the README's promise), and installed the rest into the venv.
    where = _run([py, "-c", "import torch, monai; print(torch.__file__); print(monai.__file__)"], 300, env=env).split()
    assert Path(where[0]).is_relative_to(links) and Path(where[1]).is_relative_to(venv), where
    torch_mb = sum(_size_mb(p.resolve()) for p in links.iterdir() if p.resolve().is_dir())
    base_mb = _size_mb(venv) + torch_mb
    print(f"\nbase venv {base_mb:.0f} MiB (torch {torch_mb:.0f} MiB of it)")

    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert _run([bin_ / "fedpoint", "--version"], 60, env=env).strip() == f"fedpoint {version}"
    # The base install imports what a site runs, and lacks what the extras bring.
    probe = ("import importlib.util as u, fedpoint.client.engine, fedpoint.client.service.app, fedpoint.cli; "
             "print(*[u.find_spec(m) is None for m in ('peft', 'flwr', 'ray', 'matplotlib', 'nilearn')])")
    assert _run([py, "-c", probe], 300, env=env).split() == ["True"] * 5
    missing = subprocess.run([bin_ / "fedpoint", "simulate", "--config", "tiny"], capture_output=True, text=True,
                             timeout=120, env=env)
    assert missing.returncode == 2 and "fedpoint[simulation]" in missing.stderr, missing.stderr

    # A site: the example site from the built-in data (the data folder this machine prepared, if any).
    site = tmp_path / "ward-3"
    out = _run([bin_ / "fedpoint", "site", "init", site, "--count", "2", "--no-volume"], 600, env=env, cwd=tmp_path)
    assert (site / "site.toml").is_file() and "wrote" in out

    # A coordinator: the federation extra, then the Flower app bundle of the source tree.
    _run([py, "-m", "pip", "install", "-q", "--no-compile", f"{wheel}[federation]"], 900, env=env)
    fab_dir = tmp_path / "fab"
    fab_dir.mkdir()
    _run([bin_ / "flwr", "build", "--app", REPO], 300, env=env, cwd=fab_dir)
    fab = next(fab_dir.glob("*.fab"))
    import zipfile

    names = zipfile.ZipFile(fab).namelist()
    assert "pyproject.toml" in names and any(n.startswith("fedpoint/server/") for n in names)
    assert not any(n.startswith(("tests/", "docs/", "bench/", "deploy/")) for n in names)
    print(f"\nbase venv {base_mb:.0f} MiB; with federation {_size_mb(venv) + torch_mb:.0f} MiB; "
          f"wheel {wheel.stat().st_size / 2**10:.0f} KiB; FAB {fab.stat().st_size / 2**10:.0f} KiB")
