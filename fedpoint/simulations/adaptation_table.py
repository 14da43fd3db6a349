"""Is online adaptation ever worse than the frozen model? Every built-in dataset x demo shift x seed.

`python -m fedpoint.simulations.adaptation_table run --out table.jsonl` runs `frozen`, `mid+post`
and `mid+post+episodes` with the default settings (the adapter kind's learning rate, the guard on)
on each cell through the one evaluation entry point (`run_evaluation`), one JSON line per run, so a
stopped run resumes where it left off. `... show table.jsonl` prints the dataset x shift x mode
table (means over seeds of the per-image means, paired against frozen on the same images) and the
adaptation issue's bar: never worse than frozen by more than 1 Dice@3 point or 0.3 NoC@90.

This measures; it chooses nothing. The defaults were chosen on the dev split (`tuning`).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

from fedpoint.simulations.evaluation import EvaluationSpec, run_evaluation

MODES = ("frozen", "mid+post", "mid+post+episodes")
DICE_BAR, NOC_BAR = 0.01, 0.3  # the "never worse than frozen by more than"


def demo_shifts() -> tuple[str, ...]:
    """The acquisition shifts of `make demo`'s sites, in config order."""
    from fedpoint.simulations.experiment import load_experiment

    seen: list[str] = []
    for site in load_experiment("demo").sites:
        if site.shift not in seen:
            seen.append(site.shift)
    return tuple(seen)


def _done(out: Path) -> set[tuple]:
    if not out.exists():
        return set()
    rows = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
    return {(r["data"], r["shift"], r["seed"], r["mode"]) for r in rows}


def run_table(datasets, shifts, seeds, images: int, clicks: int, out: Path, modes=MODES) -> None:
    done = _done(out)
    cells = [(d, s, seed, m) for d in datasets for s in shifts for seed in seeds for m in modes]
    todo = [c for c in cells if c not in done]
    print(f"{len(cells)} runs, {len(cells) - len(todo)} already in {out}", flush=True)
    for n, (data, shift, seed, mode) in enumerate(todo, 1):
        spec = EvaluationSpec(data=data, mode=mode, shift=shift, seed=seed, images=images, clicks=clicks)
        with tempfile.TemporaryDirectory(prefix="fedpoint-table-") as tmp:
            result = run_evaluation(spec, Path(tmp))
        row = {"data": data, "shift": shift, "seed": seed, "mode": mode, "images": images, "clicks": clicks,
               "seconds": result["seconds"], "guard_rejected": result["summary"]["guard_rejected"],
               "dice3": [r["dice3"] for r in result["images"]], "noc90": [r["noc90"] for r in result["images"]],
               "episodes": len(result["episodes"]),
               "episodes_accepted": sum(bool(e.get("accepted")) for e in result["episodes"])}
        with out.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(f"[{n}/{len(todo)}] {data:19s} {shift:10s} seed {seed} {mode:18s} Dice@3 {np.mean(row['dice3']):.3f} "
              f"NoC90 {np.mean(row['noc90']):.2f} rejected {row['guard_rejected']} {row['seconds']:.0f}s", flush=True)


def table(rows: list[dict]) -> list[dict]:
    """Per dataset x shift x adaptive mode: mean over seeds of (mode - frozen) per-image means."""
    by = {(r["data"], r["shift"], r["seed"], r["mode"]): r for r in rows}
    out = []
    for data, shift in dict.fromkeys((r["data"], r["shift"]) for r in rows):
        for mode in MODES[1:]:
            d3, n90, d3_late, n90_late, rej, seeds = [], [], [], [], 0, []
            for (dd, ss, seed, mm), r in by.items():
                frozen = by.get((dd, ss, seed, "frozen"))
                if (dd, ss, mm) != (data, shift, mode) or frozen is None:
                    continue
                d3.append(np.mean(r["dice3"]) - np.mean(frozen["dice3"]))
                n90.append(np.mean(r["noc90"]) - np.mean(frozen["noc90"]))
                half = len(r["dice3"]) // 2  # the second half of the stream: where harm would grow
                d3_late.append(np.mean(r["dice3"][half:]) - np.mean(frozen["dice3"][half:]))
                n90_late.append(np.mean(r["noc90"][half:]) - np.mean(frozen["noc90"][half:]))
                rej += r["guard_rejected"]
                seeds.append(seed)
            if seeds:
                frozen = [by[(data, shift, s, "frozen")] for s in seeds]
                out.append({"data": data, "shift": shift, "mode": mode, "seeds": len(seeds),
                            "frozen_dice3": float(np.mean([np.mean(f["dice3"]) for f in frozen])),
                            "frozen_noc90": float(np.mean([np.mean(f["noc90"]) for f in frozen])),
                            "d_dice3": float(np.mean(d3)), "d_noc90": float(np.mean(n90)), "rejected": rej,
                            "d_dice3_second": float(np.mean(d3_late)), "d_noc90_second": float(np.mean(n90_late)),
                            "within_bar": bool(np.mean(d3) >= -DICE_BAR and np.mean(n90) <= NOC_BAR),
                            "within_bar_second": bool(np.mean(d3_late) >= -DICE_BAR and np.mean(n90_late) <= NOC_BAR)})
    return out


