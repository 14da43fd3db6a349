"""Headline, targets, report.md and plots from hand-made records (no model runs)."""

from __future__ import annotations

import math

import pytest

from fedpoint.simulations.report import compute_headline, evaluate_targets, human_bytes, write_report
from fedpoint.simulations.plots import write_plots

IPR = 2  # images per round


def rec(strategy, seed, site, index, noc90, dice3, *, shifted=True, late=False, dice5=None):
    join = 1 if late else 0
    return {"strategy": strategy, "seed": seed, "site": site, "modality": "CT", "shift": "bias" if shifted else "none",
            "shifted": shifted, "late": late, "join_round": join, "round": join + index // IPR + 1, "index": index,
            "case_id": f"{site}-{index}", "object": "lesion", "dices": [dice3] * 3, "dice1": dice3, "dice3": dice3,
            "dice5": dice3 if dice5 is None else dice5, "dice10": dice3, "dice_auc": dice3, "noc85": noc90, "noc90": noc90,
            "nof": float(noc90 == 20), "clicks": 3, "predict_ms": 5.0, "update_ms": 7.0, "post_ms": 9.0, "seconds": 0.5}


def rounds(strategy, seed, up, down, sites=("a", "b"), n_rounds=2):
    return [{"strategy": strategy, "seed": seed, "round": r, "site": s, "bytes_up": up, "bytes_down": down,
             "images": IPR, "seconds": 1.0} for r in range(1, n_rounds + 1) for s in sites]


def dataset(frozen_noc=(10, 10), banks_noc=(6, 8), late_frozen=0.5, late_banks=0.62, b_banks_noc=12):
    images = []
    for seed, (fz, bk) in enumerate(zip(frozen_noc, banks_noc)):
        for i in range(4):
            images.append(rec("frozen", seed, "a", i, fz, 0.6))
            images.append(rec("fed-banks", seed, "a", i, bk, 0.8))
            images.append(rec("fed-full", seed, "a", i, bk, 0.8, dice5=0.805))
        # site b has a single image: site means weigh sites equally
        images.append(rec("frozen", seed, "b", 0, 20, 0.2))
        images.append(rec("fed-banks", seed, "b", 0, b_banks_noc, 0.4))
        images.append(rec("fed-full", seed, "b", 0, 12, 0.4, dice5=0.405))
        # an unshifted site is left out of the headline
        images.append(rec("frozen", seed, "plain", 0, 1, 0.99, shifted=False))
        images.append(rec("fed-banks", seed, "plain", 0, 1, 0.99, shifted=False))
        images.append(rec("fed-full", seed, "plain", 0, 1, 0.99, shifted=False))
        # late joiner: only its first round (index < IPR) counts for late_dice3
        for i, (lf, lb) in enumerate([(late_frozen, late_banks), (late_frozen, late_banks), (0.0, 0.0)]):
            images.append(rec("frozen", seed, "late", i, 20, lf, late=True))
            images.append(rec("fed-banks", seed, "late", i, 20, lb, late=True))
            images.append(rec("fed-full", seed, "late", i, 20, lb, late=True))
    rows = []
    for seed in (0, 1):
        rows += rounds("frozen", seed, 0, 0) + rounds("fed-banks", seed, 100, 100) + rounds("fed-full", seed, 6000, 6000)
    return images, rows


def test_headline_means_over_shifted_sites_then_seeds():
    images, rows = dataset()
    head = compute_headline(images, rows, IPR)
    assert list(head) == ["frozen", "fed-banks", "fed-full"]  # canonical order
    # seed 0: frozen (10 + 20) / 2 = 15, seed 1: (10 + 20) / 2 = 15; fed-banks (6+12)/2=9, (8+12)/2=10
    assert head["frozen"]["noc90"] == pytest.approx(15)
    assert head["fed-banks"]["noc90"] == pytest.approx(9.5)
    assert head["fed-banks"]["noc90_sd"] == pytest.approx(math.sqrt(0.5))
    assert head["fed-banks"]["dice3"] == pytest.approx((0.8 + 0.4) / 2)
    assert head["fed-banks"]["scope"] == "shifted" and "plain" not in head["fed-banks"]["sites"]
    assert head["fed-banks"]["late_dice3"] == pytest.approx(0.62)  # the third late image is not a first-round one
    assert head["frozen"]["late_dice3"] == pytest.approx(0.5)
    # 2 sites x (100 up + 100 down) per round
    assert head["fed-banks"]["bytes_per_round"] == pytest.approx(400)
    assert head["frozen"]["bytes_per_round"] == 0
    assert head["fed-banks"]["seeds"] == 2


