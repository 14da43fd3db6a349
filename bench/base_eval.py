"""Frozen bases on the built-in evaluation datasets, whole slices through the focus crop.

    python bench/base_eval.py --base base2d --base old/base2d --images 40 --clicks 20

Prints, per dataset and per object type, Dice@1/@5/@10, NoC@85 and NoC@90 for each base side by
side, and the ratio of NoC@90 (new / old). None of these datasets ever chose a default.
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np

from fedpoint.simulations.evaluation import EvaluationSpec, run_evaluation

DATASETS = ("pyradiomics-lung", "pyradiomics-brain", "pyradiomics-breast", "stardist-nuclei")
KEYS = ("dice1", "dice5", "dice10", "noc85", "noc90")


def object_type(name: str) -> str:
    return re.sub(r"(-\d+)?(#\d+)?$", "", name)


def evaluate(base: str, data: str, images: int, clicks: int) -> list[dict]:
    with tempfile.TemporaryDirectory(prefix="fedpoint-base-eval-") as tmp:
        spec = EvaluationSpec(data=data, mode="frozen", base=base, clicks=clicks, images=images, full_slice=True)
        return run_evaluation(spec, Path(tmp))["images"]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", action="append", required=True)
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--clicks", type=int, default=20)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    table = defaultdict(dict)
    for data in args.datasets.split(","):
        for base in args.base:
            records = evaluate(base, data, args.images, args.clicks)
            groups = {"all": records}
            for r in records:
                groups.setdefault(object_type(r["object"]), []).append(r)
            for group, rows in groups.items():
                table[f"{data}/{group}"][base] = {k: float(np.mean([r[k] for r in rows])) for k in KEYS} | {"n": len(rows)}
    header = f"{'dataset/object':34s} {'base':18s} {'n':>3s} " + " ".join(f"{k:>7s}" for k in KEYS)
    print(header)
    for name, per_base in table.items():
        for base, m in per_base.items():
            print(f"{name:34s} {Path(base).name[:18]:18s} {m['n']:3d} " + " ".join(f"{m[k]:7.3f}" for k in KEYS))
        if len(per_base) == 2:
            a, b = per_base.values()
            print(f"{'':34s} {'NoC90 ratio':18s}     {a['noc90'] / b['noc90']:.2f}")
    if args.out:
        args.out.write_text(json.dumps(table, indent=2))


if __name__ == "__main__":
    main()
