"""One consortium for every deployment test that needs a running one: a single SuperLink (TLS, state
database, SuperNode authentication) bound to loopback, the proxy in front of it, the operator's bridge,
three sites connecting through the proxy and one connecting to the SuperLink directly. Started once per
session (tests/conftest.py keeps these tests on one worker), so the deployment tests pay for one CA,
one SuperLink and one set of SuperNodes, and the two-round federation they all check runs once."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from consortium import (BIN, DEPLOY, DIRECT, DOOMED, NGINX, PROXIED, SITES, Consortium, free_port, listening, rounds,
                        run_config, wait_until, write_site_stores)


@pytest.fixture(scope="session")
def consortium(tmp_path_factory, tiny_base_2d):
    """Without nginx there is no proxy: every site connects to the SuperLink directly, the operator
    runs `flwr` on the coordinator's host, and the proxy's own tests skip."""
    root = tmp_path_factory.mktemp("consortium")
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "FLWR_HOME": str(root / "operator-flwr"),
           "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1", "CA_BITS": "2048", "PYTHON": sys.executable,
           **({"NGINX_BIN": NGINX} if NGINX else {})}
    c = Consortium(root, env, {**SITES, **DOOMED})
    c.link_port = free_port()  # the SuperLink's; c.port is the proxy's public port
    c.proxied = NGINX is not None
    certs = root / "certs"
    made = subprocess.run([DEPLOY / "make-certs.sh", certs, *SITES, *DOOMED, "intruder"], env=env, capture_output=True,
                          text=True, timeout=120)
    assert made.returncode == 0, made.stderr
    write_site_stores(root, [*SITES, *DOOMED])
    try:
        c.start([DEPLOY / "start-superlink.sh", certs, root / "superlink-state"], "superlink.log", HOST="127.0.0.1",
                PORT=str(c.link_port))
        wait_until(lambda: "Uvicorn running" in c.log("superlink.log"), 120, "the SuperLink to listen")
        # The operator on the coordinator's own host: a direct TLS connection, used to register the sites.
        for args in (["add-connection.sh", "coordinator-host", f"127.0.0.1:{c.link_port}", certs / "ca.crt"],
                     ["register-sites.sh", "coordinator-host", root / "registry.json",
                      *[f"{certs / 'sites' / s}.pub={m}" for s, m in {**SITES, **DOOMED}.items()]]):
            done = subprocess.run([DEPLOY / args[0], *args[1:]], env=env, capture_output=True, text=True, timeout=180)
            assert done.returncode == 0, done.stdout + done.stderr
        if c.proxied:
            _start_the_door(c, certs)
        else:
            c.port, c.connection = c.link_port, "coordinator-host"
        for site in PROXIED:
            c.start_site(site)
        for site in DIRECT:
            c.start_site(site, port=c.link_port)
        for site in SITES:
            c.wait_connected(site)
        c.base, c.certs = tiny_base_2d, certs
        yield c
    finally:
        c.stop_all()


def _start_the_door(c: Consortium, certs: Path) -> None:
    """The proxy in front of the SuperLink, and the operator elsewhere: `flwr` -> its bridge (loopback,
    plain HTTP) -> the proxy with operator.pem (the connection `consortium`)."""
    bridge_port = free_port()
    c.start([DEPLOY / "start-proxy.sh", certs, c.root / "proxy-state"], "proxy.log", LISTEN=f"127.0.0.1:{c.port}",
            UPSTREAM=f"127.0.0.1:{c.link_port}")
    wait_until(lambda: listening(c.port), 30, "the proxy to listen", interval=0.2)
    c.start([DEPLOY / "operator-bridge.sh", certs, f"localhost:{c.port}", c.root / "bridge-state"], "bridge.log",
            LISTEN=f"127.0.0.1:{bridge_port}")
    wait_until(lambda: listening(bridge_port), 30, "the operator's bridge to listen", interval=0.2)
    with open(c.root / "operator-flwr" / "config.toml", "a") as config:
        config.write(f'\n[superlink.consortium]\naddress = "127.0.0.1:{bridge_port}"\ninsecure = true\n')


@pytest.fixture(scope="session")
def federation(consortium):
    """Two rounds with every site, run by the operator (through its bridge and the proxy where there is
    one), run once and checked by several tests: its rounds and the proxy's access-log lines of the run."""
    c = consortium
    access = c.root / "proxy-state" / "proxy-access.log"
    start = len(access.read_text().splitlines()) if c.proxied else 0
    run_id = c.run(**run_config(c, "federation", **{"min-train-nodes": len(SITES)}))
    status = c.wait_run(run_id)
    lines = access.read_text().splitlines()[start:] if c.proxied else []
    return {"status": status, "name": "federation", "rounds": rounds(c, "federation"), "access": lines}
