"""Reply screening: each kind of bad reply is rejected with a reason, the others go through."""

from __future__ import annotations

import numpy as np
import pytest

from fedpoint.server.checks import Reply, clip_delta, delta_norm, screen_replies


@pytest.fixture
def round_of_replies(adapter_state, make_reply):
    adapter, bank, fingerprint = adapter_state("norm")
    good = [make_reply(bank, fingerprint, f"site-{i}", seed=i) for i in range(4)]
    return adapter.schema(), fingerprint, bank, good


def _bad(reply: Reply, site: str, **changes) -> Reply:
    return Reply(**{**reply.__dict__, "site_id": site, **changes})


def test_each_bad_reply_is_rejected_with_a_reason_and_the_good_ones_accepted(round_of_replies):
    schema, fingerprint, bank, good = round_of_replies
    name = sorted(bank)[0]
    template = good[0]
    nan_delta = {k: v.copy() for k, v in template.delta.items()}
    nan_delta[name].flat[0] = np.nan
    bad = [
        _bad(template, "nan-site", delta=nan_delta),
        _bad(template, "shape-site", delta={**template.delta, name: np.zeros(3, np.float32)}),
        _bad(template, "extra-site", delta={**template.delta, "model.0.conv.weight": np.zeros(3, np.float32)}),
        _bad(template, "base-site", fingerprint="0" * 32),
        _bad(template, "huge-site", delta={k: v * 1000 for k, v in template.delta.items()}),
        _bad(template, "empty-site", weight=0),
        _bad(template, "metric-site", metrics={"patient-name": 1.0}),
    ]
    accepted, rejected = screen_replies(good + bad, schema, fingerprint)
    assert [r.site_id for r in accepted] == [r.site_id for r in good]
    reasons = {reply.site_id: reason for reply, reason in rejected}
    assert set(reasons) == {r.site_id for r in bad}
    assert "non-finite" in reasons["nan-site"]
    assert "shape" in reasons["shape-site"]
    assert "not an adapter parameter" in reasons["extra-site"]
    assert "base" in reasons["base-site"]
    assert "reference norm of its peers" in reasons["huge-site"]
    assert "not positive" in reasons["empty-site"]
    assert "patient-name" in reasons["metric-site"]
    assert all(reason.startswith(f"site {site}:") for site, reason in reasons.items())


def test_missing_key_is_rejected(round_of_replies):
    schema, fingerprint, bank, good = round_of_replies
    dropped = dict(good[0].delta)
    dropped.pop(sorted(bank)[-1])
    _, rejected = screen_replies([_bad(good[0], "short-site", delta=dropped)], schema, fingerprint)
    assert "missing" in rejected[0][1]


def test_a_pair_cannot_raise_its_own_bar(round_of_replies):
    """Two replies: the reference is their lower median, so a 1000x outlier cannot raise its own bar."""
    schema, fingerprint, _, good = round_of_replies
    huge = _bad(good[0], "huge-site", delta={k: v * 1000 for k, v in good[0].delta.items()})
    accepted, rejected = screen_replies([good[1], huge], schema, fingerprint)
    assert [r.site_id for r in accepted] == ["site-1"] and [r.site_id for r, _ in rejected] == ["huge-site"]


def test_clip_delta_scales_to_the_bound_and_leaves_small_deltas_alone(round_of_replies):
    _, _, _, good = round_of_replies
    delta = good[0].delta
    norm = delta_norm(delta)
    same, scale = clip_delta(delta, norm * 2)
    assert scale == 1.0 and same is delta
    clipped, scale = clip_delta(delta, norm / 4)
    assert scale == pytest.approx(0.25)
    assert delta_norm(clipped) == pytest.approx(norm / 4, rel=1e-5)
    assert all(clipped[k].dtype == np.float32 for k in clipped)
