"""Bases on the built-in evaluation datasets, whole slices (2D base) or whole volumes (3D base)
through the focus crop.

    python bench/base_eval.py --base base2d --base old/base2d --images 40 --clicks 20
    python bench/base_eval.py --base base3d --modes frozen,mid+post --clicks 20 \
        --datasets pyradiomics-lung,pyradiomics-brain,pyradiomics-breast,dev-split-3d
    python bench/base_eval.py --base base2d --prompts click,box --datasets dev-split \
        --scales 1 --scales 1,2,4:border --scales 1,2,4:confidence

`--prompts box` starts each object with a tight box (then clicks at the largest error) and adds the
box columns (Dice after the box, after the box + 5 clicks, DSC-AUC over them); `--scales` compares
first-click window choices (sides x the context, then the rule).

Prints, per dataset and per object type, Dice@1/@5/@10, NoC@85 and NoC@90 for each base (and
adaptation mode) side by side, and the ratio of NoC@90 of the first two. None of the built-in
datasets ever chose a default; `dev-split-3d` is the dev split (it validated the 3D base).
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
KEYS = ("dice1", "dice3", "dice5", "dice10", "noc85", "noc90")
BOX_KEYS = ("dice_box", "dice_box5", "dsc_auc5")


def object_type(name: str) -> str:
    return re.sub(r"(-\d+)?(#\d+)?$", "", name)


def evaluate(base: str, data: str, images: int, clicks: int, mode: str = "frozen",
             context_mm: float | None = None, prompt: str = "click", scales: str | None = None) -> list[dict]:
    sides, _, rule = (scales or "").partition(":")
    with tempfile.TemporaryDirectory(prefix="fedpoint-base-eval-") as tmp:
        spec = EvaluationSpec(data=data, mode=mode, base=base, clicks=clicks, images=images, full_slice=True,
                              context_mm=context_mm, prompt=prompt,
                              scales=tuple(float(m) for m in sides.split(",")) if sides else None,
                              scale_rule=rule or ("fixed" if sides else None))
        return run_evaluation(spec, Path(tmp))["images"]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", action="append", required=True)
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--clicks", type=int, default=20)
    parser.add_argument("--modes", default="frozen", help="adaptation modes, comma-separated (frozen, mid+post, ...)")
    parser.add_argument("--context-mm", default="",
                        help="3D: first-click cube sides in mm to compare, comma-separated (default: the focus crop's)")
    parser.add_argument("--prompts", default="click", help="first interactions to compare: click, box (comma-separated)")
    parser.add_argument("--scales", action="append", default=None,
                        help="first-click windows to compare: sides x the context, comma-separated, then ':rule' "
                             "(fixed, border, confidence); repeat the option to compare several")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    table = defaultdict(dict)
    modes = args.modes.split(",")
    cubes = [float(c) for c in args.context_mm.split(",") if c] or [None]
    prompts = args.prompts.split(",")
    runs = [(base, mode, cube, prompt, scales) for base in args.base for mode in modes for cube in cubes
            for prompt in prompts for scales in (args.scales or [None])]
    from fedpoint.shared.bases import base_config, locate_base

    boxed = {base: base_config(locate_base(base)).takes_box for base in args.base}
    for data in args.datasets.split(","):
        for base, mode, cube, prompt, scales in runs:
            if prompt == "box" and not boxed[base]:
                continue  # a click-only base takes no box
            records = evaluate(base, data, args.images, args.clicks, mode, cube, prompt, scales)
            groups = {"all": records}
            for r in records:
                groups.setdefault(object_type(r["object"]), []).append(r)
            label = (base + (f":{mode}" if len(modes) > 1 else "") + (f":{cube:g}mm" if cube else "")
                     + (f":{prompt}" if len(prompts) > 1 else "") + (f":{scales}" if scales else ""))
            for group, rows in groups.items():
                keys = KEYS + (BOX_KEYS if prompt == "box" else ())
                table[f"{data}/{group}"][label] = {k: float(np.mean([r[k] for r in rows])) for k in keys} | {
                    "n": len(rows), "predict_ms": float(np.mean([r["predict_ms"] for r in rows]))}
            if args.out:  # after every run: a long evaluation that stops keeps what it measured
                args.out.write_text(json.dumps(table, indent=2))
    header = f"{'dataset/object':34s} {'base':34s} {'n':>3s} " + " ".join(f"{k:>9s}" for k in KEYS + BOX_KEYS)
    print(header)
    for name, per_base in table.items():
        for base, m in per_base.items():
            print(f"{name:34s} {base[-34:]:34s} {m['n']:3d} "
                  + " ".join(f"{m[k]:9.3f}" if k in m else f"{'-':>9s}" for k in KEYS + BOX_KEYS))
        if len(per_base) >= 2:
            a, b = list(per_base.values())[:2]
            print(f"{'':34s} {'NoC90 ratio':34s}     {a['noc90'] / b['noc90']:.2f}")
    if args.out:
        args.out.write_text(json.dumps(table, indent=2))


if __name__ == "__main__":
    main()
