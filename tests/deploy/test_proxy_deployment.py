"""The coordinator's door on loopback: nginx (deploy/start-proxy.sh) terminating TLS in front of a
SuperLink bound to loopback, three authenticated SuperNodes connecting through the proxy, the
operator running `flwr` through its bridge with the operator's certificate, and an outsider holding
`ca.crt` and a site's key, who gets nothing but the Fleet API. Bytes per round through the proxy
(its access log) are reported beside Flower's payload sizes (federation.json)."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_deployment import BIN, DEPLOY, Consortium, free_port, rounds, run_config, wait_until

NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
pytestmark = [pytest.mark.slow, pytest.mark.flower,
              pytest.mark.skipif(NGINX is None, reason="nginx is not installed (Debian package nginx; make system-packages)")]
SITES = {"site-a": "MR", "site-b": "MR", "site-c": "CT"}
ACCESS = re.compile(r'"(\w+) (\S+)" (\d+) route=(\w+) operator=(\w+) in=(\d+) out=(\d+)')


def listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="module")
def door(tmp_path_factory, tiny_base_2d):
    import numpy as np

    from fedpoint.client.site_store import SiteStore

    root = tmp_path_factory.mktemp("door")
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "FLWR_HOME": str(root / "operator-flwr"),
           "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1", "CA_BITS": "2048", "NGINX_BIN": NGINX,
           "PYTHON": sys.executable}
    c = Consortium(root, env)  # c.port: the proxy's public port, where the sites connect
    c.link_port, bridge_port = free_port(), free_port()
    certs = root / "certs"
    made = subprocess.run([DEPLOY / "make-certs.sh", certs, *SITES, "intruder"], env=env, capture_output=True, text=True,
                          timeout=120)
    assert made.returncode == 0, made.stderr
    rng = np.random.default_rng(0)
    for site in SITES:
        store = SiteStore(root / "stores" / site)
        for i in range(3):
            image = rng.normal(0.2, 0.1, (1, 32, 32)).astype(np.float32)
            mask = np.zeros((32, 32), bool)
            mask[8 + i:20 + i, 10:22] = True
            image[0][mask] += 0.5
            store.add_case(f"case-{i}", image, mask)
    try:
        c.start([DEPLOY / "start-superlink.sh", certs, root / "superlink-state"], "superlink.log", HOST="127.0.0.1",
                PORT=str(c.link_port))
        wait_until(lambda: "Uvicorn running" in c.log("superlink.log"), 120, "the SuperLink to listen")
        c.start([DEPLOY / "start-proxy.sh", certs, root / "proxy-state"], "proxy.log", LISTEN=f"127.0.0.1:{c.port}",
                UPSTREAM=f"127.0.0.1:{c.link_port}")
        wait_until(lambda: listening(c.port), 30, "the proxy to listen", interval=0.2)
        # The operator on the coordinator's own host registers the sites over loopback.
        for args in (["add-connection.sh", "coordinator-host", f"127.0.0.1:{c.link_port}", certs / "ca.crt"],
                     ["register-sites.sh", "coordinator-host", root / "registry.json",
                      *[f"{certs / 'sites' / s}.pub={m}" for s, m in SITES.items()]]):
            done = subprocess.run([DEPLOY / args[0], *args[1:]], env=env, capture_output=True, text=True, timeout=180)
            assert done.returncode == 0, done.stdout + done.stderr
        # The operator elsewhere: `flwr` -> its bridge (loopback, plain HTTP) -> the proxy with operator.pem.
        c.start([DEPLOY / "operator-bridge.sh", certs, f"localhost:{c.port}", root / "bridge-state"], "bridge.log",
                LISTEN=f"127.0.0.1:{bridge_port}")
        wait_until(lambda: listening(bridge_port), 30, "the operator's bridge to listen", interval=0.2)
        with open(root / "operator-flwr" / "config.toml", "a") as config:
            config.write(f'\n[superlink.consortium]\naddress = "127.0.0.1:{bridge_port}"\ninsecure = true\n')
        for site in SITES:
            c.start_site(site)
        for site in SITES:
            c.wait_connected(site)
        c.base = tiny_base_2d
        c.certs = certs
        yield c
    finally:
        c.stop_all()


def succeeded(done: subprocess.CompletedProcess) -> bool:
    """A `flwr ... --format json` call that worked: exit 0 and "success": true."""
    if done.returncode != 0 or "{" not in done.stdout:
        return False
    try:
        return bool(json.loads(done.stdout[done.stdout.index("{"):]).get("success"))
    except ValueError:
        return False


def control_and_runtime_routes(c) -> list[str]:
    """Every Control and Runtime API route the SuperLink serves (its own OpenAPI document, read on
    the coordinator's loopback, where it is still served)."""
    import httpx

    spec = httpx.get(f"https://127.0.0.1:{c.link_port}/openapi.json", verify=str(c.certs / "ca.crt"), timeout=30).json()
    return sorted(p for p in spec["paths"] if p.startswith(("/v1/control/", "/v1/runtime/")))


def test_an_outsider_with_the_ca_and_a_site_key_gets_nothing_but_the_fleet_api(door):
    import httpx

    outsider = {**door.env, "FLWR_HOME": str(door.root / "outsider-flwr")}
    added = subprocess.run([DEPLOY / "add-connection.sh", "outside", f"127.0.0.1:{door.port}", door.certs / "ca.crt"],
                           env=outsider, capture_output=True, text=True, timeout=60)
    assert added.returncode == 0, added.stderr

    def flwr(*args, env=outsider):
        return subprocess.run([BIN / "flwr", *map(str, args)], cwd=Path(__file__).resolve().parents[2], env=env,
                              capture_output=True, text=True, timeout=120)

    attempts = {
        "flwr ls": flwr("ls", "outside", "--format", "json"),
        "flwr run": flwr("run", ".", "outside", "--format", "json"),
        "flwr supernode register": flwr("supernode", "register", door.certs / "sites" / "intruder.pub", "outside",
                                        "--format", "json"),
    }
    routes = control_and_runtime_routes(door)
    assert any(r.startswith("/v1/runtime/") for r in routes) and "/v1/control/list-runs" in routes
    protobuf = {"content-type": "application/protobuf", "accept": "application/protobuf"}  # as Flower's clients send
    key_headers = {**protobuf, "flwr-public-key": "x", "flwr-signature": "x", "flwr-timestamp": "x"}  # and a site's
    with httpx.Client(verify=str(door.certs / "ca.crt"), timeout=30) as client:
        at_proxy = {r: client.post(f"https://127.0.0.1:{door.port}{r}", content=b"", headers=key_headers).status_code
                    for r in routes}
        bare = {r: client.post(f"https://127.0.0.1:{door.link_port}{r}", content=b"", headers=protobuf).status_code
                for r in routes}
    successes = [name for name, done in attempts.items() if succeeded(done)] + [r for r, s in at_proxy.items() if s < 400]
    print(f"\noutsider at the proxy: {len(attempts)} flwr commands and {len(routes)} control/runtime routes, "
          f"{len(successes)} succeeded; the same routes at the bare SuperLink: "
          f"{sum(s < 400 for s in bare.values())} answered below 400")
    assert successes == []
    assert set(at_proxy.values()) == {403}
    # Side by side: on the coordinator's loopback the same commands work (the test can fail).
    assert succeeded(flwr("ls", "coordinator-host", "--format", "json", env=door.env))
    assert bare["/v1/control/list-runs"] == 200 and sum(s < 400 for s in bare.values()) > 1
    # A SuperNode with the outsider's own key is refused through the proxy.
    intruder = door.start_site("intruder")
    assert intruder.wait(timeout=240) != 0 and "SuperNode ID:" not in door.log("intruder.log")


def test_the_operator_runs_the_federation_through_the_proxy_with_its_certificate(door):
    access = door.root / "proxy-state" / "proxy-access.log"
    start = len(access.read_text().splitlines())
    run_id = door.run(**run_config(door, "federation"))
    assert door.wait_run(run_id) == "finished:completed"
    history = rounds(door, "federation")
    assert [r["round"] for r in history] == [1, 2]
    assert all(s["status"] == "accepted" for r in history for s in r["sites"].values())
    assert set(history[0]["sites"]) == set(SITES)

    lines = [ACCESS.search(line) for line in access.read_text().splitlines()[start:]]
    hits = [m.groups() for m in lines if m]
    control = [h for h in hits if h[3] == "control"]
    assert control and all(h[4] == "yes" and h[2] == "200" for h in control)  # the operator's calls, by certificate
    fleet = [h for h in hits if h[3] == "fleet" and h[2] == "200"]
    proxy_up, proxy_down = sum(int(h[5]) for h in fleet), sum(int(h[6]) for h in fleet)
    flower_up = sum(s["bytes_up"] for r in history for s in r["sites"].values())
    flower_down = sum(s["bytes_down"] for r in history for s in r["sites"].values())
    by_route: dict[str, list[int]] = {}
    for h in fleet:
        totals = by_route.setdefault(h[1], [0, 0, 0])
        totals[0], totals[1], totals[2] = totals[0] + 1, totals[1] + int(h[5]), totals[2] + int(h[6])
    report = {"rounds": len(history), "sites": len(SITES),
              "proxy_fleet_bytes_per_round": {"up": proxy_up // len(history), "down": proxy_down // len(history)},
              "flower_payload_bytes_per_round": {"up": flower_up // len(history), "down": flower_down // len(history)},
              "fleet_requests": {route: {"requests": n, "in": i, "out": o} for route, (n, i, o) in sorted(by_route.items())}}
    (door.root / "door-bytes.json").write_text(json.dumps(report, indent=1))
    print("\nbytes through the proxy:", json.dumps(report, indent=1))
    assert proxy_up >= flower_up and proxy_down >= flower_down  # every adapter went through the door
