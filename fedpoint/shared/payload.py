"""What crosses the wire between a site and the coordinator, defined once for both sides.

A site's reply holds adapter arrays (the delta of its trainable parameters against the bank it
received) and a few numeric metrics. Nothing else may leave a site: `check_egress` refuses any
array that is not an adapter parameter of the expected name, shape and dtype, and any metric that
is not a finite number under an allowed name. The coordinator runs the same checks on arrival
(`fedpoint.server.checks`), so a misbehaving site is caught on both ends.

`encode_arrays` and `decode_arrays` are the one place where numpy arrays become a Flower
`ArrayRecord` and back, for both ends (flwr is imported only when they are called).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from fedpoint.shared.metrics import CLICK_METRICS, DICE_KEYS, NOC_KEYS, NOF

Schema = Mapping[str, tuple[tuple[int, ...], str]]

# Numeric, aggregate-only metrics a site may send. Counts and means over a round, never per-image
# values or identifiers. Add a name here (and only here) to let a new metric leave a site.
ALLOWED_METRICS: frozenset[str] = frozenset(
    {
        "num-examples",  # weight of the reply: accepted cases used in the round (Flower's FedAvg key)
        "images",
        "clicks",
        "seconds",
        *CLICK_METRICS,  # a round's means of the per-image click metrics (`fedpoint.shared.metrics`)
        "dice-auc",
        "predict-ms",
        "update-ms",
        "post-ms",
        "bytes-up",
        "episodes",
        "episode-accepted",
        "episode-rejected",
        "guard-score",
        "loss",
        "adapter-version",
        "bank-version",
        "eval-cases",     # the federated evaluation round: held-out cached cases scored
        "eval-dice-auc",  # their mean Dice-AUC under the simulated user, with the bank as sent
    }
)


# The range each metric must lie in (inclusive), on both ends of the wire. A Dice of 1e30 or a count
# of -5 is not a measurement; the ranges are generous bounds, not expectations.
_COUNT = (0.0, 1e7)
_MS = (0.0, 1e9)
METRIC_RANGES: dict[str, tuple[float, float]] = {
    "num-examples": _COUNT,
    "images": _COUNT,
    "clicks": _COUNT,
    "seconds": (0.0, 1e7),
    **{name: (0.0, 1.0) for name in (*DICE_KEYS, "dice-auc", NOF, "guard-score", "eval-dice-auc")},
    "eval-cases": _COUNT,
    **{name: _COUNT for name in NOC_KEYS},
    "predict-ms": _MS,
    "update-ms": _MS,
    "post-ms": _MS,
    "bytes-up": (0.0, 1e12),
    "episodes": _COUNT,
    "episode-accepted": _COUNT,
    "episode-rejected": _COUNT,
    "loss": (0.0, 1e6),
    "adapter-version": (0.0, 1e9),
    "bank-version": (0.0, 1e9),
}
assert set(METRIC_RANGES) == set(ALLOWED_METRICS)


class EgressError(RuntimeError):
    """Something other than adapter parameters and allowed metrics was about to leave a site."""


def to_numpy(state: Mapping) -> dict[str, np.ndarray]:
    """Tensors (or arrays) to contiguous CPU numpy arrays, keeping names and dtypes."""
    out = {}
    for name, value in state.items():
        if hasattr(value, "detach"):  # a torch tensor; torch itself is not imported here
            value = value.detach().to("cpu").numpy()
        out[name] = np.ascontiguousarray(value)
    return out


def from_numpy(arrays: Mapping[str, np.ndarray]) -> dict:
    """Numpy arrays to torch tensors (copies, so the tensors do not alias a received buffer)."""
    import torch

    return {name: torch.from_numpy(np.array(value, copy=True)) for name, value in arrays.items()}


def encode_arrays(arrays: Mapping[str, np.ndarray], dtype=None):
    """Named arrays as a Flower `ArrayRecord` (contiguous; cast to `dtype` when one is given),
    in the order given."""
    from flwr.app import Array, ArrayRecord

    return ArrayRecord(array_dict={name: Array(np.ascontiguousarray(value, dtype=dtype)) for name, value in arrays.items()})


def decode_arrays(record) -> dict[str, np.ndarray]:
    """A Flower `ArrayRecord` (None: empty) as named numpy arrays, in its order."""
    return {name: array.numpy() for name, array in (record or {}).items()}


def state_schema(arrays: Mapping) -> dict[str, tuple[tuple[int, ...], str]]:
    """The one schema rule, `{name: (shape, dtype name)}`, of a state held as numpy arrays or as
    torch tensors (`Adapter.schema()` gives its parameters here): both sides compare these."""
    return {name: _shape_and_dtype(a) for name, a in arrays.items()}


def _shape_and_dtype(value) -> tuple[tuple[int, ...], str]:
    if isinstance(value, np.ndarray) or not hasattr(value, "dtype"):
        return tuple(np.shape(value)), np.asarray(value).dtype.name
    return tuple(value.shape), str(value.dtype).removeprefix("torch.")  # a tensor: no copy to numpy


def is_number(value) -> bool:
    """A real int or float (numpy scalars included). bool is refused: True is not a measurement."""
    if isinstance(value, (bool, np.bool_)):
        return False
    return isinstance(value, (int, float, np.integer, np.floating))


def check_metrics(metrics: Mapping) -> None:
    for key, value in metrics.items():
        if key not in ALLOWED_METRICS:
            raise EgressError(f"metric {key!r} is not allowed to leave a site (allowed: {', '.join(sorted(ALLOWED_METRICS))})")
        if not is_number(value):
            raise EgressError(f"metric {key!r} must be an int or float, got {type(value).__name__}")
        if not math.isfinite(float(value)):
            raise EgressError(f"metric {key!r} is not finite ({value})")
        low, high = METRIC_RANGES[key]
        if not low <= float(value) <= high:
            raise EgressError(f"metric {key!r} is {float(value):.3g}, outside its range [{low:g}, {high:g}]")


def adapter_arrays_problem(arrays: Mapping, schema: Schema) -> str | None:
    """Why `arrays` are not exactly the adapter's parameters (every name of `schema` and no other,
    numpy arrays of its shapes and dtypes, finite values), or None. The one statement of that rule:
    a site's egress and the coordinator's intake both ask it."""
    missing = sorted(set(schema) - set(arrays))
    if missing:
        return f"adapter parameter {missing[0]!r} is missing from the payload ({len(missing)} missing)"
    for name, value in arrays.items():
        if name not in schema:
            return f"array {name!r} is not an adapter parameter: refusing to send it"
        if not isinstance(value, np.ndarray):
            return f"array {name!r} is a {type(value).__name__}, not a numpy array"
        shape, dtype = schema[name]
        if tuple(value.shape) != tuple(shape):
            return f"array {name!r} has shape {tuple(value.shape)}, expected {tuple(shape)}"
        if value.dtype.name != dtype:
            return f"array {name!r} has dtype {value.dtype.name}, expected {dtype}"
        if not np.isfinite(value).all():
            return f"array {name!r} holds non-finite values"
    return None


def check_arrays(arrays: Mapping, schema: Schema, error: type[Exception] = EgressError) -> None:
    """Raise `error` (EgressError unless another is given) unless `arrays` are exactly the adapter's
    parameters (`adapter_arrays_problem`)."""
    problem = adapter_arrays_problem(arrays, schema)
    if problem:
        raise error(problem)


def check_egress(arrays: Mapping, schema: Schema, metrics: Mapping | None = None) -> None:
    """Raise EgressError (naming the offending key) unless this payload is exactly adapter
    parameters of the expected names, shapes and dtypes plus allowed finite numeric metrics."""
    check_arrays(arrays, schema)
    check_metrics(metrics or {})


def payload_nbytes(arrays: Mapping[str, np.ndarray]) -> int:
    """Bytes of array data in a payload (what dominates a reply on the wire)."""
    return int(sum(np.asarray(a).nbytes for a in arrays.values()))
