"""The coordinator's door on loopback: nginx (deploy/start-proxy.sh) terminating TLS in front of a
SuperLink bound to loopback, authenticated SuperNodes connecting through the proxy (beside one that
connects to the SuperLink directly), the operator running `flwr` through its bridge with the
operator's certificate, and an outsider holding `ca.crt` and a site's key, who gets nothing but the
Fleet API. Bytes per round through the proxy (its access log) are reported beside Flower's payload
sizes (federation.json). The consortium is tests/deploy/conftest.py's, shared with
test_deployment.py."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
from consortium import BIN, DEPLOY, NGINX, PROXIED, SITES

pytestmark = [pytest.mark.slow, pytest.mark.flower,
              pytest.mark.skipif(NGINX is None, reason="nginx is not installed (Debian package nginx; make system-packages)")]
ACCESS = re.compile(r'"(\w+) (\S+)" (\d+) route=(\w+) operator=(\w+) in=(\d+) out=(\d+)')


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


def test_an_outsider_with_the_ca_and_a_site_key_gets_nothing_but_the_fleet_api(consortium):
    import httpx

    outsider = {**consortium.env, "FLWR_HOME": str(consortium.root / "outsider-flwr")}
    added = subprocess.run([DEPLOY / "add-connection.sh", "outside", f"127.0.0.1:{consortium.port}",
                            consortium.certs / "ca.crt"], env=outsider, capture_output=True, text=True, timeout=60)
    assert added.returncode == 0, added.stderr

    def flwr(*args, env=outsider):
        return subprocess.run([BIN / "flwr", *map(str, args)], cwd=Path(__file__).resolve().parents[2], env=env,
                              capture_output=True, text=True, timeout=120)

    attempts = {
        "flwr ls": flwr("ls", "outside", "--format", "json"),
        "flwr run": flwr("run", ".", "outside", "--format", "json"),
        "flwr supernode register": flwr("supernode", "register", consortium.certs / "sites" / "intruder.pub", "outside",
                                        "--format", "json"),
    }
    routes = control_and_runtime_routes(consortium)
    assert any(r.startswith("/v1/runtime/") for r in routes) and "/v1/control/list-runs" in routes
    protobuf = {"content-type": "application/protobuf", "accept": "application/protobuf"}  # as Flower's clients send
    key_headers = {**protobuf, "flwr-public-key": "x", "flwr-signature": "x", "flwr-timestamp": "x"}  # and a site's
    with httpx.Client(verify=str(consortium.certs / "ca.crt"), timeout=30) as client:
        at_proxy = {r: client.post(f"https://127.0.0.1:{consortium.port}{r}", content=b"",
                                   headers=key_headers).status_code for r in routes}
        bare = {r: client.post(f"https://127.0.0.1:{consortium.link_port}{r}", content=b"", headers=protobuf).status_code
                for r in routes}
    successes = [name for name, done in attempts.items() if succeeded(done)] + [r for r, s in at_proxy.items() if s < 400]
    print(f"\noutsider at the proxy: {len(attempts)} flwr commands and {len(routes)} control/runtime routes, "
          f"{len(successes)} succeeded; the same routes at the bare SuperLink: "
          f"{sum(s < 400 for s in bare.values())} answered below 400")
    assert successes == []
    assert set(at_proxy.values()) == {403}
    # Side by side: on the coordinator's loopback the same commands work (the test can fail).
    assert succeeded(flwr("ls", "coordinator-host", "--format", "json", env=consortium.env))
    assert bare["/v1/control/list-runs"] == 200 and sum(s < 400 for s in bare.values()) > 1
    # A SuperNode with the outsider's own key is refused through the proxy.
    intruder = consortium.start_site("intruder")
    assert intruder.wait(timeout=240) != 0 and "SuperNode ID:" not in consortium.log("intruder.log")


def test_the_operator_runs_the_federation_through_the_proxy_with_its_certificate(consortium, federation):
    assert federation["status"] == "finished:completed"
    history = federation["rounds"]
    assert [r["round"] for r in history] == [1, 2]
    assert all(s["status"] == "accepted" for r in history for s in r["sites"].values())
    assert set(history[0]["sites"]) == set(SITES)

    hits = [m.groups() for m in map(ACCESS.search, federation["access"]) if m]
    control = [h for h in hits if h[3] == "control"]
    assert control and all(h[4] == "yes" and h[2] == "200" for h in control)  # the operator's calls, by certificate
    fleet = [h for h in hits if h[3] == "fleet" and h[2] == "200"]
    proxy_up, proxy_down = sum(int(h[5]) for h in fleet), sum(int(h[6]) for h in fleet)
    behind = [s for r in history for site, s in r["sites"].items() if site in PROXIED]  # the direct site bypasses the door
    flower_up, flower_down = sum(s["bytes_up"] for s in behind), sum(s["bytes_down"] for s in behind)
    by_route: dict[str, list[int]] = {}
    for h in fleet:
        totals = by_route.setdefault(h[1], [0, 0, 0])
        totals[0], totals[1], totals[2] = totals[0] + 1, totals[1] + int(h[5]), totals[2] + int(h[6])
    report = {"rounds": len(history), "sites": len(PROXIED),
              "proxy_fleet_bytes_per_round": {"up": proxy_up // len(history), "down": proxy_down // len(history)},
              "flower_payload_bytes_per_round": {"up": flower_up // len(history), "down": flower_down // len(history)},
              "fleet_requests": {route: {"requests": n, "in": i, "out": o} for route, (n, i, o) in sorted(by_route.items())}}
    (consortium.root / "door-bytes.json").write_text(json.dumps(report, indent=1))
    print("\nbytes through the proxy:", json.dumps(report, indent=1))
    assert flower_up > 0 and flower_down > 0
    assert proxy_up >= flower_up and proxy_down >= flower_down  # every adapter of a site behind it went through the door
