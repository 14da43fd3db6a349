"""deploy/start-superlink.sh keeps a copy of state.db before the first start on a new Flower version
(Flower 1.42 migrates it one way), once; the SuperLink itself is a stand-in that reports a version."""

from __future__ import annotations

import os
import sqlite3
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def fake_superlink(folder: Path, version: str) -> Path:
    script = folder / f"superlink-{version}"
    script.write_text(f'#!/bin/sh\n[ "$1" = "--version" ] && echo "Flower version: {version}"\nexit 0\n')
    script.chmod(0o755)
    return script


def start(certs: Path, state: Path, superlink: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "SUPERLINK_BIN": str(superlink)}
    return subprocess.run([REPO / "deploy" / "start-superlink.sh", certs, state], env=env, capture_output=True,
                          text=True, timeout=60)


def test_state_db_is_backed_up_once_before_the_first_start_on_a_new_flower(tmp_path):
    certs, state = tmp_path / "certs", tmp_path / "state"
    certs.mkdir()
    for name in ("ca.crt", "superlink.pem", "superlink.key"):
        (certs / name).write_text("stand-in")
    old, new = fake_superlink(tmp_path, "1.41.0"), fake_superlink(tmp_path, "1.42.0")

    assert start(certs, state, old).returncode == 0  # a new deployment: nothing to keep
    assert (state / "flwr-version").read_text().strip() == "1.41.0" and not list(state.glob("*.bak"))
    with sqlite3.connect(state / "state.db") as db:  # the SuperLink's database, as 1.41 left it
        db.execute("create table run (id integer)")
        db.execute("insert into run values (7)")
    assert start(certs, state, old).returncode == 0  # same version: no copy
    assert not list(state.glob("*.bak"))

    first = start(certs, state, new)
    assert first.returncode == 0 and "backed up" in first.stderr
    backup = state / "state.db.before-flwr-1.42.0.bak"
    with sqlite3.connect(backup) as db:
        assert db.execute("select id from run").fetchall() == [(7,)]
    with sqlite3.connect(state / "state.db") as db:  # 1.42 changes it after the copy
        db.execute("insert into run values (8)")
    second = start(certs, state, new)
    assert second.returncode == 0 and "backed up" not in second.stderr
    assert [p.name for p in state.glob("*.bak")] == [backup.name]
    with sqlite3.connect(backup) as db:  # the copy is still the one from before the first 1.42 start
        assert db.execute("select id from run").fetchall() == [(7,)]
