"""The next-image choice: which image to annotate next (MONAI Label calls these its active-learning
"strategies"; `POST /activelearning/{name}` and `/info/` keep that word).

- ``first``: the first unlabelled image in id order.
- ``random``: a random unlabelled image (``params.seed`` makes it repeatable).
- ``uncertain``: the unlabelled image the current model is least sure about. For each candidate
  (at most ``al_candidates``, drawn at random), the model predicts from one positive click at the
  image centre (the middle slice of a volume on a 2D model), in that click's focus window, on the
  image and on its mirror image (first axis flipped, click mirrored). The two foreground probability maps are averaged, and the
  score is the mean binary entropy (bits) of that average over the pixels it gives at least 10%
  foreground probability: high where the model hesitates or where the two views disagree. An
  image where the click finds nothing at all scores 1 (the maximum): the model has no idea there.
  Scores are cached per image and adapter version.
"""

from __future__ import annotations

import logging
import random
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch

from fedpoint.client.site_model import SiteModel
from fedpoint.client.service.images import ImageError
from fedpoint.shared.clicks import Click

if TYPE_CHECKING:
    from fedpoint.client.service.desk import AnnotationDesk

log = logging.getLogger("fedpoint.service")
CHOICES = {
    "first": "the first unlabelled image, in id order",
    "random": "a random unlabelled image",
    "uncertain": "the unlabelled image with the highest mean predictive entropy of a centre-click prediction "
                 "averaged over the image and its mirror image",
}
FOREGROUND_FLOOR = 0.1


def flip_uncertainty(model: SiteModel, image: np.ndarray) -> float:
    """Mean binary entropy (bits) of the flip-averaged centre-click prediction; see the module doc."""
    spatial = image.shape[1:]
    centre = tuple(n // 2 for n in spatial)
    mirrored = (spatial[0] - 1 - centre[0], *centre[1:])
    image_t = model.image_tensor(image)
    p = _focused_probability(model, image_t, Click(centre, True))
    q = _focused_probability(model, torch.flip(image_t, dims=[2]), Click(mirrored, True))
    mean = (p + torch.flip(q, dims=[2])) / 2
    region = mean[mean > FOREGROUND_FLOOR].clamp(1e-6, 1 - 1e-6)
    if region.numel() == 0:
        return 1.0
    entropy = -(region * torch.log2(region) + (1 - region) * torch.log2(1 - region))
    return float(entropy.mean())


def _focused_probability(model: SiteModel, image_t: torch.Tensor, click: Click) -> torch.Tensor:
    """Foreground probability of a first click, predicted in its focus window like a session does;
    zero outside the window."""
    view = model.look(image_t, [click])
    with model.lock, torch.no_grad():
        p = torch.sigmoid(model.logits_in(view))
    return view.paste(p, fill=0.0)


def choose(name: str, unlabelled: list[str], params: dict, score: Callable[[str], float | None],
           candidates: int) -> tuple[str | None, dict]:
    """(image id or None when all are labelled, details); raises KeyError for an unknown choice."""
    if name not in CHOICES:
        raise KeyError(f"unknown next-image choice {name!r}; known: {', '.join(CHOICES)}")
    if not unlabelled:
        return None, {}
    if name == "first":
        return sorted(unlabelled)[0], {}
    rng = random.Random(params.get("seed"))
    if name == "random":
        return rng.choice(unlabelled), {}
    pool = sorted(unlabelled)
    if len(pool) > candidates:
        pool = rng.sample(pool, candidates)
    scores = {image_id: score(image_id) for image_id in pool}
    readable = [i for i in pool if scores[i] is not None]  # None: the image cannot be read (marked, skipped)
    if not readable:
        return None, {}
    best = max(readable, key=lambda i: (scores[i], i))
    return best, {"score": round(scores[best], 4), "candidates": len(readable)}


class NextImageChoice:
    """The site's next-image choice over the desk's unlabelled images, with the `uncertain` scores
    cached per (image, adapter version)."""

    def __init__(self, desk: AnnotationDesk, candidates: int):
        self.desk, self.candidates = desk, candidates
        self._scores: dict[tuple[str, int], float] = {}

    def choose(self, name: str, params: dict | None = None) -> tuple[str | None, dict]:
        return choose(name, self.desk.unlabelled(), params or {}, self.uncertainty, self.candidates)

    def uncertainty(self, image_id: str) -> float | None:
        """The `uncertain` score, or None for an image that cannot be read (marked, then skipped)."""
        model = self.desk.slot(self.desk.structure(None)).model  # the first structure's adapter (with `labels`, its own)
        key = (image_id, model.version)
        if key not in self._scores:
            try:
                loaded = self.desk.load(image_id)
            except ImageError:
                return None
            z = loaded.slices // 2 if self.desk.sliced(loaded) else None
            try:
                self._scores[key] = flip_uncertainty(model, self.desk.session_image(loaded, z))
            except Exception as err:  # noqa: BLE001 - one image the model cannot score must not stop the choice for everyone
                log.warning("next-image choice: %s cannot be scored (%s: %s); skipped", image_id, type(err).__name__, err)
                return None
        return self._scores[key]
