"""Exact aggregation of site deltas into a bank.

Which rule a kind gets, and whether it is exact under secure aggregation, is the kind's own
(`fedpoint.shared.adapter_kinds`); this module computes them. Linear kinds (``norm``, ``norm+stem``, ``full``, and ``lora`` with A frozen per bank, whose state
holds only the B factors) are averaged directly::

    new = bank + sum_i w_i * delta_i / sum_i w_i

This is exact, and it needs only the weighted sum of the deltas, so it stays exact under secure
aggregation (which reveals nothing but that sum).

LoRA with A trained (``lora_freeze_a=False``) is not linear: mean(B) @ mean(A) != mean(B @ A).
Here each site's factors are rebuilt (bank + delta), the weighted mean of the products B_i @ A_i is
formed (conv A weights (r, in, *k) reshaped to (r, in*prod(k)), B weights (out, r, 1, ...) to
(out, r)), and refactorized to the bank's rank r with a truncated SVD, splitting the singular
values as square roots into both factors. That is exact up to the rank-r truncation (the mean of
n rank-r products can have rank n*r) and needs every site's individual factors, so it is NOT
possible under secure aggregation.

Robust rules (`rule=`), for the linear kinds only, on the deltas relative to the bank:

- ``trimmed-mean``: per coordinate, drop the `trim` fraction of the lowest and of the highest
  values (unweighted), average the rest;
- ``median``: per coordinate, the (unweighted) median.

Neither is the weighted mean of the site updates (so they are not exact in that sense), they ignore
the weights by design (a weight is a claim), and they need each site's individual delta, so they
are NOT possible under secure aggregation. With fewer than 3 replies nothing can be trimmed and the
median of two is their mean, so both take the mean of the deltas each scaled down to the smaller
norm: neither of two sites can carry the bank by the size of its delta, and each holds half.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence

import numpy as np

from fedpoint.shared.adapter_kinds import adapter_kind
from fedpoint.shared.config import AdapterConfig

RULES = ("weighted-mean", "trimmed-mean", "median")


def _adapter_cfg(kind: str, adapter_cfg: AdapterConfig | Mapping | None) -> AdapterConfig:
    if adapter_cfg is None:
        return AdapterConfig(kind=kind)
    if isinstance(adapter_cfg, Mapping):
        return AdapterConfig(**adapter_cfg)
    return adapter_cfg


def is_linear(kind: str, adapter_cfg: AdapterConfig | Mapping | None = None) -> bool:
    """Whether the kind, with this config, is aggregated as the weighted mean of its deltas."""
    return adapter_kind(kind).is_linear(_adapter_cfg(kind, adapter_cfg))


def check_rule(rule: str, kind: str, adapter_cfg: AdapterConfig | Mapping | None = None) -> str:
    if rule not in RULES:
        raise ValueError(f"unknown aggregation rule {rule!r}; known: {', '.join(RULES)}")
    if rule != "weighted-mean" and not is_linear(kind, adapter_cfg):
        raise ValueError(f"aggregation rule {rule!r} needs a linear adapter; LoRA with A trained is aggregated in "
                         "product space and supports only 'weighted-mean'")
    return rule


def aggregation_rule(kind: str, adapter_cfg: AdapterConfig | Mapping | None = None, rule: str = "weighted-mean",
                     trim: float = 0.2) -> str:
    """A short description of how this bank is aggregated (written into bank manifests)."""
    if rule == "trimmed-mean":
        return f"coordinate-trimmed-mean-{trim:g}-of-deltas"
    if rule == "median":
        return "coordinate-median-of-deltas"
    return adapter_kind(kind).aggregation(_adapter_cfg(kind, adapter_cfg))


def exact_under_secure_aggregation(kind: str, adapter_cfg: AdapterConfig | Mapping | None = None,
                                   rule: str = "weighted-mean") -> bool:
    """Whether this bank's aggregate is computable from the weighted sum alone (robust rules need
    each site's delta)."""
    return rule == "weighted-mean" and adapter_kind(kind).exact_under_secure_aggregation(_adapter_cfg(kind, adapter_cfg))


def _weights(replies: Sequence) -> np.ndarray:
    if not replies:
        raise ValueError("no replies to aggregate")
    weights = np.array([float(r.weight) for r in replies], dtype=np.float64)
    if not np.all(np.isfinite(weights)) or np.any(weights <= 0):
        raise ValueError("reply weights must be finite and positive (screen replies first)")
    return weights / weights.sum()


