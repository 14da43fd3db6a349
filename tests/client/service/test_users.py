"""Named users (one token each, hashed, expiring, revocable), the audit log, MONAI Label's login
routes, and HTTPS straight from site.toml: all through the real service on a socket."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
from service_helpers import TOKEN, LiveServer, self_signed

from fedpoint.client.service.users import TOKEN_PREFIX, AuditLog, TokenRefused, UserError, UserRegistry


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def toml(site, tiny_base_2d):
    """The site's site.toml, for the CLI."""
    path = site["root"] / "site.toml"
    path.write_text(f'site = "test-site"\nstore = "{site["store"]}"\nimages = "{site["images"]}"\n'
                    f'base = "{tiny_base_2d}"\ntoken = "{TOKEN}"\n')
    return path


# ------------------------------------------------------------------------------ the registry
def test_tokens_are_stored_hashed_and_lapse(tmp_path):
    registry = UserRegistry(tmp_path / "users.json")
    alice = registry.add("alice")
    bob = registry.add("bob", days=1.0)
    assert alice.startswith(TOKEN_PREFIX) and alice != bob
    text = (tmp_path / "users.json").read_text()
    assert alice not in text and bob not in text, "only hashes may be stored"
    assert (tmp_path / "users.json").stat().st_mode & 0o077 == 0
    assert registry.resolve(alice) == "alice" and registry.resolve(bob) == "bob"
    assert registry.resolve(TOKEN_PREFIX + "not-a-user") is None and registry.resolve(TOKEN) is None
    with pytest.raises(TokenRefused, match="bob.*expired"):
        registry.resolve(bob, now=time.time() + 2 * 86400)
    with pytest.raises(UserError, match="exists"):
        registry.add("alice")
    registry.revoke("alice")
    with pytest.raises(TokenRefused, match="alice.*revoked"):
        registry.resolve(alice)
    renewed = registry.add("alice", replace=True)
    assert registry.resolve(renewed) == "alice"
    with pytest.raises(UserError, match="no user 'carol'"):
        registry.revoke("carol")
    with pytest.raises(ValueError):
        registry.add("../evil")


def test_a_broken_registry_lets_nobody_in(tmp_path):
    registry = UserRegistry(tmp_path / "users.json")
    token = registry.add("alice")
    (tmp_path / "users.json").write_text("{not json")
    with pytest.raises(UserError, match="cannot be read"):
        registry.resolve(token)


# ------------------------------------------------------------------------------ through the service
@pytest.fixture
def named(make_config, site):
    """A live service with two named users (tokens issued before it starts)."""
    registry = UserRegistry(site["store"] / "users.json")
    tokens = {name: registry.add(name) for name in ("alice", "bob")}
    with LiveServer(make_config()) as server:
        yield server, tokens, registry


def test_the_user_comes_from_the_token_not_the_header(named, site):
    live, tokens, _ = named
    claim = {**bearer(tokens["alice"]), "X-Fedpoint-User": "bob"}  # alice types bob's name
    assert live.anonymous.get("/api/me", headers=claim).json() == {"user": "alice", "named": True}
    r = live.anonymous.post("/api/sessions/img0/click", json={"point": [24, 24]}, headers=claim)
    assert r.status_code == 200
    assert live.state.sessions.get(("img0", "alice", None, "object")) is not None
    assert live.state.sessions.get(("img0", "bob", None, "object")) is None
    r = live.anonymous.post("/api/sessions/img0/accept", json={}, headers=claim)
    assert r.status_code == 200, r.text
    meta = json.loads((site["store"] / "cache" / r.json()["case"] / "meta.json").read_text())
    assert meta["user"] == "alice"
    audit = AuditLog(site["store"] / "audit.jsonl").read()
    assert [(e["user"], e["action"], e["image"]) for e in audit] == [("alice", "click", "img0"), ("alice", "accept", "img0")]
    assert audit[1]["case"] == r.json()["case"] and audit[1]["voxels"] > 0
    # with named users, the site token is off unless allow_shared_token = true (test_hostile_service_roots)
    assert live.client.get("/api/me", headers={"X-Fedpoint-User": "carol"}).status_code == 401


