"""A real consortium on loopback, started with the deploy/ scripts (tests/deploy/conftest.py): a CA
and keys, a SuperLink with TLS, a state database and SuperNode authentication, registered sites whose
SuperNodes train on their own site stores (one of them connecting to the SuperLink directly, the
others through the proxy, whose own tests are in test_proxy_deployment.py), and the `flwr` CLI.
Checks that runs finish as completed (`flwr run` exits 0 even when a run fails, so the run's status
is read with `flwr ls`), that banks get new versions, that an unregistered key is refused, and that
a site dying mid-round is left out of the round."""

from __future__ import annotations

import pytest
from consortium import DIRECT, DOOMED, SITES, rounds, run_config, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.flower]


def test_an_unregistered_site_is_refused(consortium):
    intruder = consortium.start_site("intruder", port=consortium.link_port, log="intruder-direct.log")
    code = intruder.wait(timeout=240)
    assert code != 0
    assert "SuperNode ID:" not in consortium.log("intruder-direct.log")


def test_two_rounds_over_tls_with_authenticated_sites(consortium, federation):
    from fedpoint.server.banks import BankStore

    assert federation["status"] == "finished:completed"
    store = BankStore(consortium.root / federation["name"] / "banks")
    assert {b: store.versions(b) for b in store.banks()} == {"general": [1, 2, 3], "modality-ct": [1, 2],
                                                            "modality-mr": [1, 2]}
    history = federation["rounds"]
    assert [r["round"] for r in history] == [1, 2]
    assert all(set(r["sites"]) == set(SITES) for r in history)  # the direct site and the ones behind the proxy
    assert all(s["status"] == "accepted" for r in history for s in r["sites"].values())
    assert history[1]["sites"]["site-c"]["bank"] == history[1]["sites"][next(iter(DIRECT))]["bank"] == "modality-ct"
    site_store = consortium.root / "stores" / "site-a"
    assert (site_store / "banks" / "modality-mr" / "v0001").is_dir()  # the bank is left for the annotation service


def test_a_site_dying_mid_round_is_left_out(consortium):
    """The dying site connects to the SuperLink directly, and the operator runs `flwr` on the
    coordinator's host over TLS (the other tests' runs go through the operator's bridge)."""
    from fedpoint.server.banks import BankStore

    (site,) = DOOMED
    doomed = consortium.start_site(site, port=consortium.link_port)
    consortium.wait_connected(site)
    config = run_config(consortium, "with-failure", **{"num-server-rounds": 1, "min-train-nodes": len(SITES) + 1,
                                                       "round-timeout": 150.0})
    run_id = consortium.run("coordinator-host", **config)
    wait_until(lambda: "Receiving: train message" in consortium.log(f"{site}.log"), 300, f"{site} to get its round")
    consortium.stop(doomed, crash=True)  # the hospital's machine goes down as its ClientApp starts
    assert consortium.wait_run(run_id, "coordinator-host") == "finished:completed"
    sites = rounds(consortium, "with-failure")[0]["sites"]
    assert {s: v["status"] for s, v in sites.items() if s != site} == dict.fromkeys(SITES, "accepted")
    assert sites.get(site, {}).get("status", "no reply") in ("failed", "no reply")
    assert BankStore(consortium.root / "with-failure" / "banks").versions("general") == [1, 2]
