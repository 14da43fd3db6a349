"""The next-image choice: `choose` on its own, and `NextImageChoice` over a stand-in desk."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from fedpoint.client.service import next_image
from fedpoint.client.service.images import ImageError
from fedpoint.client.service.next_image import CHOICES, NextImageChoice, choose

IDS = ["c", "a", "d", "b"]
SCORES = {"a": 0.2, "b": 0.9, "c": 0.5, "d": None}  # d cannot be read


def test_first_random_and_uncertain():
    assert set(CHOICES) == {"first", "random", "uncertain"}
    assert choose("first", IDS, {}, SCORES.get, 8) == ("a", {})
    picks = {choose("random", IDS, {"seed": s}, SCORES.get, 8)[0] for s in range(20)}
    assert picks <= set(IDS) and len(picks) > 1
    assert choose("random", IDS, {"seed": 3}, SCORES.get, 8) == choose("random", IDS, {"seed": 3}, SCORES.get, 8)
    assert choose("uncertain", IDS, {}, SCORES.get, 8) == ("b", {"score": 0.9, "candidates": 3})


def test_uncertain_scores_at_most_the_candidates_and_skips_the_unreadable():
    scored = []

    def score(image_id):
        scored.append(image_id)
        return SCORES[image_id]

    best, details = choose("uncertain", IDS, {"seed": 1}, score, 2)
    assert len(scored) == 2 and best in scored and details["candidates"] == len([i for i in scored if SCORES[i] is not None])
    assert choose("uncertain", ["d"], {}, SCORES.get, 8) == (None, {})


def test_nothing_left_and_unknown_names():
    for name in CHOICES:
        assert choose(name, [], {}, SCORES.get, 8) == (None, {})
    with pytest.raises(KeyError, match="epistemic"):
        choose("epistemic", IDS, {}, SCORES.get, 8)


class _Desk:
    """What NextImageChoice reads from the annotation desk."""

    def __init__(self):
        self.engine = SimpleNamespace(model=SimpleNamespace(version=0))

    def structure(self, name):
        return name or "object"

    def slot(self, structure):  # the structure's adapter: the one model here
        return self.engine

    def unlabelled(self):
        return ["img", "vol", "broken"]

    def load(self, image_id):
        if image_id == "broken":
            raise ImageError("broken.npy cannot be read")
        slices = 5 if image_id == "vol" else 1
        return SimpleNamespace(id=image_id, slices=slices, model_input=np.zeros((1, 4, 4, slices), np.float32))

    def sliced(self, loaded):
        return loaded.slices > 1

    def session_image(self, loaded, z):
        return (loaded.id, z)


def test_scores_are_cached_per_adapter_version_and_a_volume_scores_its_middle_slice(monkeypatch):
    calls = []
    monkeypatch.setattr(next_image, "flip_uncertainty", lambda model, image: calls.append(image) or len(calls) / 10)
    desk = _Desk()
    chooser = NextImageChoice(desk, candidates=8)
    best, details = chooser.choose("uncertain")
    assert calls == [("img", None), ("vol", 2)] and best == "vol" and details["candidates"] == 2
    chooser.choose("uncertain")
    assert len(calls) == 2  # cached
    desk.engine.model.version = 1  # a swapped adapter scores again
    chooser.choose("uncertain")
    assert len(calls) == 4
    assert chooser.uncertainty("broken") is None
    assert chooser.choose("first") == ("broken", {})  # the desk's list is what is chosen from
