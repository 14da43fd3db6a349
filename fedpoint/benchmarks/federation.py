"""Federation benchmark: what a site sends per round for each adapter kind, against full-model
FedAvg, and what aggregating 10, 100 and 1000 replies costs the coordinator (wall time and peak
memory of the aggregation itself, measured with tracemalloc, which sees numpy's allocations).

The replies are random deltas of the right names and shapes: aggregation cost does not depend on
the values. Weights are float32 on the wire, so bytes = 4 x parameters.
"""

from __future__ import annotations

import os
import platform
import time
import tracemalloc

import numpy as np

from fedpoint.server.aggregate import aggregate
from fedpoint.server.checks import Reply, screen_replies
from fedpoint.shared.config import AdapterConfig
from fedpoint.shared.payload import payload_nbytes, state_schema, to_numpy

VARIANTS = {
    "norm": AdapterConfig(kind="norm"),
    "norm+stem": AdapterConfig(kind="norm+stem"),
    "lora-frozen-a": AdapterConfig(kind="lora", lora_freeze_a=True),
    "lora-free-a": AdapterConfig(kind="lora", lora_freeze_a=False),
    "full": AdapterConfig(kind="full"),
}
# Kinds whose aggregation is timed. full at 1000 replies holds ~0.8 GB of replies on the default
# model: still measured, it fits.
REPLY_COUNTS = ("norm", "lora-frozen-a", "lora-free-a", "full")
DEFAULT_KIND = "norm"


def _default_model():
    import torch

    from fedpoint.shared.config import ModelConfig
    from fedpoint.shared.model import build_model, load_base

    try:
        model, _, card = load_base()
        return model, f"packaged base ({card.get('fingerprint', '?')})"
    except FileNotFoundError:
        torch.manual_seed(0)
        return build_model(ModelConfig()), "random weights, default ModelConfig() (no packaged base yet)"


def _replies(bank: dict[str, np.ndarray], count: int, fingerprint: str) -> list[Reply]:
    rng = np.random.default_rng(0)
    return [
        Reply(f"site-{i}", "general", {k: (1e-3 * rng.standard_normal(v.shape)).astype(np.float32) for k, v in bank.items()},
              float(rng.integers(1, 50)), fingerprint, {"dice1": float(rng.uniform())})
        for i in range(count)
    ]


def _measure(bank, replies, cfg: AdapterConfig, repeats: int) -> dict:
    aggregate(bank, replies[:2], cfg.kind, cfg)  # warm-up: the first SVD/BLAS call loads and spins up threads
    seconds = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        aggregate(bank, replies, cfg.kind, cfg)
        seconds.append(time.perf_counter() - t0)
    tracemalloc.start()
    aggregate(bank, replies, cfg.kind, cfg)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    t0 = time.perf_counter()
    screen_replies(replies, state_schema(bank), "fp")
    screen_s = time.perf_counter() - t0
    return {
        "aggregate_s": round(min(seconds), 5),
        "peak_mb": round(peak / 2**20, 3),
        "replies_mb": round(len(replies) * payload_nbytes(bank) / 2**20, 3),
        "screen_s": round(screen_s, 5),
    }


def run(repeats: int = 3, counts: tuple[int, ...] = (10, 100, 1000)) -> dict:
    from fedpoint.shared.adapters import make_adapter
    from fedpoint.shared.model import base_fingerprint

    model, source = _default_model()
    fingerprint = base_fingerprint(model)
    banks = {name: to_numpy(make_adapter(model, cfg, fingerprint).state()) for name, cfg in VARIANTS.items()}
    nbytes = {name: payload_nbytes(state) for name, state in banks.items()}
    per_kind: dict[str, dict] = {}
    for name in REPLY_COUNTS:
        per_kind[name] = {}
        for count in counts:
            replies = _replies(banks[name], count, "fp")
            per_kind[name][str(count)] = _measure(banks[name], replies, VARIANTS[name], repeats)
            del replies
    default = per_kind[DEFAULT_KIND]
    return {
        "model": {"source": source, "parameters": int(sum(p.numel() for p in model.parameters()))},
        "bytes_per_site_per_round": nbytes,
        "parameters_per_site_per_round": {name: int(sum(v.size for v in s.values())) for name, s in banks.items()},
        "bytes_ratio_vs_full": {name: round(b / nbytes["full"], 5) for name, b in nbytes.items()},
        "aggregation_rule_variant": {name: cfg.rules.variant(cfg) for name, cfg in VARIANTS.items()},
        "default_kind": DEFAULT_KIND,
        "aggregate_s": {n: r["aggregate_s"] for n, r in default.items()},
        "aggregate_peak_mb": {n: r["peak_mb"] for n, r in default.items()},
        "per_kind": per_kind,
        "growth": _growth(per_kind),
        "note": "aggregate_s: best of repeats after a warm-up; peak_mb: extra memory the aggregation allocates, "
                "on top of the replies it is given (replies_mb); screen_s: screen_replies on the same replies.",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "numpy": np.__version__},
    }


def _growth(per_kind: dict[str, dict]) -> dict:
    growth = {}
    for name, rows in per_kind.items():
        small, large = list(rows)[-2:] if len(rows) > 1 else (None, None)
        if small and rows[small]["aggregate_s"] > 0:
            growth[f"{name}_time_ratio_{large}_vs_{small}"] = round(rows[large]["aggregate_s"] / rows[small]["aggregate_s"], 2)
    growth["expected"] = ("linear in replies (ratio = the ratio of reply counts): one pass over the replies per parameter; "
                          "free LoRA adds a fixed SVD cost per module, so it grows slower at small counts")
    return growth
