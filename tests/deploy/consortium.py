"""A consortium on loopback, started with the deploy/ scripts, shared by the deployment tests: the
processes it starts (each in its own process group, stopped by process id), its sites and its
`flwr` calls."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
BIN = Path(sys.executable).parent
NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
RUN_WAIT = 480  # seconds a run may take on a busy 2-core machine
PROXIED = {"site-a": "MR", "site-b": "MR", "site-c": "CT"}  # through the proxy, as deploy/README.md advises
DIRECT = {"site-d": "CT"}  # straight to the SuperLink over TLS (a site on the coordinator's own network)
DOOMED = {"site-e": "CT"}  # registered, started by the test whose site dies mid-round
SITES = {**PROXIED, **DIRECT}  # the federation's sites


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def wait_until(check, timeout: float, what: str, interval: float = 1.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


class Consortium:
    """`port` is where the SuperNodes connect by default (the SuperLink, or the proxy in front of it);
    `connection` is the operator's default `flwr` connection."""

    def __init__(self, root: Path, env: dict, modalities: dict[str, str]):
        self.root, self.env, self.modalities, self.processes = root, env, modalities, []
        self.port = free_port()
        self.connection = "consortium"

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

    def start_site(self, site: str, port: int | None = None, log: str | None = None) -> subprocess.Popen:
        """A SuperNode for `site`, connecting to `port` (default: `self.port`), logging to `log`
        (default: `<site>.log`)."""
        config = self.root / f"{site}.toml"
        config.write_text(f'site-id = "{site}"\nmodality = "{self.modalities.get(site, "CT")}"\n'
                          f'site-store = "stores/{site}"\nsuperlink = "127.0.0.1:{port or self.port}"\n'
                          f'root-certificates = "certs/ca.crt"\nprivate-key = "certs/sites/{site}"\nport = {free_port()}\n')
        return self.start([DEPLOY / "start-site.sh", config], log or f"{site}.log", PYTHON=sys.executable,
                          MAX_WAIT_TIME="60")

    def wait_connected(self, site: str) -> None:
        wait_until(lambda: "SuperNode ID:" in self.log(f"{site}.log"), 180, f"{site} to connect")

    def run(self, connection: str | None = None, **run_config) -> str:
        """`flwr run` with a run config file; returns the run id."""
        config = self.root / f"run-{time.monotonic_ns()}.toml"
        config.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in run_config.items()))
        done = self.cli(BIN / "flwr", "run", ".", connection or self.connection, "--run-config", config, "--format", "json")
        assert done.returncode == 0, done.stdout + done.stderr
        return json.loads(done.stdout[done.stdout.index("{"):])["run-id"]

    def wait_run(self, run_id: str, connection: str | None = None) -> str:
        def finished():
            done = self.cli(BIN / "flwr", "ls", connection or self.connection, "--run-id", run_id, "--format", "json")
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


def write_site_stores(root: Path, sites) -> None:
    """Each site has annotated a few cases before the federation starts."""
    import numpy as np

    from fedpoint.client.site_store import SiteStore

    rng = np.random.default_rng(0)
    for site in sites:
        store = SiteStore(root / "stores" / site)
        for i in range(3):
            image = rng.normal(0.2, 0.1, (1, 32, 32)).astype(np.float32)
            mask = np.zeros((32, 32), bool)
            mask[8 + i:20 + i, 10:22] = True
            image[0][mask] += 0.5
            store.add_case(f"case-{i}", image, mask)


def run_config(c: Consortium, name: str, **extra) -> dict:
    return {"num-server-rounds": 2, "min-train-nodes": 3, "local-epochs": 1, "base": str(c.base),
            "output-dir": str(c.root / name), "round-timeout": 300.0, "site-registry": str(c.root / "registry.json"), **extra}


def rounds(c: Consortium, name: str) -> list[dict]:
    return json.loads((c.root / name / "federation.json").read_text())["rounds"]
