"""The episode split rule, stated once in `fedpoint.client.splits`."""

import numpy as np

from fedpoint.client.splits import HELD_OUT, MIN_CASES, SPLITS, episode_possible, held_out, split_rule


def test_split_sizes_60_20_20_rounding_toward_train():
    sizes = {n: tuple(len(split_rule([f"c{i}" for i in range(n)], np.random.default_rng(0))[s]) for s in SPLITS)
             for n in (0, 1, 2, 3, 5, 10, 12)}
    assert sizes == {0: (0, 0, 0), 1: (1, 0, 0), 2: (1, 1, 0), 3: (1, 1, 1), 5: (3, 1, 1), 10: (6, 2, 2),
                     12: (8, 2, 2)}


def test_min_cases_is_the_fewest_that_fill_every_split():
    rng = np.random.default_rng(1)
    assert all(split_rule([f"c{i}" for i in range(MIN_CASES)], rng)[s] for s in SPLITS)
    assert not all(split_rule([f"c{i}" for i in range(MIN_CASES - 1)], rng)[s] for s in SPLITS)


def test_the_split_is_a_partition_in_a_seeded_order():
    new = [f"c{i}" for i in range(9)]
    a, b = split_rule(new, np.random.default_rng(3)), split_rule(new, np.random.default_rng(3))
    assert a == b and sorted(c for ids in a.values() for c in ids) == sorted(new)
    assert all(a[s] == sorted(a[s]) for s in SPLITS)


def test_held_out_and_episode_possible():
    splits = {"train": ["t"], "val": ["v1", "v2"], "judge": ["j"]}
    assert HELD_OUT == ("val", "judge") and held_out(splits) == ["v1", "v2", "j"]
    assert episode_possible(splits, [])
    assert not episode_possible({"train": [], "val": [], "judge": []}, ["a", "b"])
    assert episode_possible({"train": [], "val": [], "judge": []}, ["a", "b", "c"])
    assert episode_possible({"train": ["t"], "val": ["v"], "judge": []}, ["a", "b", "c"])
