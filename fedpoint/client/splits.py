"""The episode split rule: how a site's accepted cases are divided, stated once.

New cases are split 60/20/20 into cumulative train (what an episode trains on), val (picks the
episode's best epoch) and judge (the regression guard's verdict) sets, rounding toward train, with
val and judge one case each as soon as there are three. val and judge together are the site's
held-out cases: no episode ever trains on them, so the guard and the federated evaluation score
on them.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

SPLITS = ("train", "val", "judge")
HELD_OUT = ("val", "judge")
HELD_OUT_SHARE = 0.2  # of the new cases, for each held-out split
MIN_CASES = 3  # the fewest cases that give every split one: what an episode needs


def split_rule(new: list[str], rng: np.random.Generator) -> dict[str, list[str]]:
    """New cases -> {"train", "val", "judge"}: 60/20/20 in a random order (one permutation drawn
    from `rng`), rounding toward train; val gets one case from 2 on, judge one from `MIN_CASES` on."""
    order = [new[i] for i in rng.permutation(len(new))]
    n = len(order)
    n_judge = max(1, round(HELD_OUT_SHARE * n)) if n >= MIN_CASES else 0
    n_val = max(1, round(HELD_OUT_SHARE * n)) if n >= 2 else 0
    n_train = n - n_val - n_judge
    return {"train": sorted(order[:n_train]), "val": sorted(order[n_train:n_train + n_val]),
            "judge": sorted(order[n_train + n_val:])}


def held_out(splits: Mapping[str, Sequence[str]]) -> list[str]:
    """The ids no episode trains on: val then judge, each in its stored order."""
    return [c for name in HELD_OUT for c in splits.get(name, ())]


def episode_possible(splits: Mapping[str, Sequence[str]], new: list[str]) -> bool:
    """Whether an episode could run once `new` is split: a case in every split."""
    planned = split_rule(new, np.random.default_rng(0))  # sizes only: they do not depend on the order
    return all(len(splits.get(name, ())) + len(planned[name]) >= 1 for name in SPLITS)
