"""fedpoint.client.service.app: the app's lifespan starts and stops the bank watcher, each error a
client can cause has its status, and a message never shows a server path."""

from __future__ import annotations

from service_helpers import LiveServer

from fedpoint.client.service.app import public_message


def test_public_messages_keep_the_file_name_not_the_server_path():
    assert public_message("cannot read /srv/site/images/case1.nii.gz: truncated") == "cannot read case1.nii.gz: truncated"
    assert public_message("/var/lib/fedpoint/store/") == "store"
    for kept in ("images/case1.nii.gz is empty", "see https://example.org/a/b/c", "ratio 3/4/5"):
        assert public_message(kept) == kept


def test_the_bank_watcher_runs_while_the_app_serves_and_errors_have_their_status(make_config):
    with LiveServer(make_config(bank_poll_s=0.2)) as live:
        watcher = live.state.banks._thread
        assert watcher is not None and watcher.is_alive()
        assert live.anonymous.get("/health").json() == {"status": "ok"}
        missing = live.client.get("/datastore/image", params={"image": "no-such-image"})
        assert missing.status_code == 404  # LookupError
        early = live.client.post("/train/")
        assert early.status_code == 409 and "accept at least" in early.json()["detail"]  # NotEnoughCases
        bad = live.client.get("/datastore/image")  # FastAPI's own check: 422 naming the field
        assert bad.status_code == 422 and "image" in bad.json()["detail"]
    assert not watcher.is_alive()  # the lifespan's end stopped it