def _weighted_mean_delta(name: str, replies: Sequence, fractions: np.ndarray) -> np.ndarray:
    total = np.zeros(np.shape(replies[0].delta[name]), dtype=np.float64)
    for reply, fraction in zip(replies, fractions):
        total += fraction * np.asarray(reply.delta[name], dtype=np.float64)
    return total


def aggregate(
    bank_state: Mapping[str, np.ndarray],
    replies: Sequence,
    kind: str,
    adapter_cfg: AdapterConfig | Mapping | None = None,
    rule: str = "weighted-mean",
    trim: float = 0.2,
) -> dict[str, np.ndarray]:
    """The bank's next state from screened replies whose deltas are relative to `bank_state`."""
    fractions = _weights(replies)
    for reply in replies:
        if set(reply.delta) != set(bank_state):
            raise ValueError(f"site {reply.site_id}: delta keys do not match the bank (screen replies first)")
    if check_rule(rule, kind, adapter_cfg) != "weighted-mean":
        return {name: (np.asarray(value, dtype=np.float64) + robust_delta(name, replies, rule, trim)).astype(np.float32)
                for name, value in bank_state.items()}
    if is_linear(kind, adapter_cfg):
        return {
            name: (np.asarray(value, dtype=np.float64) + _weighted_mean_delta(name, replies, fractions)).astype(np.float32)
            for name, value in bank_state.items()
        }
    return _aggregate_free_lora(bank_state, replies, fractions, _adapter_cfg(kind, adapter_cfg).lora_rank)


def robust_delta(name: str, replies: Sequence, rule: str, trim: float = 0.2) -> np.ndarray:
    """Coordinate-wise trimmed mean or median of the replies' deltas for one parameter. With fewer
    than 3 replies (nothing to trim, no majority) each delta is first scaled down to the smallest
    norm among them (`equalized_scales`), so neither can carry the mean by its size."""
    stack = np.stack([np.asarray(r.delta[name], dtype=np.float64) for r in replies])
    if len(replies) < 3:
        return (stack * equalized_scales(replies).reshape((-1,) + (1,) * (stack.ndim - 1))).mean(axis=0)
    if rule == "median":
        return np.median(stack, axis=0)
    cut = int(np.floor(trim * len(replies)))
    ordered = np.sort(stack, axis=0)
    return ordered[cut:len(replies) - cut].mean(axis=0)


def equalized_scales(replies: Sequence) -> np.ndarray:
    """Per reply, the factor that scales its whole delta (all parameters) down to the smallest
    positive delta norm among the replies (1 for that one, and for zero deltas)."""
    norms = np.array([np.sqrt(sum(float(np.square(np.asarray(v, dtype=np.float64)).sum()) for v in r.delta.values()))
                      for r in replies])
    positive = norms[norms > 0]
    if positive.size == 0:
        return np.ones(len(replies))
    return np.where(norms > 0, np.minimum(1.0, positive.min() / np.where(norms > 0, norms, 1.0)), 1.0)


# ----------------------------------------------------------------------- LoRA in product space
def lora_pairs(names) -> list[tuple[str, str]]:
    """(A name, B name) for every LoRA module in a state."""
    names = set(names)
    pairs = [(a, a.replace("lora_A", "lora_B")) for a in sorted(names) if "lora_A" in a]
    for a, b in pairs:
        if b not in names:
            raise ValueError(f"LoRA factor {a!r} has no matching {b!r}")
    return pairs


