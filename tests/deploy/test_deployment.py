"""A real consortium on loopback, started with the deploy/ scripts: a CA and keys, a SuperLink with
TLS, a state database and SuperNode authentication, registered sites whose SuperNodes train on
their own site stores, and the `flwr` CLI. Checks that runs finish as completed (`flwr run` exits 0
even when a run fails, so the run's status is read with `flwr ls`), that banks get new versions,
that an unregistered key is refused, and that a site dying mid-round is left out of the round."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.flower]

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
BIN = Path(sys.executable).parent
RUN_WAIT = 480  # seconds a run may take on a busy 2-core machine
SITES = {"site-a": "MR", "site-b": "MR", "site-c": "CT", "site-d": "CT"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(check, timeout: float, what: str, interval: float = 1.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


class Consortium:
    """Processes started here, each in its own process group, stopped by process id."""

    def __init__(self, root: Path, env: dict):
        self.root, self.env, self.processes = root, env, []
        self.port = free_port()  # where the SuperNodes connect (the SuperLink, or the proxy in front of it)
        self.connection = "consortium"  # the operator's `flwr` connection

    def start(self, args: list, log: str, **env) -> subprocess.Popen:
        handle = open(self.root / log, "w")
        process = subprocess.Popen([str(a) for a in args], cwd=self.root, env={**self.env, **env}, stdout=handle,
                                   stderr=subprocess.STDOUT, start_new_session=True)
        self.processes.append(process)
        return process

    def log(self, name: str) -> str:
        path = self.root / name
        return path.read_text(errors="replace") if path.exists() else ""

    def cli(self, *args, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([str(a) for a in args], cwd=REPO, env=self.env, capture_output=True, text=True,
                              timeout=timeout)

    def start_site(self, site: str) -> subprocess.Popen:
        config = self.root / f"{site}.toml"
        config.write_text(f'site-id = "{site}"\nmodality = "{SITES.get(site, "CT")}"\nsite-store = "stores/{site}"\n'
                          f'superlink = "127.0.0.1:{self.port}"\nroot-certificates = "certs/ca.crt"\n'
                          f'private-key = "certs/sites/{site}"\nport = {free_port()}\n')
        return self.start([DEPLOY / "start-site.sh", config], f"{site}.log", PYTHON=sys.executable, MAX_WAIT_TIME="60")

    def wait_connected(self, site: str) -> None:
        wait_until(lambda: "SuperNode ID:" in self.log(f"{site}.log"), 180, f"{site} to connect")

    def run(self, **run_config) -> str:
        """`flwr run` with a run config file; returns the run id."""
        config = self.root / f"run-{time.monotonic_ns()}.toml"
        config.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in run_config.items()))
        done = self.cli(BIN / "flwr", "run", ".", self.connection, "--run-config", config, "--format", "json")
        assert done.returncode == 0, done.stdout + done.stderr
        return json.loads(done.stdout[done.stdout.index("{"):])["run-id"]

    def wait_run(self, run_id: str) -> str:
        def finished():
            done = self.cli(BIN / "flwr", "ls", self.connection, "--run-id", run_id, "--format", "json")
            if done.returncode != 0:
                return None
            status = json.loads(done.stdout[done.stdout.index("{"):])["runs"][0]["status"]
            return status if status.startswith("finished") else None

        return wait_until(finished, RUN_WAIT, f"run {run_id} to finish", interval=5)

    def stop(self, process: subprocess.Popen, crash: bool = False) -> None:
        signals = ((signal.SIGKILL, 10),) if crash else ((signal.SIGTERM, 15), (signal.SIGKILL, 10))
        for sig, grace in signals:
            if process.poll() is not None:
                break
            try:
                os.killpg(process.pid, sig)
            except ProcessLookupError:
                break
            try:
                process.wait(grace)
            except subprocess.TimeoutExpired:
                continue

    def stop_all(self) -> None:
        for process in reversed(self.processes):
            self.stop(process)


@pytest.fixture(scope="module")
def consortium(tmp_path_factory, tiny_base_2d):
    import numpy as np

    from fedpoint.client.site_store import SiteStore

    root = tmp_path_factory.mktemp("consortium")
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "FLWR_HOME": str(root / "coordinator-flwr"),
           "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1", "CA_BITS": "2048"}
    c = Consortium(root, env)
    made = subprocess.run([DEPLOY / "make-certs.sh", root / "certs", *SITES, "intruder"], env=env, capture_output=True,
                          text=True, timeout=120)
    assert made.returncode == 0, made.stderr
    rng = np.random.default_rng(0)
    for site in SITES:  # each site has annotated a few cases before the federation starts
        store = SiteStore(root / "stores" / site)
        for i in range(3):
            image = rng.normal(0.2, 0.1, (1, 32, 32)).astype(np.float32)
            mask = np.zeros((32, 32), bool)
            mask[8 + i:20 + i, 10:22] = True
            image[0][mask] += 0.5
            store.add_case(f"case-{i}", image, mask)
    try:
        c.start([DEPLOY / "start-superlink.sh", root / "certs", root / "superlink-state"], "superlink.log",
                HOST="127.0.0.1", PORT=str(c.port))
        wait_until(lambda: "Uvicorn running" in c.log("superlink.log"), 120, "the SuperLink to listen")
        added = subprocess.run([DEPLOY / "add-connection.sh", "consortium", f"127.0.0.1:{c.port}", root / "certs" / "ca.crt"],
                               env=env, capture_output=True, text=True, timeout=60)
        assert added.returncode == 0, added.stderr
        registered = subprocess.run([DEPLOY / "register-sites.sh", "consortium", root / "registry.json",
                                     *[f"{root / 'certs' / 'sites' / s}.pub={m}" for s, m in SITES.items()]],
                                    env={**env, "PYTHON": sys.executable}, capture_output=True, text=True, timeout=180)
        assert registered.returncode == 0, registered.stdout + registered.stderr
        for site in ("site-a", "site-b", "site-c"):
            c.start_site(site)
        for site in ("site-a", "site-b", "site-c"):
            c.wait_connected(site)
        c.base = tiny_base_2d
        yield c
    finally:
        c.stop_all()


def run_config(c: Consortium, name: str, **extra) -> dict:
    return {"num-server-rounds": 2, "min-train-nodes": 3, "local-epochs": 1, "base": str(c.base),
            "output-dir": str(c.root / name), "round-timeout": 300.0, "site-registry": str(c.root / "registry.json"), **extra}


def rounds(c: Consortium, name: str) -> list[dict]:
    return json.loads((c.root / name / "federation.json").read_text())["rounds"]


def test_an_unregistered_site_is_refused(consortium):
    intruder = consortium.start_site("intruder")
    code = intruder.wait(timeout=240)
    assert code != 0
    assert "SuperNode ID:" not in consortium.log("intruder.log")


def test_two_rounds_over_tls_with_authenticated_sites(consortium):
    from fedpoint.server.banks import BankStore

    run_id = consortium.run(**run_config(consortium, "federation"))
    assert consortium.wait_run(run_id) == "finished:completed"
    store = BankStore(consortium.root / "federation" / "banks")
    assert {b: store.versions(b) for b in store.banks()} == {"general": [1, 2, 3], "modality-ct": [1, 2],
                                                            "modality-mr": [1, 2]}
    history = rounds(consortium, "federation")
    assert [r["round"] for r in history] == [1, 2]
    assert all(s["status"] == "accepted" for r in history for s in r["sites"].values())
    assert history[1]["sites"]["site-c"]["bank"] == "modality-ct"
    site_store = consortium.root / "stores" / "site-a"
    assert (site_store / "banks" / "modality-mr" / "v0001").is_dir()  # the bank is left for the annotation service


def test_a_site_dying_mid_round_is_left_out(consortium):
    from fedpoint.server.banks import BankStore

    doomed = consortium.start_site("site-d")
    consortium.wait_connected("site-d")
    run_id = consortium.run(**run_config(consortium, "with-failure", **{"num-server-rounds": 1, "min-train-nodes": 4,
                                                                          "round-timeout": 150.0}))
    wait_until(lambda: "Receiving: train message" in consortium.log("site-d.log"), 300, "site-d to get its round")
    consortium.stop(doomed, crash=True)  # the hospital's machine goes down as its ClientApp starts
    assert consortium.wait_run(run_id) == "finished:completed"
    sites = rounds(consortium, "with-failure")[0]["sites"]
    assert {s: v["status"] for s, v in sites.items() if s != "site-d"} == dict.fromkeys(("site-a", "site-b", "site-c"), "accepted")
    assert sites.get("site-d", {}).get("status", "no reply") in ("failed", "no reply")
    assert BankStore(consortium.root / "with-failure" / "banks").versions("general") == [1, 2]
