"""The session registry (`sessions`): one key type, per-user eviction."""

from __future__ import annotations

from fedpoint.client.service.sessions import OpenSession, SessionKey, SessionRegistry


def test_a_session_key_is_its_fields_and_equals_the_plain_tuple():
    key = SessionKey("img0", "ana", None, "liver")
    assert key == ("img0", "ana", None, "liver") and hash(key) == hash(("img0", "ana", None, "liver"))
    entry = OpenSession(key, session=None)
    assert (entry.image_id, entry.user, entry.slice, entry.structure) == ("img0", "ana", None, "liver")


def test_past_the_limit_the_user_holding_most_loses_their_oldest():
    registry = SessionRegistry(max_sessions=3)
    for key in [SessionKey("a", "ana", 0, "s"), SessionKey("b", "bob", None, "s"), SessionKey("a", "ana", 1, "s"),
                SessionKey("a", "ana", 2, "s")]:
        registry.get_or_open(key, lambda: None)
    assert len(registry) == 3
    assert registry.get(("a", "ana", 0, "s")) is None  # ana's oldest went, bob's only one stayed
    assert registry.get(("b", "bob", None, "s")) is not None
    assert [e.slice for e in registry.of_user("a", "ana")] == [1, 2]
