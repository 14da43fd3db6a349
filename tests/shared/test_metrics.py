"""One owner of the metric names: every list elsewhere is derived from `fedpoint.shared.metrics`."""

from fedpoint.shared import metrics as M
from fedpoint.shared.payload import ALLOWED_METRICS, METRIC_RANGES


def test_click_metrics_scores_exactly_the_named_keys():
    out = M.click_metrics([0.5, 0.86, 0.91, 0.95])
    assert tuple(out) == M.CLICK_METRICS + (M.CLICKS,)
    assert out["dice3"] == 0.91 and out["noc85"] == 2 and out["noc90"] == 3 and out["nof"] == 0.0
    assert M.CLICK_METRICS == ("dice1", "dice3", "dice5", "dice10", "noc85", "noc90", "nof")


def test_every_column_has_one_header():
    for key in set(M.SUMMARY_COLUMNS) | set(M.SITE_METRICS) | set(M.SUMMARY_KEYS):
        assert key in M.HEADERS
    assert [M.HEADERS[k] for k in M.SITE_METRICS] == ["Dice@1", "Dice@3", "Dice@5", "Dice@10", "Dice-AUC",
                                                       "NoC@85", "NoC@90", "NoF"]
    assert M.is_fraction("dice_auc") and M.is_fraction("nof") and not M.is_fraction("noc90")


def test_the_lists_elsewhere_derive_from_the_owner():
    from fedpoint.client.stream import summarize_stream
    from fedpoint.simulations.pretrain_config import METRIC_KEYS
    from fedpoint.simulations.report import HEADLINE_COLUMNS
    from fedpoint.simulations.arms import IMAGE_KEYS

    assert METRIC_KEYS == M.CLICK_METRICS
    assert set(M.SITE_METRICS + (M.CLICKS,) + M.TIMING_KEYS) <= set(IMAGE_KEYS)
    assert set(M.CLICK_METRICS) <= ALLOWED_METRICS and set(M.CLICK_METRICS) <= set(METRIC_RANGES)
    assert all(label == M.HEADERS[key] for key, label, _ in HEADLINE_COLUMNS if key in M.HEADERS)
    record = {k: 1.0 for k in M.SUMMARY_KEYS}
    assert set(summarize_stream([record])) == set(M.SUMMARY_KEYS) | {"images", "guard_rejected"}
