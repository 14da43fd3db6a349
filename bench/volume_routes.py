"""The two routes for volumes side by side: the 2D base propagated through the slices, and the 3D
base, through the same 3D simulated user on the same volumes.

    python bench/volume_routes.py --datasets dev-split-3d --images 8 --clicks 5 --stops 0:none,0:1.2
    python bench/volume_routes.py --datasets pyradiomics-lung,pyradiomics-brain,pyradiomics-breast --clicks 5

Prints, per dataset and object type, 3D Dice@1/@3/@5, NoC@85/90 (interactions; the budget when
never reached), Dice-AUC and the p50/p95 time per interaction (propagation included) for each
route; `--stops band:max_growth,...` compares the propagation route's stop rules
(`PropagationConfig`: the intensity gate and the growth limit, "none" = off), and `slice` adds
slice-by-slice annotation with the same 2D base (no propagation: one slice per interaction). Choose on `dev-split-3d` only; the pyradiomics volumes are evaluation data.
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from fedpoint.client.engine import SiteEngine
from fedpoint.client.propagation import PropagationConfig
from fedpoint.client.stream import annotate_volume
from fedpoint.shared.config import AdaptationConfig
from fedpoint.data.samples import LazyVolumes
from fedpoint.simulations.evaluation import EvaluationSpec, load_stream

KEYS = ("dice1", "dice3", "dice5", "noc85", "noc90", "dice_auc")


def object_type(name: str) -> str:
    return re.sub(r"(-\d+)?(#\d+)?$", "", name)


def run(route: str, data: str, images: int | None, clicks: int, stop: PropagationConfig, base: str | None,
        skip: tuple[str, ...] = ()) -> list[dict]:
    spec = EvaluationSpec(data=data, route=route, base=base, mode="frozen", clicks=clicks, images=images)
    samples, _ = load_stream(spec)
    engine = SiteEngine.create(base or ("base3d" if route == "3d" else None), "norm", AdaptationConfig(mode="frozen"))
    records = []
    with tempfile.TemporaryDirectory(prefix="fedpoint-routes-"):
        for i in range(len(samples)):
            if isinstance(samples, LazyVolumes) and object_type(samples.refs[i][1].name) in skip:
                continue
            sample = samples[i]
            rec = annotate_volume(engine, sample.image, sample.mask, route, clicks, f"{sample.case_id}-{sample.object_name}",
                                  sample.spacing, propagation=stop)
            rec["object"] = sample.object_name
            records.append(rec)
            print(json.dumps({k: rec[k] for k in ("case_id", "route", "dices", "interaction_ms", "slices_predicted")}),
                  flush=True)
    return records


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="dev-split-3d")
    parser.add_argument("--routes", default="propagate,3d")
    parser.add_argument("--images", type=int, default=None)
    parser.add_argument("--clicks", type=int, default=5)
    parser.add_argument("--stops", default="0:none", help="propagation route: stop rules to compare, comma-separated "
                        "band:max_growth[:cut] ('none': off; 'cut': a neighbour cut by its focus window may grow past the limit), "
                        "e.g. 0:none,0:1.2,0:1.2:cut; 'slice': slice by slice (no propagation)")
    parser.add_argument("--skip-objects", default="", help="object types to leave out, comma-separated (e.g. body)")
    parser.add_argument("--base2d", default=None)
    parser.add_argument("--base3d", default=None)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    def setting(text: str) -> PropagationConfig:
        if text == "slice":  # each interaction annotates its own slice: what a volume costs without propagation
            return PropagationConfig(max_slices=0)
        band, growth, *cut = text.split(":")  # a third field "cut": a window-cut neighbour may grow
        return PropagationConfig(band=None if band == "none" else float(band),
                                 max_growth=None if growth == "none" else float(growth), cut_grows=cut == ["cut"])

    stops = [(t, setting(t)) for t in args.stops.split(",")]
    arms = [(r, t, c) for r in args.routes.split(",") for t, c in (stops if r == "propagate" else [("", None)])]
    table, raw = defaultdict(dict), {}
    for data in args.datasets.split(","):
        for route, text, stop in arms:
            arm = route if route == "3d" else f"propagate {text}"
            t0 = time.perf_counter()
            records = run(route, data, args.images, args.clicks, stop, args.base3d if route == "3d" else args.base2d,
                          tuple(o for o in args.skip_objects.split(",") if o))
            raw[f"{data}/{arm}"] = records
            groups = {"all": records}
            for r in records:
                groups.setdefault(object_type(r["object"]), []).append(r)
            for group, recs in groups.items():
                ms = np.concatenate([r["interaction_ms"] for r in recs])
                table[(data, group)][arm] = {**{k: float(np.mean([r[k] for r in recs])) for k in KEYS}, "n": len(recs),
                                             "p50_s": float(np.percentile(ms, 50)) / 1e3,
                                             "p95_s": float(np.percentile(ms, 95)) / 1e3,
                                             "wall_s": time.perf_counter() - t0}
    print("| dataset / object | route | n | Dice@1 | Dice@3 | Dice@5 | NoC@85 | NoC@90 | Dice-AUC | p50 / p95 s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for (data, group), arms_ in table.items():
        for arm, m in arms_.items():
            print(f"| {data} / {group} | {arm} | {m['n']} | {m['dice1']:.3f} | {m['dice3']:.3f} | {m['dice5']:.3f} | "
                  f"{m['noc85']:.1f} | {m['noc90']:.1f} | {m['dice_auc']:.3f} | {m['p50_s']:.2f} / {m['p95_s']:.2f} |")
    if args.out:
        args.out.write_text(json.dumps({"table": {f"{d}/{g}": v for (d, g), v in table.items()}, "records": raw}, indent=1))


if __name__ == "__main__":
    main()
