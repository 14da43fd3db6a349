"""`fedpoint site init` and `fedpoint site serve`, as a hospital would run them."""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import sys
import time

import httpx
import pytest
from typer.testing import CliRunner

from fedpoint.cli import app


def test_init_writes_a_site_that_loads(tmp_path):
    from fedpoint.client.service import load_service_config
    from fedpoint.client.service.images import ImageFolder

    folder = tmp_path / "hospital"
    result = CliRunner().invoke(app, ["site", "init", str(folder), "--dataset", "mni152", "--count", "2", "--no-volume"])
    assert result.exit_code == 0, result.output
    assert "fedpoint site serve --config" in result.output
    cfg = load_service_config(folder / "site.toml")
    assert cfg.modality == "MR" and cfg.host == "127.0.0.1" and cfg.images == folder / "images"
    token_file = folder / "site-token"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600 and len(cfg.resolve_token()) >= 32
    images = ImageFolder(cfg.images, cfg.modality, 1)
    assert len(images.ids()) == 2 and all(i.startswith("mni152-") for i in images.ids())
    assert images.load(images.ids()[0]).ndim == 2
    again = CliRunner().invoke(app, ["site", "init", str(folder), "--dataset", "mni152"])
    assert again.exit_code == 2 and "exists" in again.output


def test_serve_reports_config_errors_by_field(tmp_path):
    (tmp_path / "site.toml").write_text('site = "h"\nstore = "s"\nimages = "i"\nport = 0\n')
    result = CliRunner().invoke(app, ["site", "serve", "--config", str(tmp_path / "site.toml")])
    assert result.exit_code == 2 and "site.toml: port: Input should be greater than or equal to 1" in result.output
    (tmp_path / "site.toml").write_text('site = "h"\nstore = "s"\nimages = "i"\n')
    result = CliRunner().invoke(app, ["site", "serve", "--config", str(tmp_path / "site.toml")])
    assert result.exit_code == 2 and "exactly one of token, token_env, token_file" in result.output


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_serve_starts_the_real_service(tmp_path, site, tiny_base_2d):
    token = "cli-token-0123456789abcdef"
    (tmp_path / "site.toml").write_text(
        f'site = "cli"\nmodality = "MR"\nstore = "{site["store"]}"\nimages = "{site["images"]}"\n'
        f'base = "{tiny_base_2d}"\ntoken_env = "FEDPOINT_TEST_TOKEN"\nmode = "mid+post"\n')
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-c", "from fedpoint.cli import main; main()", "site", "serve",
         "--config", str(tmp_path / "site.toml"), "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ, "FEDPOINT_TEST_TOKEN": token})
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 180
        while True:
            assert process.poll() is None, process.stdout.read().decode()
            assert time.monotonic() < deadline, "the service did not start in time"
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.3)
        assert httpx.get(f"{url}/api/status", timeout=30).status_code == 401
        status = httpx.get(f"{url}/api/status", headers={"Authorization": f"Bearer {token}"}, timeout=30).json()
        assert status["site"] == "cli" and status["images"]["total"] == 4
    finally:
        process.send_signal(signal.SIGINT)
        try:
            output = process.communicate(timeout=60)[0].decode()
        except subprocess.TimeoutExpired:
            process.kill()
            output = process.communicate()[0].decode()
    assert f"http://127.0.0.1:{port}/#token=<token>" in output  # a pipe is not a terminal: never the token
    assert token not in output and "$FEDPOINT_TEST_TOKEN" in output
