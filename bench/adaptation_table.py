"""Online adaptation against the frozen base, dataset x shift x mode, with the defaults.

    python bench/adaptation_table.py --images 16 --clicks 20 --seeds 0,1,2

For each built-in dataset and each of the demo's shifts: frozen, mid+post and mid+post+episodes
(default learning rate, guard on), the differences to frozen (Dice@3 points, NoC@90 clicks) and
the guard's rejection counts; `--no-guard` repeats mid+post with the guard off beside it.
None of these numbers chose a default (see fedpoint.simulations.tuning).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

from fedpoint.simulations.evaluation import EvaluationSpec, run_evaluation

DATASETS = ("pyradiomics-lung", "pyradiomics-brain", "pyradiomics-breast", "stardist-nuclei")
SHIFTS = ("scanner-b", "scanner-c", "noise", "gamma-high", "bias", "blur")


def run(**spec) -> dict:
    with tempfile.TemporaryDirectory(prefix="fedpoint-adapt-") as tmp:
        return run_evaluation(EvaluationSpec(**spec), Path(tmp))["summary"]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", default=",".join(DATASETS))
    p.add_argument("--shifts", default=",".join(SHIFTS))
    p.add_argument("--modes", default="mid+post,mid+post+episodes")
    p.add_argument("--images", type=int, default=16)
    p.add_argument("--clicks", type=int, default=20)
    p.add_argument("--seeds", default="0")
    p.add_argument("--size", type=int, default=96)
    p.add_argument("--full-slice", action="store_true")
    p.add_argument("--no-guard", action="store_true", help="also run mid+post with the guard off")
    p.add_argument("--out", type=Path)
    a = p.parse_args(argv)
    rows = []
    modes = a.modes.split(",") + (["mid+post/no-guard"] if a.no_guard else [])
    for data in a.datasets.split(","):
        for shift in a.shifts.split(","):
            acc = {m: {"d3": [], "n90": [], "rej": 0} for m in modes}
            frozen_d3, frozen_n90 = [], []
            for seed in (int(s) for s in a.seeds.split(",")):
                common = dict(data=data, shift=shift, seed=seed, images=a.images, clicks=a.clicks, size=a.size,
                              full_slice=a.full_slice)
                f = run(mode="frozen", **common)
                frozen_d3.append(f["dice3"])
                frozen_n90.append(f["noc90"])
                for m in modes:
                    mode, _, flag = m.partition("/")
                    s = run(mode=mode, guard=flag != "no-guard", **common)
                    acc[m]["d3"].append(s["dice3"] - f["dice3"])
                    acc[m]["n90"].append(s["noc90"] - f["noc90"])
                    acc[m]["rej"] += s["guard_rejected"]
            for m in modes:
                row = {"dataset": data, "shift": shift, "mode": m, "frozen_dice3": float(np.mean(frozen_d3)),
                       "frozen_noc90": float(np.mean(frozen_n90)), "d_dice3": float(np.mean(acc[m]["d3"])),
                       "d_noc90": float(np.mean(acc[m]["n90"])), "guard_rejected": acc[m]["rej"]}
                row["within_bar"] = row["d_dice3"] >= -0.01 and row["d_noc90"] <= 0.3
                rows.append(row)
                print(f"{data:19s} {shift:11s} {m:22s} frozen D3 {row['frozen_dice3']:.3f} NoC90 {row['frozen_noc90']:5.2f} | "
                      f"dD3 {100 * row['d_dice3']:+5.1f} pts dNoC90 {row['d_noc90']:+5.2f} rejected {row['guard_rejected']:3d} "
                      f"{'ok' if row['within_bar'] else 'WORSE'}", flush=True)
    ok = sum(r["within_bar"] for r in rows)
    print(f"\n{ok} of {len(rows)} (dataset, shift, mode) cells within 1 Dice@3 point and 0.3 NoC@90 of frozen")
    if a.out:
        a.out.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
