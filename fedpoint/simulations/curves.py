"""Learning curves, the headline: NoC@90, NoC@85 and Dice@1 against images annotated, per arm,
with bootstrap intervals over seeds and images; and the clicks each arm saves against frozen.

Images are binned by their position in the site's stream (`index`): bin b holds the images
`b * width .. (b + 1) * width - 1` of every site present from round 1 (late joiners have their own
scope in the comparisons). An interval is a two-level percentile bootstrap: seeds drawn with
replacement, then, within each drawn seed, the (site, image) units of the bin. Against frozen the
same is done on paired differences (the same seed, site and image under both arms).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Sequence

import numpy as np

CURVE_METRICS = ("noc90", "noc85", "dice1")
REFERENCE = "frozen"
N_BOOT = 1000
LEVEL = 0.95


def bin_width(images: Sequence[dict]) -> int:
    """About eight bins over the longest stream, at least one image each."""
    longest = max((r["index"] for r in images), default=0) + 1
    return max(1, int(np.ceil(longest / 8)))


def _hierarchical(values_by_seed: dict[int, np.ndarray], seed: int = 0) -> tuple[float, float, float]:
    """(mean, low, high): the mean over all units, and the bootstrap interval over seeds, then units."""
    seeds = sorted(values_by_seed)
    allv = np.concatenate([values_by_seed[s] for s in seeds])
    if len(allv) == 0:
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    draws = np.empty(N_BOOT)
    for b in range(N_BOOT):
        picked = rng.choice(len(seeds), len(seeds), replace=True)
        parts = [values_by_seed[seeds[i]][rng.integers(0, len(values_by_seed[seeds[i]]), len(values_by_seed[seeds[i]]))]
                 for i in picked]
        draws[b] = np.concatenate(parts).mean()
    alpha = (1 - LEVEL) / 2
    low, high = np.quantile(draws, [alpha, 1 - alpha])
    return float(allv.mean()), float(low), float(high)


def _units(images: Sequence[dict], strategy: str, metric: str) -> dict[tuple, float]:
    return {(r["seed"], r["site"], r["index"]): float(r[metric]) for r in images
            if r["strategy"] == strategy and not r["late"] and metric in r}


def learning_curves(images: Sequence[dict], width: int | None = None) -> dict:
    """The `curves` section of results.json (schema in docs/results-schema.md)."""
    width = width or bin_width(images)
    arms = list(dict.fromkeys(r["strategy"] for r in images))
    points = []
    for metric in CURVE_METRICS:
        reference = _units(images, REFERENCE, metric) if REFERENCE in arms else {}
        for arm in arms:
            units = _units(images, arm, metric)
            bins: dict[int, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
            saved: dict[int, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
            for key, value in units.items():
                seed, _site, index = key
                bins[index // width][seed].append(value)
                if key in reference and arm != REFERENCE:
                    # clicks saved (NoC: frozen - arm) or Dice gained (arm - frozen): positive is better
                    diff = reference[key] - value if metric.startswith("noc") else value - reference[key]
                    saved[index // width][seed].append(diff)
            for b in sorted(bins):
                by_seed = {s: np.asarray(v) for s, v in bins[b].items()}
                mean, low, high = _hierarchical(by_seed, seed=b)
                point = {"strategy": arm, "metric": metric, "bin": b, "images_from": b * width + 1,
                         "images_to": (b + 1) * width, "n": int(sum(len(v) for v in by_seed.values())),
                         "seeds": len(by_seed), "mean": mean, "low": low, "high": high}
                if saved.get(b):
                    gain, gain_low, gain_high = _hierarchical({s: np.asarray(v) for s, v in saved[b].items()}, seed=b)
                    point |= {"vs_frozen": gain, "vs_frozen_low": gain_low, "vs_frozen_high": gain_high}
                points.append(point)
    return {"bin_width": width, "metrics": list(CURVE_METRICS), "reference": REFERENCE, "level": LEVEL,
            "points": points, "second_half": second_half(images)}


def second_half(images: Sequence[dict]) -> list[dict]:
    """Each arm against frozen over the second half of every site's stream (index >= half its
    length), paired on (seed, site, image): mean NoC@90/NoC@85 and the relative reduction with
    its two-level interval; Dice@1 and its gain in points."""
    if not any(r["strategy"] == REFERENCE for r in images):
        return []
    length: dict[tuple, int] = defaultdict(int)
    for r in images:
        if r["strategy"] == REFERENCE:
            length[(r["seed"], r["site"])] = max(length[(r["seed"], r["site"])], r["index"] + 1)
    out = []
    for arm in dict.fromkeys(r["strategy"] for r in images):
        if arm == REFERENCE:
            continue
        for metric in CURVE_METRICS:
            a, f = _units(images, arm, metric), _units(images, REFERENCE, metric)
            keys = [k for k in a if k in f and k[2] >= length[(k[0], k[1])] // 2]
            if not keys:
                continue
            by_seed: dict[int, list[tuple]] = defaultdict(list)
            for k in keys:
                by_seed[k[0]].append((a[k], f[k]))
            row = {"strategy": arm, "metric": metric, "n": len(keys), "seeds": len(by_seed),
                   "mean": float(np.mean([a[k] for k in keys])), "frozen": float(np.mean([f[k] for k in keys]))}
            row |= _relative(by_seed, metric)
            out.append(row)
    return out


def _relative(by_seed: dict[int, list[tuple]], metric: str) -> dict:
    """NoC: reduction 1 - mean(arm) / mean(frozen); Dice: gain mean(arm) - mean(frozen); with intervals."""
    seeds = sorted(by_seed)
    pairs = {s: np.asarray(by_seed[s], dtype=float) for s in seeds}

    def stat(chosen: list[np.ndarray]) -> float:
        allp = np.concatenate(chosen)
        if metric.startswith("noc"):
            den = allp[:, 1].mean()
            return 1.0 - allp[:, 0].mean() / den if den else float("nan")
        return float(allp[:, 0].mean() - allp[:, 1].mean())

    full = stat([pairs[s] for s in seeds])
    rng = np.random.default_rng(0)
    draws = []
    for _ in range(N_BOOT):
        picked = [pairs[seeds[i]] for i in rng.choice(len(seeds), len(seeds), replace=True)]
        draws.append(stat([p[rng.integers(0, len(p), len(p))] for p in picked]))
    draws = np.asarray(draws)
    draws = draws[np.isfinite(draws)]
    alpha = (1 - LEVEL) / 2
    low, high = np.quantile(draws, [alpha, 1 - alpha]) if len(draws) else (float("nan"), float("nan"))
    key = "reduction" if metric.startswith("noc") else "gain"
    return {key: float(full), f"{key}_low": float(low), f"{key}_high": float(high)}
