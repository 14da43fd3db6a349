"""The coordinator's proxy config (deploy/start-proxy.sh from deploy/nginx/proxy.conf.in), served by
the real nginx in front of a stand-in HTTPS upstream on loopback: the Fleet API is forwarded, the
Control API only with the operator's certificate, every other route is refused at the proxy."""

from __future__ import annotations

import http.client
import http.server
import os
import shutil
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
pytestmark = pytest.mark.skipif(NGINX is None, reason="nginx is not installed (Debian package nginx; make system-packages)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Upstream(http.server.BaseHTTPRequestHandler):
    """Answers 200 with the path it was asked for: what reached the SuperLink's place."""

    def do_POST(self):  # noqa: N802 - http.server's name
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = self.path.encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def proxy(tmp_path_factory):
    root = tmp_path_factory.mktemp("proxy")
    certs = root / "certs"
    env = {**os.environ, "CA_BITS": "2048"}
    made = subprocess.run([REPO / "deploy" / "make-certs.sh", certs, "site-a"], env=env, capture_output=True, text=True,
                          timeout=120)
    assert made.returncode == 0, made.stderr
    upstream = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Upstream)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certs / "superlink.pem", certs / "superlink.key")
    upstream.socket = context.wrap_socket(upstream.socket, server_side=True)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    port = free_port()
    env |= {"LISTEN": f"127.0.0.1:{port}", "UPSTREAM": f"127.0.0.1:{upstream.server_address[1]}", "NGINX_BIN": NGINX}
    log = open(root / "proxy.log", "w")
    process = subprocess.Popen([REPO / "deploy" / "start-proxy.sh", certs, root / "state"], env=env, stdout=log,
                               stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not _listening(port):
            assert process.poll() is None, (root / "proxy.log").read_text()
            time.sleep(0.2)
        yield {"port": port, "certs": certs, "state": root / "state"}
    finally:
        process.terminate()
        process.wait(15)
        upstream.shutdown()


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def request(proxy, path: str, operator: bool = False, method: str = "POST") -> tuple[int, str]:
    context = ssl.create_default_context(cafile=str(proxy["certs"] / "ca.crt"))
    if operator:
        context.load_cert_chain(proxy["certs"] / "operator.pem", proxy["certs"] / "operator.key")
    connection = http.client.HTTPSConnection("127.0.0.1", proxy["port"], context=context, timeout=10)
    try:
        connection.request(method, path, body=b"x")  # the path exactly as written: no client-side normalising
        response = connection.getresponse()
        return response.status, response.read().decode(errors="replace")
    finally:
        connection.close()


def test_the_fleet_api_is_forwarded_to_anyone_with_the_ca(proxy):
    assert request(proxy, "/v1/fleet/pull-messages") == (200, "/v1/fleet/pull-messages")


def test_the_control_api_needs_the_operators_certificate(proxy):
    assert request(proxy, "/v1/control/list-runs")[0] == 403
    assert request(proxy, "/v1/control/list-runs", operator=True) == (200, "/v1/control/list-runs")


def test_a_site_key_is_no_operator_certificate(proxy, tmp_path):
    """A certificate the CA did not issue, self-signed with the operator's very name, is refused."""
    key, cert = tmp_path / "fake.key", tmp_path / "fake.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-keyout", key, "-out", cert,
                    "-subj", "/CN=fedpoint operator"], check=True, capture_output=True, timeout=60)
    context = ssl.create_default_context(cafile=str(proxy["certs"] / "ca.crt"))
    context.load_cert_chain(cert, key)
    connection = http.client.HTTPSConnection("127.0.0.1", proxy["port"], context=context, timeout=10)
    try:
        connection.request("POST", "/v1/control/list-runs", body=b"x")
        status = connection.getresponse().status
    except (ssl.SSLError, ConnectionError):
        status = None  # refused in the handshake: refused all the same
    finally:
        connection.close()
    assert status in (None, 400, 403)


@pytest.mark.parametrize("path", [
    "/v1/runtime/acquire-task", "/docs", "/openapi.json", "/health", "/", "/v1/fleet", "/v1/fleetx/pull-messages",
    "/v1/fleet/../control/list-runs", "/v1/fleet/%2e%2e/control/list-runs", "/v1/fleet/pull-messages?x=1",
    "/v1/fleet/pull-messages/../../runtime/acquire-task", "/v1/control/../runtime/acquire-task", "/v2/fleet/x",
])
def test_a_route_not_listed_is_refused_even_to_the_operator(proxy, path):
    assert request(proxy, path)[0] in (400, 403)
    assert request(proxy, path, operator=True)[0] in (400, 403)


def test_the_access_log_counts_each_requests_bytes(proxy):
    request(proxy, "/v1/fleet/push-messages")
    log = proxy["state"] / "proxy-access.log"
    wanted = '"POST /v1/fleet/push-messages" 200 route=fleet operator=no'
    deadline = time.monotonic() + 10  # nginx writes the log line after it has answered: it may lag the reply
    while time.monotonic() < deadline and wanted not in log.read_text().splitlines()[-1]:
        time.sleep(0.05)
    line = log.read_text().splitlines()[-1]
    assert wanted in line and " in=" in line and " out=" in line


def test_the_superlink_must_sit_on_loopback(tmp_path, proxy):
    env = {**os.environ, "UPSTREAM": "10.0.0.5:9093", "NGINX_BIN": NGINX}
    done = subprocess.run([REPO / "deploy" / "start-proxy.sh", proxy["certs"], tmp_path], env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2 and "loopback" in done.stderr
