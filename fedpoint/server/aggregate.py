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

The rules are named variants in one registry (`AGGREGATION_RULES`: `WeightedMean`, the default
described above, and the coordinate rules below); `aggregate(..., rule=name)` looks one up.

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

from fedpoint.server.records import delta_norm
from fedpoint.shared.adapter_kinds import adapter_kind
from fedpoint.shared.config import AdapterConfig

def _adapter_cfg(kind: str, adapter_cfg: AdapterConfig | Mapping | None) -> AdapterConfig:
    if adapter_cfg is None:
        return AdapterConfig(kind=kind)
    if isinstance(adapter_cfg, Mapping):
        return AdapterConfig(**adapter_cfg)
    return adapter_cfg


def is_linear(kind: str, adapter_cfg: AdapterConfig | Mapping | None = None) -> bool:
    """Whether the kind, with this config, is aggregated as the weighted mean of its deltas."""
    return adapter_kind(kind).is_linear(_adapter_cfg(kind, adapter_cfg))


# ------------------------------------------------------------------------ the rules, by name
class WeightedMean:
    """The weighted mean of the deltas (of the LoRA products when A is trained): exact, and
    computable from the weighted sum alone for the kinds that say so."""

    name = "weighted-mean"
    linear_only = False
    secure_aggregation = True  # the rule allows it; the kind decides (AdapterKind.exact_under_secure_aggregation)

    def describe(self, kind: str, cfg: AdapterConfig, trim: float) -> str:
        return adapter_kind(kind).aggregation(cfg)

    def apply(self, bank_state: Mapping, replies: Sequence, cfg: AdapterConfig, trim: float) -> dict[str, np.ndarray]:
        fractions = _weights(replies)
        if adapter_kind(cfg.kind).is_linear(cfg):
            return {name: (np.asarray(value, dtype=np.float64) + _weighted_mean_delta(name, replies, fractions)).astype(np.float32)
                    for name, value in bank_state.items()}
        return _aggregate_free_lora(bank_state, replies, fractions, cfg.lora_rank)


class CoordinateRule:
    """A robust rule per coordinate of the deltas: unweighted (a weight is a claim), linear kinds
    only, and never under secure aggregation (it needs each site's delta)."""

    name = ""
    linear_only = True
    secure_aggregation = False

    def center(self, stack: np.ndarray, trim: float) -> np.ndarray:
        raise NotImplementedError

    def apply(self, bank_state: Mapping, replies: Sequence, cfg: AdapterConfig, trim: float) -> dict[str, np.ndarray]:
        _weights(replies)  # the same refusal of empty rounds and non-positive weights as the mean
        return {name: (np.asarray(value, dtype=np.float64) + robust_delta(name, replies, self, trim)).astype(np.float32)
                for name, value in bank_state.items()}


class TrimmedMean(CoordinateRule):
    """Per coordinate: drop the `trim` fraction of the lowest and of the highest values, average the rest."""

    name = "trimmed-mean"

    def describe(self, kind: str, cfg: AdapterConfig, trim: float) -> str:
        return f"coordinate-trimmed-mean-{trim:g}-of-deltas"

    def center(self, stack: np.ndarray, trim: float) -> np.ndarray:
        cut = int(np.floor(trim * len(stack)))
        return np.sort(stack, axis=0)[cut:len(stack) - cut].mean(axis=0)


class Median(CoordinateRule):
    """Per coordinate: the median."""

    name = "median"

    def describe(self, kind: str, cfg: AdapterConfig, trim: float) -> str:
        return "coordinate-median-of-deltas"

    def center(self, stack: np.ndarray, trim: float) -> np.ndarray:
        return np.median(stack, axis=0)


AGGREGATION_RULES = {rule.name: rule for rule in (WeightedMean(), TrimmedMean(), Median())}
RULES = tuple(AGGREGATION_RULES)  # their names (CoordinatorConfig.aggregation_rule)


def rule_named(rule) -> WeightedMean | CoordinateRule:
    """The rule of a name (a rule object is returned as it is); ValueError for an unknown name."""
    if not isinstance(rule, str):
        return rule
    if rule not in AGGREGATION_RULES:
        raise ValueError(f"unknown aggregation rule {rule!r}; known: {', '.join(RULES)}")
    return AGGREGATION_RULES[rule]


def check_rule(rule: str, kind: str, adapter_cfg: AdapterConfig | Mapping | None = None) -> str:
    """The rule's name, once it is known to fit the adapter kind (ValueError otherwise)."""
    if rule_named(rule).linear_only and not is_linear(kind, adapter_cfg):
        raise ValueError(f"aggregation rule {rule!r} needs a linear adapter; LoRA with A trained is aggregated in "
                         "product space and supports only 'weighted-mean'")
    return rule


def aggregation_rule(kind: str, adapter_cfg: AdapterConfig | Mapping | None = None, rule: str = "weighted-mean",
                     trim: float = 0.2) -> str:
    """A short description of how this bank is aggregated (written into bank manifests)."""
    return rule_named(rule).describe(kind, _adapter_cfg(kind, adapter_cfg), trim)


def exact_under_secure_aggregation(kind: str, adapter_cfg: AdapterConfig | Mapping | None = None,
                                   rule: str = "weighted-mean") -> bool:
    """Whether this bank's aggregate is computable from the weighted sum alone (robust rules need
    each site's delta)."""
    return rule_named(rule).secure_aggregation and adapter_kind(kind).exact_under_secure_aggregation(_adapter_cfg(kind, adapter_cfg))


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
    """The bank's next state from screened replies whose deltas are relative to `bank_state`,
    by the named rule (`AGGREGATION_RULES`)."""
    _weights(replies)
    for reply in replies:
        if set(reply.delta) != set(bank_state):
            raise ValueError(f"site {reply.site_id}: delta keys do not match the bank (screen replies first)")
    check_rule(rule, kind, adapter_cfg)
    return rule_named(rule).apply(bank_state, replies, _adapter_cfg(kind, adapter_cfg), trim)


def robust_delta(name: str, replies: Sequence, rule, trim: float = 0.2) -> np.ndarray:
    """A coordinate rule (by name or object) on the replies' deltas for one parameter. With fewer
    than 3 replies (nothing to trim, no majority) each delta is first scaled down to the smallest
    norm among them (`equalized_scales`), so neither can carry the mean by its size."""
    stack = np.stack([np.asarray(r.delta[name], dtype=np.float64) for r in replies])
    if len(replies) < 3:
        return (stack * equalized_scales(replies).reshape((-1,) + (1,) * (stack.ndim - 1))).mean(axis=0)
    return rule_named(rule).center(stack, trim)


def equalized_scales(replies: Sequence) -> np.ndarray:
    """Per reply, the factor that scales its whole delta (all parameters) down to the smallest
    positive delta norm among the replies (1 for that one, and for zero deltas)."""
    norms = np.array([r.norm if hasattr(r, "norm") else delta_norm(r.delta) for r in replies])  # a Reply's, measured once
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
