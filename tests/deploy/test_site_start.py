"""deploy/start-site.sh checks the site file before it starts a SuperNode: a device the machine does
not have stops it at once, with a message that names the device."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_a_cuda_site_on_a_machine_without_cuda_does_not_start(tmp_path):
    site = tmp_path / "site.toml"
    site.write_text('site-id = "hospital-a"\nmodality = "MR"\nsite-store = "store"\nsuperlink = "127.0.0.1:1"\n'
                    'root-certificates = "ca.crt"\nprivate-key = "key"\ndevice = "cuda"\n')
    env = {**os.environ, "PYTHON": sys.executable, "CUDA_VISIBLE_DEVICES": "",  # torch sees no GPU
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([REPO / "deploy" / "start-site.sh", site], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "device: device 'cuda': torch sees no CUDA GPU" in done.stderr
    assert not (tmp_path / "store").exists()  # stopped before anything was made
