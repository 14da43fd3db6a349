"""The one simulated-user loop: the clicks it makes, when it stops, and the RNG draws it takes."""

import numpy as np
import pytest

from fedpoint.shared.clicker import Clicker
from fedpoint.shared.clicks import Click
from fedpoint.shared.metrics import dice
from fedpoint.shared.simulated_user import SimulatedUser, simulate


def _gt():
    gt = np.zeros((40, 40), bool)
    gt[5:20, 5:20] = True
    gt[25:35, 25:38] = True
    return gt


def _disks(shape, radius=4):
    """A toy model: a disk at each positive click, holes at negative ones (deterministic)."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]

    def predict(clicks):
        out = np.zeros(shape, bool)
        for c in clicks:
            disk = (yy - c.point[0]) ** 2 + (xx - c.point[1]) ** 2 <= radius ** 2
            out = out | disk if c.positive else out & ~disk
        return out
    return predict


def _reference(predict, gt, budget, clicker, first=None, fill=False):
    """The loop as the callers wrote it before: ask, predict, score; stop (or pad) when perfect."""
    chosen, prev, dices = [], None, []
    for k in range(budget):
        click = first if (k == 0 and first is not None) else clicker.next_click(prev)
        if click is None:
            if fill:
                dices += [1.0] * (budget - len(dices))
            break
        chosen.append(click)
        prev = predict(list(chosen))
        dices.append(dice(prev, gt))
    return chosen, dices


def test_deepest_user_matches_the_click_by_click_loop():
    gt, predict = _gt(), _disks((40, 40))
    steps = list(simulate(predict, gt, 8))
    clicks, dices = _reference(predict, gt, 8, Clicker(gt))
    assert [s.click for s in steps] == clicks
    assert [s.dice for s in steps] == dices
    assert steps[0].click == Clicker(gt).next_click(None)  # the first click: the object's deepest point


def test_random_user_draws_its_seed_once_at_creation_in_order():
    gt, predict = _gt(), _disks((40, 40), radius=2)
    rng_a, rng_b = np.random.default_rng(7), np.random.default_rng(7)
    steps = simulate(predict, gt, 6, mode="random", rng=rng_a, score=False)
    after_creation = rng_a.bit_generator.state
    clicks, _ = _reference(predict, gt, 6, Clicker(gt, mode="random", seed=int(rng_b.integers(2**31))))
    assert after_creation == rng_b.bit_generator.state  # drawn when simulate is called, not when iterated
    steps = list(steps)
    assert [s.click for s in steps] == clicks
    assert all(s.dice is None for s in steps)


def test_a_perfect_mask_stops_the_user_or_fills_the_budget():
    gt = _gt()
    calls = []

    def perfect(clicks):
        calls.append(len(clicks))
        return gt.copy()

    assert [s.dice for s in simulate(perfect, gt, 5)] == [1.0]
    filled = list(simulate(perfect, gt, 5, fill=True))
    assert [s.dice for s in filled] == [1.0] * 5
    assert [s.click is None for s in filled] == [False, True, True, True, True]
    assert calls == [1, 1]  # no prediction is asked for a click the user did not make


def test_a_given_first_click_comes_first_and_the_rest_follow_the_errors():
    gt, predict = _gt(), _disks((40, 40))
    first = Click((30, 30), True)
    steps = list(simulate(predict, gt, 4, first=first))
    clicks, dices = _reference(predict, gt, 4, Clicker(gt), first=first)
    assert steps[0].click == first and [s.click for s in steps] == clicks and [s.dice for s in steps] == dices


def test_respond_adds_only_clicks_it_makes():
    gt = _gt()
    user = SimulatedUser(gt, first=Click((10, 10), True))
    assert user.respond(None) == Click((10, 10), True)
    assert user.respond(gt) is None and len(user.clicks) == 1  # perfect: nothing added
    wrong = gt.copy()
    wrong[25:35, 25:38] = False
    nxt = user.respond(wrong)
    assert nxt is not None and nxt.positive and user.clicks[-1] == nxt


def test_budget_and_empty_truth():
    gt, predict = _gt(), _disks((40, 40), radius=1)
    assert len(list(simulate(predict, gt, 3))) == 3
    assert list(simulate(predict, gt, 0)) == []
    with pytest.raises(ValueError):
        simulate(predict, np.zeros((5, 5), bool), 3)
