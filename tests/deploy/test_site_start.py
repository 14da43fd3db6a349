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


def _start(tmp_path, extra: str) -> subprocess.CompletedProcess:
    """Run start-site.sh on a site file with `extra` lines; `flower-supernode` is a stand-in on PATH
    that prints the arguments it was given (the SuperNode itself is not started)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / "flower-supernode"
    fake.write_text('#!/usr/bin/env bash\nprintf "%s\\n" "$@"\n')
    fake.chmod(0o755)
    site = tmp_path / "site.toml"
    site.write_text('site-id = "hospital-a"\nmodality = "CT"\nsite-store = "store"\nsuperlink = "127.0.0.1:1"\n'
                    f'root-certificates = "ca.crt"\nprivate-key = "key"\n{extra}\n')
    env = {**os.environ, "PYTHON": sys.executable, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([REPO / "deploy" / "start-site.sh", site], env=env, capture_output=True, text=True, timeout=120)


def test_the_site_files_tasks_reach_the_node_config(tmp_path):
    done = _start(tmp_path, 'tasks = ["Liver", "lesion core"]')
    assert done.returncode == 0, done.stderr
    args = done.stdout.splitlines()
    assert args[args.index("--node-config") + 1].endswith(' tasks="Liver,lesion core"')
    done = _start(tmp_path, 'task = "liver"')
    assert done.returncode == 0 and ' task="liver"' in done.stdout


def test_a_bad_task_name_stops_the_start(tmp_path):
    done = _start(tmp_path, 'tasks = ["liver", "../etc"]')
    assert done.returncode != 0 and "tasks: invalid task (structure) name '../etc'" in done.stderr
    done = _start(tmp_path, 'tasks = "liver"')
    assert done.returncode != 0 and "tasks: a list of structure names" in done.stderr