def test_revoking_takes_effect_on_the_running_service(named, site, toml):
    live, tokens, _ = named
    assert live.anonymous.get("/api/status", headers=bearer(tokens["bob"])).status_code == 200
    done = subprocess.run([sys.executable, "-m", "fedpoint", "site", "user", "revoke", "bob", "--config", str(toml)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    r = live.anonymous.get("/api/status", headers=bearer(tokens["bob"]))
    assert r.status_code == 401 and "revoked" in r.json()["detail"] and "bob" in r.json()["detail"]
    assert live.anonymous.get("/api/status", headers=bearer(tokens["alice"])).status_code == 200
    assert any(e["action"] == "user_revoke" and e["user_name"] == "bob" for e in AuditLog(site["store"] / "audit.jsonl").read())


def test_an_expired_token_is_refused_with_its_date(make_config, site):
    registry = UserRegistry(site["store"] / "users.json")
    token = registry.add("dana", days=0.5 / 86400)  # half a second
    time.sleep(0.6)
    with LiveServer(make_config()) as live:
        r = live.anonymous.get("/api/status", headers=bearer(token))
        assert r.status_code == 401 and "expired" in r.json()["detail"] and "dana" in r.json()["detail"]


def test_shared_token_can_be_turned_off(make_config, site):
    token = UserRegistry(site["store"] / "users.json").add("alice")
    with LiveServer(make_config(allow_shared_token=False)) as live:
        r = live.client.get("/api/status")
        assert r.status_code == 401 and "named users" in r.json()["detail"]
        assert live.anonymous.get("/api/status", headers=bearer(token)).status_code == 200


def test_monai_label_login_routes(named):
    live, tokens, _ = named
    assert live.anonymous.get("/auth/").json()["enabled"] is True
    ok = live.anonymous.post("/auth/token", data={"username": "alice", "password": tokens["alice"], "grant_type": "password"})
    assert ok.status_code == 200 and ok.json() == {"access_token": tokens["alice"], "token_type": "bearer"}
    wrong_name = live.anonymous.post("/auth/token", data={"username": "bob", "password": tokens["alice"]})
    wrong_token = live.anonymous.post("/auth/token", data={"username": "alice", "password": TOKEN_PREFIX + "x" * 40})
    assert wrong_name.status_code == 401 and wrong_token.status_code == 401
    assert "user name or token" in wrong_token.json()["detail"]
    valid = live.anonymous.get("/auth/token/valid", headers=bearer(tokens["alice"]))
    assert valid.status_code == 200 and valid.json()["username"] == "alice"
    assert live.anonymous.get("/auth/token/valid", headers=bearer("wrong-token-of-some-length")).status_code == 401
    # the MONAI Label save goes under the token's user, whatever client_id says
    r = live.anonymous.post("/infer/fedpoint?image=img1&output=json", headers=bearer(tokens["bob"]),
                            data={"params": json.dumps({"foreground": [[24, 24]], "client_id": "alice"})})
    assert r.status_code == 200, r.text
    assert live.state.sessions.get(("img1", "bob", None, "object")) is not None


# ------------------------------------------------------------------------------ the CLI
def test_user_add_prints_only_to_a_terminal(site, toml, tmp_path):
    base = [sys.executable, "-m", "fedpoint", "site", "user"]
    refused = subprocess.run([*base, "add", "erin", "--config", str(toml)], capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "--token-out" in refused.stderr and TOKEN_PREFIX not in refused.stdout
    out = tmp_path / "erin.token"
    added = subprocess.run([*base, "add", "erin", "--days", "30", "--config", str(toml), "--token-out", str(out)],
                           capture_output=True, text=True, timeout=120)
    assert added.returncode == 0, added.stderr
    token = out.read_text().strip()
    assert token.startswith(TOKEN_PREFIX) and token not in added.stdout and out.stat().st_mode & 0o077 == 0
    listed = subprocess.run([*base, "list", "--config", str(toml)], capture_output=True, text=True, timeout=120)
    assert "erin" in listed.stdout and "active" in listed.stdout and "expires" in listed.stdout and token not in listed.stdout
    assert UserRegistry(site["store"] / "users.json").resolve(token) == "erin"


# ------------------------------------------------------------------------------ TLS
def test_https_from_site_toml(make_config, tmp_path):
    cert, key = self_signed(tmp_path)
    with LiveServer(make_config(tls_cert=str(cert), tls_key=str(key))) as live:
        assert live.url.startswith("https://")
        assert live.client.get("/api/status").status_code == 200
        import httpx

        with pytest.raises(httpx.ConnectError):  # a client that does not trust the certificate cannot talk to it
            httpx.get(live.url + "/health", timeout=10)


def test_a_tls_key_that_does_not_match_is_refused_at_load(make_config, tmp_path):
    from fedpoint.client.service import ServiceConfigError

    cert, _ = self_signed(tmp_path, "one")
    _, other_key = self_signed(tmp_path, "two")
    with pytest.raises(ServiceConfigError, match="tls_key.*does not match"):
        make_config(tls_cert=str(cert), tls_key=str(other_key))
    with pytest.raises(ServiceConfigError, match="both tls_cert and tls_key"):
        make_config(tls_cert=str(cert))
    with pytest.raises(ServiceConfigError, match="does not exist"):
        make_config(tls_cert=str(tmp_path / "missing.crt"), tls_key=str(other_key))
