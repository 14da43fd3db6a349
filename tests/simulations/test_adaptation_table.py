"""The "never worse than frozen" table: cells paired with frozen, over the whole stream and its second half."""

import pytest

from fedpoint.simulations.adaptation_table import table


def _row(mode, dice3, noc90, seed=0):
    return {"data": "d", "shift": "none", "seed": seed, "mode": mode, "dice3": dice3, "noc90": noc90, "guard_rejected": 0}


def test_a_stream_that_turns_worse_fails_the_bar_only_over_its_second_half():
    frozen = _row("frozen", [0.5] * 8, [10] * 8)
    adapted = _row("mid+post", [0.53] * 4 + [0.48] * 4, [9] * 4 + [10.5] * 4)  # better first, worse later
    (cell,) = table([frozen, adapted])
    assert cell["d_dice3"] == pytest.approx(0.005) and cell["d_noc90"] == pytest.approx(-0.25)
    assert cell["within_bar"]
    assert cell["d_dice3_second"] == pytest.approx(-0.02) and cell["d_noc90_second"] == pytest.approx(0.5)
    assert not cell["within_bar_second"]


def test_cells_without_their_frozen_run_are_left_out():
    assert table([_row("mid+post", [0.5], [10])]) == []