def lora_product(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """B @ A as a matrix (out, in*prod(k)) for peft conv factors A (r, in, *k), B (out, r, 1, ...)."""
    rank = a.shape[0]
    return np.asarray(b, dtype=np.float64).reshape(b.shape[0], rank) @ np.asarray(a, dtype=np.float64).reshape(rank, -1)


def refactorize(product: np.ndarray, rank: int, a_scale_floor: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Rank-`rank` factors (A (rank, d), B (out, rank)) with B @ A the best rank-`rank`
    approximation of `product`; singular values are split as square roots into both factors.

    Directions with a (near-)zero singular value keep a unit-direction row in A scaled to
    `a_scale_floor` and a zero column in B: the product is unchanged, but the component can still
    learn next round (an all-zero A row and B column would have zero gradient forever).
    """
    out_dim, d = product.shape
    u, s, vt = np.linalg.svd(product, full_matrices=False)
    k = min(rank, s.size)
    u, s, vt = u[:, :k], s[:k], vt[:k]
    if k < rank:  # a layer whose product cannot reach the bank's rank (e.g. a 1-channel head)
        u = np.concatenate([u, np.zeros((out_dim, rank - k))], axis=1)
        s = np.concatenate([s, np.zeros(rank - k)])
        vt = np.concatenate([vt, _orthonormal_complement(vt, d, rank - k)], axis=0)
    tiny = max(float(s.max(initial=0.0)) * 1e-7, 1e-30)
    a_scale = np.where(s > tiny, np.sqrt(s), a_scale_floor)
    return a_scale[:, None] * vt, u * (s / a_scale)[None, :]


def _orthonormal_complement(rows: np.ndarray, d: int, count: int) -> np.ndarray:
    """`count` unit rows orthogonal to `rows` (zeros once the space of dimension d is used up)."""
    basis = np.linalg.svd(rows, full_matrices=True)[2]  # rows are orthonormal: the rest completes them
    extra = basis[rows.shape[0]: rows.shape[0] + count]
    if extra.shape[0] < count:
        extra = np.concatenate([extra, np.zeros((count - extra.shape[0], d))])
    return extra


def _single_threaded_blas():
    """Small SVDs gain nothing from BLAS threads, and OpenBLAS's spinning threads make them 10-100x
    slower on a loaded machine; threadpoolctl (optional) limits them for the duration."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(1, user_api="blas")


def _aggregate_free_lora(bank_state, replies, fractions: np.ndarray, rank: int) -> dict[str, np.ndarray]:
    with _single_threaded_blas():
        return _aggregate_free_lora_factors(bank_state, replies, fractions, rank)


def _aggregate_free_lora_factors(bank_state, replies, fractions: np.ndarray, rank: int) -> dict[str, np.ndarray]:
    new = {}
    paired = set()
    for a_name, b_name in lora_pairs(bank_state):
        a0, b0 = np.asarray(bank_state[a_name]), np.asarray(bank_state[b_name])
        if a0.shape[0] != rank:
            raise ValueError(f"{a_name}: factor rank {a0.shape[0]} differs from the bank's rank {rank}")
        mean_product = sum(
            f * lora_product(a0 + np.asarray(r.delta[a_name]), b0 + np.asarray(r.delta[b_name]))
            for r, f in zip(replies, fractions)
        )
        row_norm = float(np.sqrt(np.mean(np.sum(a0.reshape(rank, -1).astype(np.float64) ** 2, axis=1))))
        a, b = refactorize(mean_product, rank, a_scale_floor=row_norm if row_norm > 0 else 1.0)
        new[a_name] = a.reshape(a0.shape).astype(np.float32)
        new[b_name] = b.reshape(b0.shape).astype(np.float32)
        paired.update((a_name, b_name))
    for name in set(bank_state) - paired:  # anything else in the state is linear
        new[name] = (np.asarray(bank_state[name], dtype=np.float64) + _weighted_mean_delta(name, replies, fractions)).astype(np.float32)
    return {name: new[name] for name in bank_state}


# ------------------------------------------------------------------------ round provenance
def weighted_metrics(replies: Sequence) -> dict[str, float]:
    """Weighted mean of each metric over the replies that report it."""
    sums: dict[str, float] = {}
    weights: dict[str, float] = {}
    for reply in replies:
        for key, value in reply.metrics.items():
            sums[key] = sums.get(key, 0.0) + float(reply.weight) * float(value)
            weights[key] = weights.get(key, 0.0) + float(reply.weight)
    return {key: sums[key] / weights[key] for key in sorted(sums)}


def round_record(server_round: int, accepted: Sequence, rejected: Sequence = ()) -> dict:
    """Manifest fields for `BankStore.write` describing one aggregation round (site ids are
    hashed by the store before they are written)."""
    return {
        "round": int(server_round),
        "sites": sorted({r.site_id for r in accepted}),
        "counts": {
            "replies": len(accepted) + len(rejected),
            "accepted": len(accepted),
            "rejected": len(rejected),
            "accepted_cases": float(sum(float(r.weight) for r in accepted)),
        },
        "metrics": weighted_metrics(accepted),
    }
