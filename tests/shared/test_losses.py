import numpy as np
import pytest
import torch

from fedpoint.shared.clicks import Click
from fedpoint.shared.losses import ccg_loss, interaction_loss
from fedpoint.shared.metrics import click_metrics, dice, dice_at, noc, nof


def _target(shape=(20, 20)):
    t = torch.zeros((1, 1, *shape))
    t[..., 5:15, 5:15] = 1.0
    return t


def test_ccg_is_the_minus_log_of_the_true_class_weighted_by_the_gaussian():
    target = _target()
    logits = torch.zeros_like(target)  # p = 0.5 everywhere: -log p = log 2
    click = Click((10, 10), True)
    loss = ccg_loss(logits, target, [click], sigma=1.0)
    grid = np.indices((20, 20)) - 10
    sq = (grid ** 2).sum(0)
    weights = np.exp(-sq / 2.0) * (sq <= 9)
    expected = (weights * target[0, 0].numpy()).sum() * np.log(2) / 400
    assert float(loss) == pytest.approx(expected, rel=1e-5)


def test_ccg_counts_only_voxels_of_the_clicks_class_near_the_click():
    target = _target()
    logits = torch.zeros_like(target)
    click = Click((6, 6), True)  # near the object's corner: background voxels in its window too
    base = float(ccg_loss(logits, target, [click], 2.0))
    changed = logits.clone()
    changed[..., 0:4, 0:4] = 5.0  # background voxels inside the window, wrong class for a positive click
    assert float(ccg_loss(changed, target, [click], 2.0)) == pytest.approx(base)
    far = logits.clone()
    far[..., 14, 14] = -5.0  # foreground voxel outside the window
    assert float(ccg_loss(far, target, [click], 2.0)) == pytest.approx(base)
    near = logits.clone()
    near[..., 6, 6] = -5.0  # the clicked foreground voxel predicted background: loss rises
    assert float(ccg_loss(near, target, [click], 2.0)) > base


def test_ccg_without_clicks_is_zero_and_interaction_loss_has_gradients():
    target = _target()
    logits = torch.zeros_like(target, requires_grad=True)
    assert float(ccg_loss(logits, target, []).detach()) == 0.0
    interaction_loss(logits, target, [Click((10, 10), True)]).backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def test_metrics():
    a = np.zeros((4, 4), bool)
    a[:2] = True
    b = np.zeros((4, 4), bool)
    b[1:3] = True
    assert dice(a, b) == pytest.approx(0.5)
    assert dice(np.zeros((2, 2)), np.zeros((2, 2))) == 1.0
    dices = [0.5, 0.8, 0.86, 0.91]
    assert dice_at(dices, 3) == 0.86 and dice_at(dices, 10) == 0.91
    assert noc(dices, 0.85) == 3 and noc(dices, 0.90) == 4
    assert noc([0.1, 0.2], 0.9, budget=20) == 20
    assert nof([0.1, 0.2]) and not nof(dices)
    m = click_metrics(dices)
    assert m["noc90"] == 4 and m["nof"] == 0.0 and m["dice1"] == 0.5
