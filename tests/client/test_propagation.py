"""The propagation route: a click on one slice of a volume, the 2D base carrying the mask through
the next slices, corrections on any slice (the packaged 2D base: a random net segments nothing)."""

import numpy as np
import pytest

from fedpoint.client.engine import SiteEngine
from fedpoint.client.propagation import (PropagationConfig, SlicePrompt, VolumeInputError, click_prompt,
                                         open_volume)
from fedpoint.shared.config import AdaptationConfig
from fedpoint.shared.metrics import dice


def _ellipsoid(shape=(64, 64, 24), radii=(14.0, 11.0, 6.0), seed=0):
    """A bright ellipsoid over slices 6..18 of a noisy volume (slices along the last axis)."""
    grid = np.indices(shape).astype(np.float32)
    centre = np.array(shape, dtype=np.float32) / 2
    mask = (((grid - centre[:, None, None, None]) / np.array(radii)[:, None, None, None]) ** 2).sum(0) <= 1
    rng = np.random.default_rng(seed)
    image = 0.2 + 0.05 * rng.standard_normal(shape) + 0.5 * mask
    return image[None].astype(np.float32), mask


@pytest.fixture(scope="module")
def engine():
    return SiteEngine.create(None, "norm", AdaptationConfig(mode="frozen"))


def _slices(mask):
    return set(np.flatnonzero(mask.any((0, 1))).tolist())


def test_one_click_propagates_through_the_object_and_stops_at_its_end(engine):
    image, truth = _ellipsoid()
    session = open_volume(engine, image, "vol", spacing=(1.0, 1.0, 2.0))
    out = session.click((32, 32, 12))
    inside = set(np.flatnonzero(truth.sum((0, 1)) >= 20).tolist())  # slices the object really covers
    reached = set(session.slices_reached())
    assert inside <= reached, f"propagation missed object slices {sorted(inside - reached)}"
    assert reached <= _slices(truth), f"propagation ran past the object's end: {sorted(reached - _slices(truth))}"
    assert dice(out, truth) > 0.8
    assert session.record()["slices_predicted"][0] < truth.shape[2], "it stopped before the volume's edge"


def test_the_reach_bounds_each_interaction_and_zero_is_slice_by_slice(engine):
    """`max_slices`: how far one interaction carries a mask each way; 0 annotates the clicked slice only."""
    image, truth = _ellipsoid()
    by_slice = open_volume(engine, image, "vol", spacing=(1.0, 1.0, 2.0), config=PropagationConfig(max_slices=0))
    by_slice.click((32, 32, 12))
    assert by_slice.slices_reached() == [12] and by_slice.record()["slices_predicted"] == [1]
    by_slice.click((32, 32, 9))  # a second slice: a second interaction, the first one's slice kept
    assert by_slice.slices_reached() == [9, 12]
    near = open_volume(engine, image, "vol", spacing=(1.0, 1.0, 2.0), config=PropagationConfig(max_slices=2))
    near.click((32, 32, 12))
    assert near.slices_reached() == [10, 11, 12, 13, 14]
    with pytest.raises(ValueError, match="max_slices"):
        PropagationConfig(max_slices=-1)


def test_without_the_intensity_gate_the_2d_base_copies_its_mask_past_the_end(engine):
    """Why the gate exists: the base trusts its previous-mask input, so the bare click prompt never stops."""
    image, truth = _ellipsoid()
    session = open_volume(engine, image, "vol", spacing=(1.0, 1.0, 2.0), config=PropagationConfig(band=None, max_growth=None))
    session.click((32, 32, 12))
    assert set(session.slices_reached()) - _slices(truth)


def test_a_correction_changes_the_slices_after_it_and_never_the_user_slices_before(engine):
    image, truth = _ellipsoid()
    session = open_volume(engine, image, "vol", spacing=(1.0, 1.0, 2.0))
    session.click((32, 32, 12))
    session.click((32, 32, 9))                 # the user works on slice 9 too
    before = session.mask.copy()
    # a negative click in the middle of slice 14: it re-predicts slice 14 and propagates outward
    session.click((32, 32, 14), positive=False)
    after = session.mask
    assert not after[32, 32, 14], "the click rule: a negative click's voxel is background"
    # slice 13 lies between the correction and user slice 12: re-propagated from 14; 12 and below are kept
    assert np.array_equal(after[..., :13], before[..., :13]), "the user slices before the correction (9, 12) and beyond"
    assert not np.array_equal(after[..., 15:], before[..., 15:]), "the slices after the correction changed"
    assert session.user_slices == [9, 12, 14]


def test_undo_restores_every_slice_a_click_changed(engine):
    image, _ = _ellipsoid()
    session = open_volume(engine, image, "vol", spacing=(1.0, 1.0, 2.0))
    first = session.click((32, 32, 12)).copy()
    session.click((32, 32, 15), positive=False)
    assert np.array_equal(session.undo(), first)
    assert session.user_slices == [12]
    assert not session.undo().any() and session.user_slices == []
    with pytest.raises(VolumeInputError, match="no click"):
        session.undo()


def test_accept_adds_each_user_slice_to_the_cache_as_a_2d_case(tmp_path):
    engine = SiteEngine.create(None, "norm", AdaptationConfig(mode="mid+post"), tmp_path / "store",
                               background_episodes=False)
    image, _ = _ellipsoid()
    session = open_volume(engine, image, "ct7", spacing=(1.0, 1.0, 2.0))
    session.click((32, 32, 12))
    session.click((32, 32, 10))
    final = session.accept()
    assert final.shape == image.shape[1:]
    assert sorted(engine.store.case_ids()) == ["ct7.z0010", "ct7.z0012"]
    cached_image, cached_mask, _ = engine.store.load_case("ct7.z0012")
    assert cached_mask.shape == (64, 64) and np.array_equal(cached_mask.astype(bool), final[..., 12])
    with pytest.raises(VolumeInputError, match="already accepted"):
        session.click((32, 32, 12))