def test_targets_hold_when_the_numbers_say_so():
    images, rows = dataset()
    targets = {t["name"]: t for t in evaluate_targets(compute_headline(images, rows, IPR))}
    assert targets["noc90-reduction"]["held"] is True
    assert targets["noc90-reduction"]["value"] == pytest.approx(1 - 9.5 / 15)
    assert targets["late-joiner-dice3"]["held"] is True
    assert targets["late-joiner-dice3"]["value"] == pytest.approx(0.12)
    assert targets["bytes-vs-full"]["held"] is True
    assert targets["bytes-vs-full"]["value"] == pytest.approx(60)
    assert targets["bytes-vs-full"]["dice5_gap"] == pytest.approx(-0.005)


def test_targets_are_missed_honestly():
    images, rows = dataset(banks_noc=(9, 9), b_banks_noc=17, late_banks=0.52)
    targets = {t["name"]: t for t in evaluate_targets(compute_headline(images, rows, IPR))}
    assert targets["noc90-reduction"]["value"] == pytest.approx(1 - 13 / 15)  # (9 + 17) / 2 vs (10 + 20) / 2
    assert targets["noc90-reduction"]["held"] is False
    assert targets["late-joiner-dice3"]["held"] is False
    fewer_bytes = [dict(r, bytes_up=r["bytes_up"] * 3, bytes_down=r["bytes_down"] * 3) if r["strategy"] == "fed-banks" else r
                   for r in rows]
    targets = {t["name"]: t for t in evaluate_targets(compute_headline(images, fewer_bytes, IPR))}
    assert targets["bytes-vs-full"]["value"] == pytest.approx(20) and targets["bytes-vs-full"]["held"] is False


def test_missing_strategies_leave_targets_unmeasured():
    images, rows = dataset()
    only_frozen = [r for r in images if r["strategy"] == "frozen"]
    targets = evaluate_targets(compute_headline(only_frozen, rows, IPR))
    assert [t["held"] for t in targets] == [None, None, None]


def test_human_bytes():
    assert human_bytes(0) == "0"
    assert human_bytes(512) == "512 B"
    assert human_bytes(2_400_000) == "2.4 MB"


def test_report_and_plots_are_written(tmp_path):
    images, rows = dataset()
    headline = compute_headline(images, rows, IPR)
    results = {
        "experiment": {"name": "hand", "sites": [{}, {}, {}, {}], "rounds": 2, "images_per_round": IPR, "clicks": 3,
                       "size": 48, "adapter": "norm", "seeds": [0, 1]},
        "headline": headline, "targets": evaluate_targets(headline), "images": images, "rounds": rows,
        "data": {"modalities": ["CT"], "datasets": [{"name": "pyradiomics-lung", "modality": "CT", "subjects": 2, "cases": 2,
                 "labels": "mixed", "derived_objects": ["lung-field", "body"], "notes": "n", "source": "s", "licence": "l"}],
                 "sites": [{"name": "a", "dataset": "pyradiomics-lung", "modality": "CT", "shift": "bias", "join_round": 0,
                            "images": 4, "objects": ["lesion"]}]},
        "environment": {"machine": "2 CPU cores, no GPU"}, "seconds": 12.0, "strategy_seconds": {"frozen": 1.0},
    }
    plots = write_plots(results, tmp_path)
    assert plots == ["dice_vs_images.png", "noc90.png", "clicks_saved.png", "bytes_per_round.png"]
    for name in plots:
        data = (tmp_path / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    text = write_report(results, tmp_path / "report.md", plots)
    lines = text.splitlines()
    table_start = next(i for i, line in enumerate(lines) if line.startswith("| strategy"))
    assert table_start < 6, "the report opens with the headline table"
    assert "| fed-banks | 9.50 ± 0.71 |" in text
    assert "**held**" in text and "derived labels" in text and "lung-field, body" in text
    assert all(f"]({p})" in text for p in plots)
    assert "48×48 px object crops" in text.splitlines()[2]
    results["experiment"]["whole_slices"] = True
    results["data"]["sites"][0]["image_shapes"] = [[512, 512], [256, 256]]
    assert "whole slices at native resolution (512×512, 256×256 px)" in write_report(results, tmp_path / "r2.md", plots)
    # where the NoC@90 target holds: site a 10 -> 7 (-30%), site b 20 -> 12 (-40%)
    assert "| a | CT | shifted | 10.00 | 7.00 | +30.0% | 0/8 |" in text
