"""The wheel, installed into a fresh venv with the base dependencies only, serves a site; with the
`federation` extra it builds the Flower app bundle. Slow: pip installs the dependencies (torch first,
pinned, as `make setup` does, so pip takes the build it already has)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TORCH = "torch==2.13.0"  # the Makefile's pin

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]


def _run(cmd, timeout, **kw):
    out = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, **kw)
    assert out.returncode == 0, f"{cmd}: {out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out.stdout


def _size_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink()) / 2**20


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
    _run([py, "-m", "pip", "install", "-q", TORCH], 600, env=env)
    _run([py, "-m", "pip", "install", "-q", wheel], 900, env=env)
    base_mb = _size_mb(venv)
    print(f"\nbase venv {base_mb:.0f} MiB")

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
    _run([py, "-m", "pip", "install", "-q", f"{wheel}[federation]"], 900, env=env)
    fab_dir = tmp_path / "fab"
    fab_dir.mkdir()
    _run([bin_ / "flwr", "build", "--app", REPO], 300, env=env, cwd=fab_dir)
    fab = next(fab_dir.glob("*.fab"))
    import zipfile

    names = zipfile.ZipFile(fab).namelist()
    assert "pyproject.toml" in names and any(n.startswith("fedpoint/server/") for n in names)
    assert not any(n.startswith(("tests/", "docs/", "bench/", "deploy/")) for n in names)
    print(f"\nbase venv {base_mb:.0f} MiB; with federation {_size_mb(venv):.0f} MiB; "
          f"wheel {wheel.stat().st_size / 2**10:.0f} KiB; FAB {fab.stat().st_size / 2**10:.0f} KiB")
