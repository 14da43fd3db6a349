"""Screening site replies before they touch a bank.

A reply is rejected, with a short reason naming the site, when its weight is not a positive finite
number, it was made on another base, its arrays do not match the bank's parameters (missing or extra
names, wrong shape or dtype), it holds non-finite values or metrics that may not leave a site (or
lie outside their range), or its delta is over the bank's absolute L2 bound (`norm_bound`: the
adapter kind's cap, tightened by the bank's history), which works at any number of replies.

The size and direction screens compare a reply only with its peers: the replies that trained from
the same bank at sites of the same modality (`PeerScreen`). They learn each group's reference norm
over rounds, clip rather than reject where they can, give a minority's tiny delta no weight (it
would only dilute), judge outliers against the peers' coordinate-wise median from 3 peers on, track
each site's pull away from its peers across rounds, and re-admit a suspect (clipped) after a few
rounds rather than lock it out. Where nothing is suspect, the replies are left untouched, so the
weighted mean stays exact.

Weights are clipped, not rejected (`clip_weights`, `cap_shares`): to `weight_cap_factor` x the
median weight of the others, to a per-site cap (the registry's `max-weight`), and from 3 replies on
to at most half of a bank's weight. `bounded_scores` clips scores several sites report of one thing
(a version's Dice-AUC, a round metric) to the others' median +- a margin.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace

import numpy as np

from fedpoint.server.records import Rejection, Reply, delta_norm  # noqa: F401 (the records, where the screens always had them)
from fedpoint.shared.adapter_kinds import ADAPTER_KINDS
from fedpoint.shared.payload import EgressError, Schema, adapter_arrays_problem, check_metrics, is_number



# The absolute cap on a delta's RMS (per value) before any history exists is the kind's
# (`AdapterKind.delta_rms_cap`): a 1000x or 3e38 delta is far over it. An unknown kind gets this one.
UNKNOWN_KIND_RMS_CAP = 0.05
HISTORY_VERSIONS = 10  # how many of a bank's recent versions the history bound looks at


def norm_bound(kind: str, n_values: int, history: list[float] | None = None, history_factor: float = 10.0,
               rms_cap: float = 0.0) -> float:
    """The absolute L2 bound on a delta into a bank: the kind's RMS cap times sqrt(values), and,
    once the bank has taken replies, at most `history_factor` x the largest reply norm it took in
    its last versions (`history`, from the manifests' `screen.max_norm`)."""
    known = ADAPTER_KINDS.get(kind)
    cap = (rms_cap or (known.delta_rms_cap if known else UNKNOWN_KIND_RMS_CAP)) * math.sqrt(max(n_values, 1))
    past = [h for h in (history or []) if h and math.isfinite(h) and h > 0]
    return min(cap, history_factor * max(past)) if past else cap


def clip_delta(delta: dict[str, np.ndarray], max_norm: float, norm: float | None = None) -> tuple[dict[str, np.ndarray], float]:
    """Scale a delta down to at most `max_norm` (global L2); returns (delta, scale applied). `norm`:
    the delta's norm when it is already known (`Reply.norm`); an unclipped delta is returned as it is."""
    if max_norm <= 0:
        raise ValueError(f"max_norm must be positive, got {max_norm}")
    norm = delta_norm(delta) if norm is None else norm
    if norm <= max_norm:
        return delta, 1.0
    scale = max_norm / norm
    return {k: (np.asarray(v) * scale).astype(np.asarray(v).dtype) for k, v in delta.items()}, scale


def structural_problem(reply: Reply, schema: Schema, fingerprint: str) -> str | None:
    """Why this reply cannot be aggregated on its own merits, or None."""
    if not is_number(reply.weight) or not math.isfinite(float(reply.weight)):
        return f"weight {reply.weight!r} is not a finite number"
    if reply.weight <= 0:
        return f"weight {reply.weight} is not positive (no accepted cases)"
    if reply.fingerprint != fingerprint:
        return f"made on base {reply.fingerprint!r}, the bank's base is {fingerprint!r}"
    problem = adapter_arrays_problem(reply.delta, schema)
    if problem:
        return problem
    try:
        check_metrics(reply.metrics)
    except EgressError as err:
        return str(err)
    return None


def screen_replies(
    replies: list[Reply],
    schema: Schema,
    fingerprint: str,
    *,
    norm_bound: float | None = None,
    screen: "PeerScreen | None" = None,
    group: str = "round",
) -> tuple[list[Reply], list[Rejection]]:
    """One peer group's replies split into (accepted, rejected), each rejection with a readable
    reason: the structural checks, then `PeerScreen.screen` (a fresh one unless `screen` is given,
    which then remembers the round). Accepted replies are as they will be aggregated (clipped where
    the screen clipped them); one accepted with no weight (a tiny delta) is left out of both lists."""
    accepted, rejected = [], []
    for reply in replies:
        problem = structural_problem(reply, schema, fingerprint)
        if problem:
            rejected.append((reply, f"site {reply.site_id}: {problem}"))
        else:
            accepted.append(reply)
    verdicts = (screen or PeerScreen()).screen(group, accepted, norm_bound)
    return ([v.reply for v in verdicts if v.status == "accepted" and v.counts],
            rejected + [(v.reply, v.reason) for v in verdicts if v.status == "rejected"])


def clip_weights(replies: list[Reply], factor: float = 4.0, caps: Mapping[str, float] | None = None) -> tuple[list[Reply], list[str]]:
    """Each weight clipped to at most `factor` x the median weight of the other replies and to its
    site's cap; returns (replies, notes naming each clipped site)."""
    weights = np.array([float(r.weight) for r in replies], dtype=np.float64)
    out, notes = [], []
    for i, reply in enumerate(replies):
        bound = math.inf
        if len(replies) >= 2:
            bound = factor * float(np.median(np.delete(weights, i)))
        cap = (caps or {}).get(reply.site_id)
        if cap is not None and cap > 0:
            bound = min(bound, float(cap))
        if weights[i] > bound:
            notes.append(f"site {reply.site_id}: weight {weights[i]:.6g} clipped to {bound:.6g}")
            reply = replace(reply, weight=bound)
        out.append(reply)
    return out, notes


class DriftDetector:
    """Pairs only (two peers, no majority): a site whose reply was outsized (> `ratio` x the other's
    norm) and opposed to it (negative cosine) in `window` consecutive rounds becomes a suspect.
    Groups of three or more are judged by `PeerScreen`; a suspect is re-admitted (see there)."""

    def __init__(self, window: int = 3, ratio: float = 2.0):
        self.window, self.ratio = window, ratio
        self.streak: dict[str, int] = {}

    def strikes(self, replies: list[Reply]) -> dict[str, str]:
        """Update the streaks from one round of two peers; returns {site: reason} for the suspects."""
        if self.window <= 0 or len(replies) != 2:
            return {}
        norms = [r.norm for r in replies]
        flat = _flat([r.delta for r in replies])
        cosine = _cosine(flat[0], flat[1])
        out = {}
        for i, reply in enumerate(replies):
            other = norms[1 - i]
            suspicious = other > 0 and norms[i] > self.ratio * other and cosine < 0
            self.streak[reply.site_id] = self.streak.get(reply.site_id, 0) + 1 if suspicious else 0
            if self.streak[reply.site_id] >= self.window:
                out[reply.site_id] = (f"sustained drift, {self.streak[reply.site_id]} rounds in a row "
                                      f"over {self.ratio:g}x its peer's norm and opposed to it")
        return out

    def state(self) -> dict:
        return {"streak": dict(self.streak)}

    def load(self, state: Mapping | None) -> None:
        self.streak = {k: int(v) for k, v in dict((state or {}).get("streak", {})).items()}


@dataclass(frozen=True)
class ScreenSettings:
    """The peer screens' factors, all relative to a peer group's reference norm (see `PeerScreen`)."""

    norm_factor: float = 5.0     # rejected: a delta over this x the reference
    clip_factor: float = 3.0     # clipped: a delta over this x the reference is scaled down to it
    small_factor: float = 0.1    # a minority's delta under this x the reference is accepted but given no weight
    outlier_factor: float = 2.0  # suspect: farther than this x the reference from the peers' coordinate median
    pull_ratio: float = 1.5      # suspect: its recent mean pull away from that median over this x the reference
    pull_decay: float = 0.5      # how fast the pull forgets (per round the site is seen)
    readmit_after: int = 3       # a site suspect this many rounds in a row is re-admitted, clipped to the reference
    history: int = 10            # rounds of reference norms a group remembers
    drift_window: int = 3        # pairs: rounds of outsized, opposed replies before a site is a suspect (0: off)
    drift_ratio: float = 2.0     # pairs: "outsized" is over this x the peer's norm


@dataclass
class Verdict:
    """What the screens made of one well-formed reply."""

    reply: Reply               # as it will be aggregated (its delta may be clipped)
    status: str                # "accepted" or "rejected"
    reason: str | None = None  # why rejected, or what was done to an accepted reply (clipped, no weight)
    counts: bool = True        # whether it enters the bank's mean (an accepted tiny delta does not)


SKETCH_SIZE = 128  # a site's pull is remembered as a count sketch of this many values (norms kept to ~10%)


class PeerScreen:
    """The size and direction screens, per peer group and across rounds.

    A peer group is the replies of sites of the same modality, which in a round all trained from the
    same bank (the strategy names it: `peer_group`), so a reply is only compared with like: a lone modality is never
    judged against the majority of another one. Per group, this remembers the reference norm of its
    recent rounds (`norms`), each site's recent pull away from its peers (`pull`, a decayed sum of
    its residuals from the peers' coordinate median, as a count sketch) and how many rounds in a row
    each site was a suspect (`suspect`). In a round, a group's reference norm is the median of its
    remembered references and this round's lower median of positive norms (an all-zero delta does not
    count, so it cannot bring the reference to ~0). Then each reply is:

    - rejected when over the bank's absolute bound or over `norm_factor` x the reference;
    - accepted with no weight when tiny (under `small_factor` x the reference) and in the minority:
      it would only dilute the others' mean (a censoring attack), and it moves nothing;
    - clipped to `clip_factor` x the reference when over it;
    - with 3 or more counting peers, a suspect when farther than `outlier_factor` x the reference
      from their coordinate-wise median, or when its recent mean pull away from that median (seen in
      2 rounds or more) is over `pull_ratio` x the reference (a site pushing one direction round after
      round); with 2 peers, the pair rule of `DriftDetector`.

    A suspect is rejected, but never starved: after `readmit_after` rounds in a row it is accepted
    once, clipped to the reference and with the smallest weight among its unsuspected peers. A round in which nothing is clipped or suspect leaves every reply
    untouched, so the bank's weighted mean stays exact.
    """

    def __init__(self, settings: ScreenSettings | None = None):
        self.settings = settings or ScreenSettings()
        self.norms: dict[str, list[float]] = {}
        self.pull: dict[str, dict[str, dict]] = {}
        self.suspect: dict[str, dict[str, int]] = {}
        self.pairs: dict[str, DriftDetector] = {}

    # --- the screens ----------------------------------------------------------------------------
    def screen(self, group: str, replies: list[Reply], hard_bound: float | None = None) -> list[Verdict]:
        """Verdicts for one peer group's well-formed replies, in their order."""
        norms = [r.norm for r in replies]
        verdicts = [Verdict(r, "accepted") for r in replies]
        live = self._within_bound(replies, norms, verdicts, hard_bound)
        zero = 1e-9 * (hard_bound or 1.0)
        ref = self.reference(group, [norms[i] for i in live if norms[i] > zero])
        if ref is None:
            return verdicts
        live = self._size_screens(replies, norms, verdicts, live, ref)
        self._direction_screens(group, replies, verdicts, live, ref)
        kept = [v.reply.norm for v in verdicts if v.status == "accepted" and v.counts]
        positive = sorted(n for n in kept if n > zero)
        if positive:
            self.norms[group] = (self.norms.get(group, []) + [positive[(len(positive) - 1) // 2]])[-self.settings.history:]
        return verdicts

    @staticmethod
    def _within_bound(replies: list[Reply], norms: list[float], verdicts: list[Verdict], hard_bound: float | None) -> list[int]:
        """Reject each reply over the bank's absolute bound; the indices of the others."""
        live = []
        for i, (reply, norm) in enumerate(zip(replies, norms)):
            if hard_bound is not None and not norm <= hard_bound:
                verdicts[i] = Verdict(reply, "rejected", f"site {reply.site_id}: delta norm {norm:.3g} is over the bank's "
                                                         f"absolute bound {hard_bound:.3g}")
            else:
                live.append(i)
        return live

    def _size_screens(self, replies: list[Reply], norms: list[float], verdicts: list[Verdict], live: list[int],
                      ref: float) -> list[int]:
        """Against the reference norm: reject the far too large, give a minority's tiny deltas no
        weight, clip the large; the indices still judged by direction."""
        s = self.settings
        for i in list(live):
            if norms[i] > s.norm_factor * ref:
                verdicts[i] = Verdict(replies[i], "rejected", f"site {replies[i].site_id}: delta norm {norms[i]:.3g} is over "
                                                              f"{s.norm_factor:g}x the reference norm of its peers ({ref:.3g})")
                live.remove(i)
        small = [i for i in live if norms[i] < s.small_factor * ref]
        if 2 * len(small) < len(live):
            for i in small:
                verdicts[i] = Verdict(replies[i], "accepted", f"delta norm {norms[i]:.3g} is under {s.small_factor:g}x the "
                                                              f"reference norm of its peers ({ref:.3g}): it adds no weight", counts=False)
                live.remove(i)
        for i in live:
            if norms[i] > s.clip_factor * ref:
                clipped, _ = clip_delta(replies[i].delta, s.clip_factor * ref, norms[i])
                verdicts[i] = Verdict(replace(replies[i], delta=clipped), "accepted",
                                      f"delta norm {norms[i]:.3g} clipped to {s.clip_factor:g}x the reference ({ref:.3g})")
        return live

    def _direction_screens(self, group: str, replies: list[Reply], verdicts: list[Verdict], live: list[int],
                           ref: float) -> None:
        """Reject the suspects (`_suspects`), re-admitting one suspect `readmit_after` rounds in a row."""
        suspects = self._suspects(group, [verdicts[i].reply for i in live], ref)
        for i in live:
            reply = replies[i]
            count = self.suspect.setdefault(group, {}).get(reply.site_id, 0)
            if reply.site_id not in suspects:
                self.suspect[group][reply.site_id] = 0
            elif count >= self.settings.readmit_after:
                self.suspect[group][reply.site_id] = 0
                others = [float(replies[j].weight) for j in live if j != i and replies[j].site_id not in suspects]
                weight = min([float(reply.weight), *others])
                screened = verdicts[i].reply
                verdicts[i] = Verdict(replace(reply, delta=clip_delta(screened.delta, ref, screened.norm)[0], weight=weight),
                                      "accepted", f"re-admitted after {count} rounds rejected, clipped to the reference "
                                      f"({ref:.3g}) with the smallest weight of its peers ({weight:g}); "
                                      f"still {suspects[reply.site_id]}")
            else:
                self.suspect[group][reply.site_id] = count + 1
                verdicts[i] = Verdict(reply, "rejected", f"site {reply.site_id}: {suspects[reply.site_id]}")

    def reference(self, group: str, positive_norms: list[float]) -> float | None:
        """The group's reference norm: the median of its remembered references and this round's
        lower median of positive norms; None when there is neither."""
        pool = list(self.norms.get(group, []))
        if positive_norms:
            pool.append(sorted(positive_norms)[(len(positive_norms) - 1) // 2])
        return float(np.median(pool)) if pool else None

    def _suspects(self, group: str, replies: list[Reply], ref: float) -> dict[str, str]:
        s = self.settings
        if len(replies) == 2:
            pair = self.pairs.setdefault(group, DriftDetector(s.drift_window, s.drift_ratio))
            return pair.strikes(replies)
        if len(replies) < 3:
            return {}
        flat = _flat([r.delta for r in replies])
        center = np.median(flat, axis=0)
        out = {}
        pulls = self.pull.setdefault(group, {})
        for reply, row in zip(replies, flat):
            residual = row - center
            distance = float(np.linalg.norm(residual))
            memory = pulls.get(reply.site_id, {"sketch": [0.0] * SKETCH_SIZE, "rounds": 0})
            sketch = s.pull_decay * np.asarray(memory["sketch"], dtype=np.float64) + count_sketch(residual)
            rounds = int(memory["rounds"]) + 1
            pulls[reply.site_id] = {"sketch": [float(np.float32(v)) for v in sketch], "rounds": rounds}
            pull = float(np.linalg.norm(sketch)) * (1 - s.pull_decay) / (1 - s.pull_decay ** rounds)
            if distance > s.outlier_factor * ref:
                out[reply.site_id] = (f"delta is {distance:.3g} from the coordinate median of its {len(replies)} peers, "
                                      f"over {s.outlier_factor:g}x their reference norm ({ref:.3g})")
            elif rounds >= 2 and pull > s.pull_ratio * ref:
                out[reply.site_id] = (f"sustained pull: its recent mean pull away from its peers' median is {pull:.3g}, "
                                      f"over {s.pull_ratio:g}x their reference norm ({ref:.3g})")
        return out

    # --- memory across rounds (kept in the bank store's journal) --------------------------------
    def state(self) -> dict:
        return {"norms": {g: list(v) for g, v in self.norms.items()}, "pull": self.pull,
                "suspect": {g: dict(v) for g, v in self.suspect.items()},
                "pairs": {g: d.state() for g, d in self.pairs.items()}}

    def load(self, state: Mapping | None) -> None:
        state = dict(state or {})
        self.norms = {g: [float(x) for x in v] for g, v in dict(state.get("norms", {})).items()}
        self.pull = {g: dict(v) for g, v in dict(state.get("pull", {})).items()}
        self.suspect = {g: {k: int(n) for k, n in dict(v).items()} for g, v in dict(state.get("suspect", {})).items()}
        self.pairs = {}
        for g, v in dict(state.get("pairs", {})).items():
            self.pairs[g] = DriftDetector(self.settings.drift_window, self.settings.drift_ratio)
            self.pairs[g].load(v)


_SKETCH_PLAN: dict[int, tuple[np.ndarray, np.ndarray]] = {}


def count_sketch(vector: np.ndarray, size: int = SKETCH_SIZE) -> np.ndarray:
    """A fixed random signed bucketing of a vector into `size` values: linear, so the sketch of a
    sum is the sum of the sketches, and its norm follows the vector's (to ~10% for spread vectors)."""
    n = vector.size
    if n not in _SKETCH_PLAN:
        rng = np.random.default_rng(20261207)
        _SKETCH_PLAN[n] = (rng.integers(0, size, n), rng.choice(np.array([-1.0, 1.0]), n))
    buckets, signs = _SKETCH_PLAN[n]
    return np.bincount(buckets, weights=signs * vector.ravel(), minlength=size)


def cap_shares(replies: list[Reply], max_share: float = 0.5) -> tuple[list[Reply], list[str]]:
    """From 3 replies on, no one reply holds more than `max_share` of the weight: a larger weight is
    lowered until its share is `max_share` (the others' weights are kept)."""
    if len(replies) < 3 or not 0 < max_share < 1:
        return list(replies), []
    total = sum(float(r.weight) for r in replies)
    out, notes = [], []
    for reply in replies:
        others = total - float(reply.weight)
        bound = max_share / (1 - max_share) * others
        if float(reply.weight) > bound > 0:
            notes.append(f"site {reply.site_id}: weight {float(reply.weight):.6g} lowered to {bound:.6g} "
                         f"(at most {max_share:g} of the bank's weight)")
            reply = replace(reply, weight=bound)
        out.append(reply)
    return out, notes


def bounded_scores(scores: Mapping[str, float], margin: float = 0.2, low: float = 0.0, high: float = 1.0) -> tuple[dict[str, float], list[str]]:
    """Scores of one thing by several sites (a version's Dice-AUC, a round metric), each clipped to
    the median of the *others* +- `margin` (from 3 scores on) and to [low, high]; returns (scores, notes)."""
    names = list(scores)
    values = np.array([float(scores[n]) for n in names], dtype=np.float64)
    out, notes = {}, []
    for i, name in enumerate(names):
        value = float(np.clip(values[i], low, high))
        if len(names) >= 3:
            median = float(np.median(np.delete(values, i)))
            value = float(np.clip(value, median - margin, median + margin))
        if value != values[i]:
            notes.append(f"site {name}: score {values[i]:.4g} clipped to {value:.4g} (the others' median +- {margin:g})")
        out[name] = value
    return out, notes


SCORE_MARGIN = 0.2  # a score may lie at most this far from the median of the other sites' (from 3 sites on)


def bound_metrics(replies: list[Reply], margin: float = SCORE_MARGIN) -> tuple[list[Reply], list[str]]:
    """Each score-like metric (range [0, 1]: Dice, Dice-AUC, guard score) of each reply bounded by
    the other replies' (`bounded_scores`), so perfect claims cannot carry a round's reported means."""
    from fedpoint.shared.payload import METRIC_RANGES

    metrics = [dict(r.metrics) for r in replies]
    notes = []
    for key in sorted({k for m in metrics for k in m if METRIC_RANGES.get(k) == (0.0, 1.0)}):
        holders = {i: float(m[key]) for i, m in enumerate(metrics) if key in m}
        bounded, _ = bounded_scores({str(i): v for i, v in holders.items()}, margin)
        for i in holders:
            if bounded[str(i)] != holders[i]:
                notes.append(f"site {replies[i].site_id}: {key} {holders[i]:.4g} clipped to {bounded[str(i)]:.4g} "
                             f"(the others' median +- {margin:g})")
                metrics[i][key] = bounded[str(i)]
    return [replace(r, metrics=m) if m != r.metrics else r for r, m in zip(replies, metrics)], notes


def _flat(deltas: list[dict]) -> np.ndarray:
    keys = sorted(deltas[0]) if deltas else []
    return np.stack([np.concatenate([np.asarray(d[k], dtype=np.float64).ravel() for k in keys]) for d in deltas]) \
        if deltas else np.zeros((0, 0))


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    return float(a @ b) / (na * nb) if na > 0 and nb > 0 else 0.0