def test_the_prompt_is_one_function_that_can_be_replaced(engine):
    image, truth = _ellipsoid()
    seen = []

    def recording_prompt(neighbour):
        seen.append(int(neighbour.sum()))
        return click_prompt(neighbour)

    session = open_volume(engine, image, "vol", spacing=(1.0, 1.0, 2.0), prompt=recording_prompt)
    session.click((32, 32, 12))
    assert len(seen) == session.record()["slices_predicted"][0] - 1
    assert click_prompt(np.zeros((4, 4), bool)) is None
    prompt = click_prompt(truth[..., 12])
    assert isinstance(prompt, SlicePrompt) and prompt.clicks[0].positive and truth[(*prompt.clicks[0].point, 12)]


def test_bad_input_is_refused_with_a_message(engine, tiny_base_3d):
    image, _ = _ellipsoid()
    session = open_volume(engine, image, "vol")
    with pytest.raises(VolumeInputError, match="outside"):
        session.click((32, 32, 40))
    with pytest.raises(VolumeInputError, match="volume"):
        open_volume(engine, image[0, :, :, 0])
    with pytest.raises(VolumeInputError, match="spacing"):
        open_volume(engine, image, spacing=(1.0, 1.0))
    engine3d = SiteEngine.create(str(tiny_base_3d), "norm", AdaptationConfig(mode="frozen"))
    with pytest.raises(VolumeInputError, match="2D base"):
        open_volume(engine3d, image)
    with pytest.raises(ValueError, match="min_overlap"):
        PropagationConfig(min_overlap=1.5)


def test_the_stop_rule_and_the_gate():
    neighbour = np.zeros((12, 12), bool)
    neighbour[2:6, 2:6] = True                      # 16 voxels
    grown = np.zeros_like(neighbour)
    grown[1:8, 1:8] = True                          # 49 voxels, holding the neighbour
    apart = np.zeros_like(neighbour)
    apart[8:11, 8:11] = True
    rule = PropagationConfig(max_growth=2.0)
    assert rule.continues(neighbour, neighbour) and PropagationConfig(max_growth=None).continues(grown, neighbour)
    assert not rule.continues(grown, neighbour), "more than twice the neighbour: a leak"
    assert not rule.continues(apart, neighbour) and not rule.continues(np.zeros_like(neighbour), neighbour)
    image = np.full((1, 12, 12), 0.2, np.float32)
    image[0, 2:6, 2:6] = 0.8                        # the object is bright on both slices
    kept = PropagationConfig(band=0.0).gate(grown, image, neighbour, image)
    assert np.array_equal(kept, neighbour), "the gate keeps the voxels that look like the neighbour's object"
    assert np.array_equal(PropagationConfig(band=None).gate(grown, image, neighbour, image), grown)
    with pytest.raises(ValueError, match="max_growth"):
        PropagationConfig(max_growth=0.5)
    # a neighbour its window cut short may grow (a large object's first mask is a window's worth of it)
    assert rule.continues(grown, neighbour, neighbour_cut=True)
    assert not PropagationConfig(max_growth=2.0, cut_grows=False).continues(grown, neighbour, neighbour_cut=True)


def test_a_mask_on_an_inner_edge_of_its_window_was_cut_short():
    from fedpoint.client.propagation import reaches_inner_edge
    from fedpoint.shared.focus import FocusWindow

    window = FocusWindow(start=(4, 0), size=(8, 12), out_size=(8, 12))  # rows 4..11 of a 16 x 12 slice
    mask = np.zeros((16, 12), bool)
    mask[6:9, 3:6] = True
    assert not reaches_inner_edge(mask, window)
    mask[4, 4] = True                                 # the window's first row, inside the slice
    assert reaches_inner_edge(mask, window)
    mask[4, 4] = False
    mask[7, 0] = True                                 # the slice's own edge: nothing was cut there
    assert not reaches_inner_edge(mask, window)


def test_a_box_on_one_slice_propagates_and_undo_takes_it_back(engine):
    image, truth = _ellipsoid()
    session = open_volume(engine, image, "vol", spacing=(1.0, 1.0, 2.0))
    xs, ys = np.nonzero(truth[..., 12])
    out = session.box((xs.min(), ys.min()), (xs.max() + 1, ys.max() + 1), 12)
    assert {11, 12, 13} <= set(session.slices_reached()) <= _slices(truth)
    assert dice(out[..., 12], truth[..., 12]) > 0.8 and session.user_slices == [12] and session.clicks == []
    session.click((32, 32, 12))  # a click on the box's slice keeps the box as an input
    assert session.user_boxes[12].lo == (xs.min(), ys.min()) and session.record()["boxes"]
    session.undo()
    assert session.user_slices == [12] and 12 in session.user_boxes
    assert not session.undo().any() and session.user_slices == [] and not session.user_boxes
    with pytest.raises(VolumeInputError, match="outside the volume"):
        session.box((1, 1), (5, 5), 24)


def test_accept_without_the_cache_keeps_each_user_slice_session(engine, tmp_path):
    image, truth = _ellipsoid()
    session = open_volume(engine, image, "vol", spacing=(1.0, 1.0, 2.0))
    session.click((32, 32, 12))
    session.accept(into_cache=False)
    assert list(session.slice_sessions) == [12] and session.slice_sessions[12].accepted is not None
    assert session.slice_image(12).shape == (1, 64, 64)
