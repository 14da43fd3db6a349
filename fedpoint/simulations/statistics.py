"""Paired comparisons of strategies with bootstrap confidence intervals.

Every strategy annotates the same images with the same simulated user, so two strategies are
compared image by image: the unit is one (seed, site, image index), and the interval is a
percentile bootstrap over those units (resampled with replacement). A target is *held* only when
its whole interval clears the threshold, *refuted* when the whole interval lies on the wrong side,
and *unresolved* otherwise.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

METRICS = ("noc90", "noc85", "dice3", "dice5", "dice_auc")
# (a, b, scope) pairs that results.json always reports when both strategies ran
PAIRS = (
    ("fed-banks", "frozen", "shifted"),
    ("fed-banks", "local-online", "shifted"),
    ("fed-banks", "fed-general", "shifted"),
    ("fed-banks", "fed-full", "shifted"),
    ("fed-banks", "local-online", "late"),
    ("fed-banks", "frozen", "late"),
    ("local-online", "frozen", "shifted"),
    ("fed-full", "local-full", "shifted"),  # federating every weight against tuning it alone
    ("fed-banks", "local-full", "shifted"),
    ("fed-full", "frozen", "shifted"),
    # scenario configs (data-poor, modalities) read these on every site, shifted or not
    ("fed-banks", "local-online", "all"),
    ("fed-banks", "fed-general", "all"),
    # ablations (named arms): each against the full online update on the same streams
    ("local-mid", "local-online", "shifted"),
    ("local-post", "local-online", "shifted"),
    ("local-online-noccg", "local-online", "shifted"),
    ("local-episodes-1", "local-episodes-3", "shifted"),      # CLoPA: one episode gives most of the gain
    ("local-episodes-1", "frozen", "shifted"),
    ("local-episodes-3", "frozen", "shifted"),
    ("local-episodes-true", "local-episodes", "shifted"),     # true labels against pseudo-labels
    ("local-episodes-1-true", "local-episodes-1", "shifted"),
    ("local-episodes-true", "frozen", "shifted"),
)


def unit(record: dict) -> tuple:
    return (record["seed"], record["site"], record["index"])


def in_scope(record: dict, scope: str) -> bool:
    if scope == "late":
        return bool(record["late"]) and record["round"] == record["join_round"] + 1
    if scope == "shifted":
        return not record["late"] and bool(record["shifted"])
    return not record["late"]


def paired(images: Sequence[dict], a: str, b: str, scope: str, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Values of `metric` for a and b on the units both annotated within `scope` (same order)."""
    va = {unit(r): r[metric] for r in images if r["strategy"] == a and metric in r and in_scope(r, scope)}
    vb = {unit(r): r[metric] for r in images if r["strategy"] == b and metric in r and in_scope(r, scope)}
    keys = sorted(set(va) & set(vb))
    return np.array([va[k] for k in keys], float), np.array([vb[k] for k in keys], float)


def bootstrap_ci(x: np.ndarray, y: np.ndarray, relative: bool = False, n_boot: int = 2000, seed: int = 0,
                 level: float = 0.95) -> tuple[float, float, float]:
    """(estimate, low, high) of mean(x - y), or with `relative` of 1 - mean(x) / mean(y)."""
    def stat(ix):
        if relative:
            den = y[ix].mean()
            return 1.0 - x[ix].mean() / den if den else np.nan
        return (x[ix] - y[ix]).mean()

    n = len(x)
    full = stat(np.arange(n))
    rng = np.random.default_rng(seed)
    draws = np.array([stat(rng.integers(0, n, n)) for _ in range(n_boot)])
    draws = draws[np.isfinite(draws)]
    alpha = (1 - level) / 2
    low, high = (np.quantile(draws, [alpha, 1 - alpha]) if len(draws) else (np.nan, np.nan))
    return float(full), float(low), float(high)


def comparisons(images: Sequence[dict], pairs: Iterable[tuple[str, str, str]] = PAIRS,
                metrics: Sequence[str] = METRICS) -> list[dict]:
    """The `comparisons` list of results.json: {a, b, metric, scope, mean_diff, ci_low, ci_high, n}
    (and, for noc90, the relative reduction with its interval)."""
    ran = {r["strategy"] for r in images}
    out = []
    for a, b, scope in pairs:
        if a not in ran or b not in ran:
            continue
        for metric in metrics:
            x, y = paired(images, a, b, scope, metric)
            if len(x) == 0:
                continue
            diff, low, high = bootstrap_ci(x, y)
            row = {"a": a, "b": b, "metric": metric, "scope": scope, "mean_diff": diff, "ci_low": low,
                   "ci_high": high, "n": int(len(x))}
            if metric.startswith("noc"):
                rel, rlow, rhigh = bootstrap_ci(x, y, relative=True)
                row.update(reduction=rel, reduction_low=rlow, reduction_high=rhigh)
            out.append(row)
    return out


def verdict(low: float, high: float, threshold: float, higher_is_better: bool = True) -> str:
    """held / refuted / unresolved for 'the effect is at least `threshold`' on an interval."""
    if not np.isfinite(low) or not np.isfinite(high):
        return "unresolved"
    if higher_is_better:
        return "held" if low >= threshold else "refuted" if high < threshold else "unresolved"
    return "held" if high <= threshold else "refuted" if low > threshold else "unresolved"


def find(comps: Sequence[dict], a: str, b: str, metric: str, scope: str) -> dict | None:
    return next((c for c in comps if (c["a"], c["b"], c["metric"], c["scope"]) == (a, b, metric, scope)), None)