def pooled(rows: list[dict], mode: str, cells: set | None = None) -> dict:
    """Image-paired mode - frozen over every (cell, seed, image) unit, with percentile-bootstrap 95%
    intervals: mean Dice@3 and NoC@90 changes and the relative NoC@90 reduction."""
    from fedpoint.simulations.statistics import bootstrap_ci

    by = {(r["data"], r["shift"], r["seed"], r["mode"]): r for r in rows}
    pairs = {"dice3": ([], []), "noc90": ([], [])}
    for (data, shift, seed, m), r in by.items():
        frozen = by.get((data, shift, seed, "frozen"))
        if m != mode or frozen is None or (cells is not None and (data, shift) not in cells):
            continue
        for key, (x, y) in pairs.items():
            x.extend(r[key])
            y.extend(frozen[key])
    (d3x, d3y), (nx, ny) = ((np.array(x, float), np.array(y, float)) for x, y in pairs.values())
    if not len(d3x):  # the mode was not run
        return {"n": 0}
    return {"n": len(d3x), "dice3": bootstrap_ci(d3x, d3y), "noc90": bootstrap_ci(nx, ny),
            "noc90_reduction": bootstrap_ci(nx, ny, relative=True)}


def demo_cells() -> set:
    """(dataset, shift) of `make demo`'s sites."""
    from fedpoint.simulations.experiment import load_experiment

    return {(site.dataset, site.shift) for site in load_experiment("demo").sites}


def show(path: Path) -> list[dict]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    cells = table(rows)
    print("| dataset | shift | mode | seeds | frozen Dice@3 | dDice@3 (pts) | frozen NoC@90 | dNoC@90 | rejected | within bar "
          "| 2nd half dDice@3, dNoC@90 | within bar |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for c in cells:
        print(f"| {c['data']} | {c['shift']} | {c['mode']} | {c['seeds']} | {c['frozen_dice3']:.3f} | "
              f"{100 * c['d_dice3']:+.1f} | {c['frozen_noc90']:.2f} | {c['d_noc90']:+.2f} | {c['rejected']} | "
              f"{'yes' if c['within_bar'] else '**no**'} | {100 * c['d_dice3_second']:+.1f}, {c['d_noc90_second']:+.2f} | "
              f"{'yes' if c['within_bar_second'] else '**no**'} |")
    for mode in MODES[1:]:
        mine = [c for c in cells if c["mode"] == mode]
        if mine:
            print(f"{mode}: {sum(c['within_bar'] for c in mine)}/{len(mine)} cells within the bar "
                  f"({sum(c['within_bar_second'] for c in mine)} over the second half); "
                  f"mean dDice@3 {100 * np.mean([c['d_dice3'] for c in mine]):+.2f} pts, "
                  f"mean dNoC@90 {np.mean([c['d_noc90'] for c in mine]):+.3f}")
    for mode in MODES[1:]:
        for name, scope in (("every cell", None), ("the demo's sites", demo_cells())):
            p = pooled(rows, mode, scope)
            if p["n"]:
                d3, n90, red = p["dice3"], p["noc90"], p["noc90_reduction"]
                print(f"{mode}, {name} ({p['n']} image pairs): dDice@3 {100 * d3[0]:+.2f} pts "
                      f"[{100 * d3[1]:+.2f}, {100 * d3[2]:+.2f}], dNoC@90 {n90[0]:+.3f} [{n90[1]:+.3f}, {n90[2]:+.3f}], "
                      f"NoC@90 reduction {100 * red[0]:+.1f}% [{100 * red[1]:+.1f}, {100 * red[2]:+.1f}]")
    return cells


def main(argv=None) -> None:
    from fedpoint.data.builtin import BUILTIN_DATASETS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    run = sub.add_parser("run")
    run.add_argument("--out", type=Path, required=True)
    run.add_argument("--datasets", default=",".join(BUILTIN_DATASETS))
    run.add_argument("--shifts", default=None, help="comma-separated (default: the demo's shifts)")
    run.add_argument("--seeds", default="0,1,2")
    run.add_argument("--images", type=int, default=8)
    run.add_argument("--clicks", type=int, default=10)
    run.add_argument("--modes", default=",".join(MODES), help="comma-separated, frozen included")
    view = sub.add_parser("show")
    view.add_argument("path", type=Path)
    args = parser.parse_args(argv)
    if args.what == "run":
        shifts = args.shifts.split(",") if args.shifts else demo_shifts()
        run_table(args.datasets.split(","), shifts, [int(s) for s in args.seeds.split(",")], args.images,
                  args.clicks, args.out, tuple(args.modes.split(",")))
    else:
        show(args.path)


if __name__ == "__main__":
    main()
