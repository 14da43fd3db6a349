"""Screening site replies before they touch a bank.

A reply is rejected, with a short reason naming the site, when its weight is not a positive finite
number, it was made on another base, its arrays do not match the bank's parameters (missing or extra
names, wrong shape or dtype), it holds non-finite values or metrics that may not leave a site (or
lie outside their range), or its delta is too large:

- over an absolute L2 bound (`norm_bound`: the bank's own history and the adapter kind's cap, see
  `norm_bound`), which works at any number of replies, one included;
- over `norm_factor` x the median L2 norm of the *other* well-formed replies (from 2 replies on;
  skipped when that median is zero), so an outlier cannot raise its own bar;
- an opposed outlier: more than `drift_ratio` x that median and pointing against the mean of the
  others (negative cosine), judged from 3 replies on.

Weights are clipped, not rejected: to at most `weight_cap_factor` x the median weight of the
others and to a per-site cap (the registry's `max-weight`). `DriftDetector` refuses a site whose
replies were outsized and opposed in `window` consecutive rounds.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

import numpy as np

from fedpoint.shared.adapter_kinds import ADAPTER_KINDS
from fedpoint.shared.payload import EgressError, Schema, check_arrays, check_metrics, is_number


@dataclass
class Reply:
    """One site's answer for one round.

    `bank` is the bank the site received and `delta` is relative to (its trained adapter state
    minus that bank's state); `weight` is the number of accepted cases it trained on.
    """

    site_id: str
    bank: str
    delta: dict[str, np.ndarray]
    weight: float
    fingerprint: str
    metrics: dict = field(default_factory=dict)
    bank_version: int | None = None


Rejection = tuple[Reply, str]

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


def delta_norm(delta: dict[str, np.ndarray]) -> float:
    """L2 norm over every array of a delta, accumulated in float64."""
    return math.sqrt(sum(float(np.square(np.asarray(a, dtype=np.float64)).sum()) for a in delta.values()))


def clip_delta(delta: dict[str, np.ndarray], max_norm: float) -> tuple[dict[str, np.ndarray], float]:
    """Scale a delta down to at most `max_norm` (global L2); returns (delta, scale applied)."""
    if max_norm <= 0:
        raise ValueError(f"max_norm must be positive, got {max_norm}")
    norm = delta_norm(delta)
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
    try:
        check_arrays(reply.delta, schema)
        check_metrics(reply.metrics)
    except EgressError as err:
        return str(err)
    return None


def screen_replies(
    replies: list[Reply],
    schema: Schema,
    fingerprint: str,
    norm_factor: float = 5.0,
    min_for_median: int = 2,
    *,
    norm_bound: float | None = None,
    drift_ratio: float | None = None,
) -> tuple[list[Reply], list[Rejection]]:
    """Split replies into (accepted, rejected) where each rejection carries a readable reason."""
    accepted, rejected = [], []
    for reply in replies:
        problem = structural_problem(reply, schema, fingerprint)
        if problem:
            rejected.append((reply, f"site {reply.site_id}: {problem}"))
        else:
            accepted.append(reply)
    kept, more = screen_norms(accepted, norm_factor, min_for_median, norm_bound=norm_bound, drift_ratio=drift_ratio)
    return kept, rejected + more


def screen_norms(replies: list[Reply], norm_factor: float = 5.0, min_for_median: int = 2, *,
                 norm_bound: float | None = None, drift_ratio: float | None = None,
                 what: str = "delta") -> tuple[list[Reply], list[Rejection]]:
    """The size screens on well-formed replies: absolute bound, relative bound, opposed outlier."""
    kept, rejected = [], []
    norms = np.array([delta_norm(r.delta) for r in replies])
    flat = _flat([r.delta for r in replies]) if drift_ratio and len(replies) >= 3 else None
    for i, reply in enumerate(replies):
        if norm_bound is not None and not norms[i] <= norm_bound:
            rejected.append((reply, f"site {reply.site_id}: {what} norm {norms[i]:.3g} is over the bank's absolute bound {norm_bound:.3g}"))
            continue
        if len(replies) >= max(min_for_median, 2):
            median = float(np.median(np.delete(norms, i)))  # of the others, so an outlier cannot raise its own bar
            if median > 0 and norms[i] > norm_factor * median:
                rejected.append((reply, f"site {reply.site_id}: {what} norm {norms[i]:.3g} is over {norm_factor:g}x the median of the others ({median:.3g})"))
                continue
            if flat is not None and median > 0 and norms[i] > drift_ratio * median:
                cosine = _cosine(flat[i], np.delete(flat, i, axis=0).mean(axis=0))
                if cosine < 0:
                    rejected.append((reply, f"site {reply.site_id}: {what} norm {norms[i]:.3g} is over {drift_ratio:g}x the median of the others ({median:.3g}) and opposed to their mean (cosine {cosine:.2f})"))
                    continue
        kept.append(reply)
    return kept, rejected


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
    """Per site across rounds: a site whose reply was outsized (> `ratio` x the median norm of the
    others) and opposed to the others' mean (negative cosine) in `window` consecutive rounds in which
    it replied is refused from then on."""

    def __init__(self, window: int = 3, ratio: float = 2.0):
        self.window, self.ratio = window, ratio
        self.streak: dict[str, int] = {}
        self.refused: dict[str, str] = {}

    def observe(self, replies: list[Reply]) -> None:
        if self.window <= 0 or len(replies) < 2:
            return
        norms = np.array([delta_norm(r.delta) for r in replies])
        flat = _flat([r.delta for r in replies])
        for i, reply in enumerate(replies):
            median = float(np.median(np.delete(norms, i)))
            cosine = _cosine(flat[i], np.delete(flat, i, axis=0).mean(axis=0))
            suspicious = median > 0 and norms[i] > self.ratio * median and cosine < 0
            self.streak[reply.site_id] = self.streak.get(reply.site_id, 0) + 1 if suspicious else 0
            if self.streak[reply.site_id] >= self.window and reply.site_id not in self.refused:
                self.refused[reply.site_id] = (f"site {reply.site_id}: sustained drift, {self.window} rounds in a row "
                                               f"over {self.ratio:g}x the others' median norm and opposed to their mean")

    def state(self) -> dict:
        return {"streak": dict(self.streak), "refused": dict(self.refused)}

    def load(self, state: Mapping | None) -> None:
        self.streak = dict((state or {}).get("streak", {}))
        self.refused = dict((state or {}).get("refused", {}))


def _flat(deltas: list[dict]) -> np.ndarray:
    keys = sorted(deltas[0]) if deltas else []
    return np.stack([np.concatenate([np.asarray(d[k], dtype=np.float64).ravel() for k in keys]) for d in deltas]) \
        if deltas else np.zeros((0, 0))


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    return float(a @ b) / (na * nb) if na > 0 and nb > 0 else 0.0
