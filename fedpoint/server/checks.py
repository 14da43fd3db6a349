"""Screening site replies before they touch a bank.

A reply is rejected, with a short reason naming the site, when its weight is not positive, it was
made on another base, its arrays do not match the bank's parameters (missing or extra names, wrong
shape or dtype), it holds non-finite values or metrics that may not leave a site, or its delta is
far larger than the round's typical delta (> norm_factor x the median L2 norm of the other
well-formed replies, judged only when there are at least `min_for_median` well-formed replies and
skipped when that median is zero, i.e. the others did not move).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

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
    min_for_median: int = 3,
) -> tuple[list[Reply], list[Rejection]]:
    """Split replies into (accepted, rejected) where each rejection carries a readable reason."""
    accepted, rejected = [], []
    for reply in replies:
        problem = structural_problem(reply, schema, fingerprint)
        if problem:
            rejected.append((reply, f"site {reply.site_id}: {problem}"))
        else:
            accepted.append(reply)
    if len(accepted) < min_for_median:
        return accepted, rejected
    norms = np.array([delta_norm(r.delta) for r in accepted])
    kept = []
    for i, reply in enumerate(accepted):
        median = float(np.median(np.delete(norms, i)))  # of the others, so an outlier cannot raise its own bar
        if median > 0 and norms[i] > norm_factor * median:
            rejected.append((reply, f"site {reply.site_id}: delta norm {norms[i]:.3g} is over {norm_factor:g}x the median of the others ({median:.3g})"))
        else:
            kept.append(reply)
    return kept, rejected
