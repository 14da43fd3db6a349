"""From per-image and per-round records to the headline, the targets and `report.md`.

Headline numbers are computed per seed, then summarised as mean and sd over seeds:
- `noc90`, `noc85`, `dice1/3/5/10`, `nof`: mean over the shifted sites that take part from round 1
  of each site's mean over its images (every site weighs the same, however long its stream);
  all such sites when none is shifted (`scope` says which);
- `late_dice3`, `late_noc90`: the late joiners' first round of images (the ones annotated with the
  bank they receive on joining), mean over late sites;
- `bytes_per_round`: bytes sent up plus down, summed over sites, per round, mean over rounds.
Dice is a fraction in [0, 1]; "points" in the targets are hundredths of it.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Iterable, Sequence

import numpy as np

from fedpoint.shared.metrics import HEADERS, SITE_METRICS, is_fraction
from fedpoint.shared.protocol import EVAL_CLICKS
from fedpoint.simulations.arms import DEFAULT_ARM, ARMS

REFERENCE = "frozen"
FULL = "fed-full"


# ------------------------------------------------------------------------------------ helpers
def mean_sd(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample sd (0 for a single value); NaN for no values."""
    values = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    if not values:
        return math.nan, math.nan
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def _group(rows: Iterable[dict], *keys: str) -> dict[tuple, list[dict]]:
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for row in rows:
        groups[tuple(row[k] for k in keys)].append(row)
    return groups


def site_means(images: list[dict], metric: str) -> dict[str, float]:
    return {site: float(np.mean([r[metric] for r in recs])) for (site,), recs in _group(images, "site").items()}


def headline_scope(images: list[dict]) -> tuple[str, list[dict]]:
    """The images the headline averages: shifted sites present from the first round, else every such site."""
    regular = [r for r in images if not r["late"]]
    shifted = [r for r in regular if r["shifted"]]
    return ("shifted", shifted) if shifted else ("all", regular)


def late_first_images(images: list[dict], images_per_round: int) -> list[dict]:
    return [r for r in images if r["late"] and r["index"] < images_per_round]


def bytes_per_round(rounds: list[dict]) -> tuple[float, float, float]:
    """(total, up, down) bytes per round, summed over sites, mean over rounds."""
    if not rounds:
        return 0.0, 0.0, 0.0
    per_round = _group(rounds, "round")
    up = [sum(r["bytes_up"] for r in rows) for rows in per_round.values()]
    down = [sum(r["bytes_down"] for r in rows) for rows in per_round.values()]
    return float(np.mean(up) + np.mean(down)), float(np.mean(up)), float(np.mean(down))


def _site_average(images: list[dict], metric: str) -> float:
    means = site_means(images, metric)
    return float(np.mean(list(means.values()))) if means else math.nan


# ------------------------------------------------------------------------------------ headline
def seed_summary(images: list[dict], rounds: list[dict], images_per_round: int) -> dict[str, float]:
    """One strategy, one seed: the headline quantities before averaging over seeds."""
    _, scoped = headline_scope(images)
    late = late_first_images(images, images_per_round)
    total, up, down = bytes_per_round(rounds)
    out = {m: _site_average(scoped, m) for m in SITE_METRICS}
    out["late_dice3"] = _site_average(late, "dice3")
    out["late_noc90"] = _site_average(late, "noc90")
    out["bytes_per_round"], out["bytes_up_per_round"], out["bytes_down_per_round"] = total, up, down
    out["seconds_per_image"] = float(np.mean([r["seconds"] for r in images])) if images else math.nan
    out["predict_ms"] = float(np.mean([r["predict_ms"] for r in images])) if images else math.nan
    out["update_ms"] = float(np.mean([r["update_ms"] for r in images])) if images else math.nan
    return out


def compute_headline(images: list[dict], rounds: list[dict], images_per_round: int) -> dict[str, dict]:
    """`{strategy: {metric: mean, metric_sd: sd, ..., seeds, scope, sites, late_sites}}`, strategies
    in their canonical order."""
    by_strategy = _group(images, "strategy")
    rounds_by = _group(rounds, "strategy", "seed")
    headline = {}
    for name in [n for n in ARMS if (n,) in by_strategy]:
        recs = by_strategy[(name,)]
        seeds = sorted({r["seed"] for r in recs})
        per_seed = [seed_summary([r for r in recs if r["seed"] == s], rounds_by.get((name, s), []), images_per_round)
                    for s in seeds]
        entry: dict = {}
        for key in per_seed[0]:
            entry[key], entry[f"{key}_sd"] = mean_sd([p[key] for p in per_seed])
        scope, scoped = headline_scope(recs)
        entry.update(seeds=len(seeds), scope=scope, sites=sorted({r["site"] for r in scoped}),
                     late_sites=sorted({r["site"] for r in recs if r["late"]}))
        headline[name] = entry
    return headline


# ------------------------------------------------------------------------------------ targets
def evaluate_targets(headline: dict[str, dict], comps: list[dict] | None = None) -> list[dict]:
    """The three targets for fedpoint's default (`fed-banks`); `held` is None when a strategy it
    needs did not run. With paired `comps` (`statistics.comparisons`), each target is judged on its
    95% interval instead of its mean: held only when the whole interval clears the threshold
    (`verdict`: held / refuted / unresolved), and late joiners are compared with local-online."""
    if comps is not None:
        return _targets_on_intervals(headline, comps)
    ours, frozen, full = (headline.get(n) for n in (DEFAULT_ARM, REFERENCE, FULL))
    targets = []

    held, value = None, None
    if ours and frozen and frozen["noc90"] > 0:
        value = 1.0 - ours["noc90"] / frozen["noc90"]
        held = value >= 0.20
    targets.append({"name": "noc90-reduction", "held": held, "value": value, "threshold": 0.20,
                    "text": "on shifted sites, fed-banks lowers NoC@90 by at least 20% against frozen"})

    held, value = None, None
    if ours and frozen and ours["late_sites"] and not math.isnan(ours["late_dice3"]):
        value = ours["late_dice3"] - frozen["late_dice3"]
        held = value >= 0.05
    targets.append({"name": "late-joiner-dice3", "held": held, "value": value, "threshold": 0.05,
                    "text": "late joiners start at least 5 Dice@3 points above frozen"})

    held, value, gap = None, None, None
    if ours and full and ours["bytes_per_round"] > 0:
        value = full["bytes_per_round"] / ours["bytes_per_round"]
        gap = ours["dice5"] - full["dice5"]
        held = value >= 50 and gap >= -0.01
    targets.append({"name": "bytes-vs-full", "held": held, "value": value, "threshold": 50, "dice5_gap": gap,
                    "text": "fed-banks sends at most 1/50 of the bytes of fed-full, Dice@5 within 1 point of it"})
    return targets


def _targets_on_intervals(headline: dict[str, dict], comps: list[dict]) -> list[dict]:
    from fedpoint.simulations.statistics import find, verdict

    out = []
    c = find(comps, DEFAULT_ARM, REFERENCE, "noc90", "shifted")
    v = None if c is None else verdict(c["reduction_low"], c["reduction_high"], 0.20)
    out.append({"name": "noc90-reduction", "verdict": v, "held": None if v is None else v == "held",
                "value": None if c is None else c["reduction"], "ci": None if c is None else [c["reduction_low"], c["reduction_high"]],
                "threshold": 0.20, "n": None if c is None else c["n"],
                "text": "on shifted sites, fed-banks lowers NoC@90 by at least 20% against frozen"})
    c = find(comps, DEFAULT_ARM, "local-online", "dice3", "late")
    v = None if c is None else verdict(c["ci_low"], c["ci_high"], 0.05)
    out.append({"name": "late-joiner-dice3", "verdict": v, "held": None if v is None else v == "held",
                "value": None if c is None else c["mean_diff"], "ci": None if c is None else [c["ci_low"], c["ci_high"]],
                "threshold": 0.05, "n": None if c is None else c["n"],
                "text": "late joiners start at least 5 Dice@3 points above local-online"})
    ours, full = headline.get(DEFAULT_ARM), headline.get(FULL)
    c5 = find(comps, DEFAULT_ARM, FULL, "dice5", "shifted")
    c90 = find(comps, DEFAULT_ARM, FULL, "noc90", "shifted")
    v, ratio = None, None
    if ours and full and ours["bytes_per_round"] > 0 and c5 and c90:
        ratio = full["bytes_per_round"] / ours["bytes_per_round"]
        parts = [verdict(c5["ci_low"], c5["ci_high"], -0.01), verdict(c90["ci_low"], c90["ci_high"], 0.5, higher_is_better=False),
                 "held" if ratio >= 50 else "refuted"]
        v = "refuted" if "refuted" in parts else "held" if all(p == "held" for p in parts) else "unresolved"
    out.append({"name": "bytes-vs-full", "verdict": v, "held": None if v is None else v == "held", "value": ratio,
                "threshold": 50, "dice5_gap": None if c5 is None else c5["mean_diff"],
                "ci": None if c5 is None else [c5["ci_low"], c5["ci_high"]],
                "noc90_gap_ci": None if c90 is None else [c90["ci_low"], c90["ci_high"]],
                "text": "fed-banks sends at most 1/50 of fed-full's bytes, within 1 Dice@5 point and 0.5 NoC@90 of it"})
    return out


def comparisons_markdown(comps: list[dict]) -> str:
    if not comps:
        return "No paired comparison: a strategy it needs did not run."
    rows = []
    for c in comps:
        scale = 1 if c["metric"].startswith("noc") else 100
        unit = "" if scale == 1 else " pts"
        rows.append([f"{c['a']} − {c['b']}", c["scope"], c["metric"], f"{scale * c['mean_diff']:+.2f}{unit}",
                     f"[{scale * c['ci_low']:+.2f}, {scale * c['ci_high']:+.2f}]", str(c["n"])])
    return markdown_table(["comparison", "scope", "metric", "mean difference", "95% CI", "n"], rows)


# ------------------------------------------------------------------------------------ tables
HEADLINE_COLUMNS = (*((k, HEADERS[k], 2) for k in ("noc85", "noc90")),
                    *((k, HEADERS[k], 3) for k in ("dice3", "dice5", "dice_auc")),
                    ("late_dice3", f"late {HEADERS['dice3']}", 3), ("bytes_per_round", "bytes/round", 0))


def format_value(mean: float, sd: float, digits: int, with_sd: bool) -> str:
    if mean is None or math.isnan(mean):
        return "–"
    if digits == 0:
        return human_bytes(mean)
    text = f"{mean:.{digits}f}"
    return f"{text} ± {sd:.{digits}f}" if with_sd and not math.isnan(sd) else text


def human_bytes(n: float) -> str:
    if n <= 0:
        return "0"
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def headline_rows(headline: dict[str, dict]) -> list[list[str]]:
    """Rows of the headline table: strategy, then each column as `mean ± sd`."""
    rows = []
    for name, entry in headline.items():
        with_sd = entry["seeds"] > 1
        rows.append([name] + [format_value(entry[k], entry[f"{k}_sd"], d, with_sd) for k, _, d in HEADLINE_COLUMNS])
    return rows


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]], align_first_left: bool = True) -> str:
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join([":---" if align_first_left else "---:"] + ["---:"] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def headline_markdown(headline: dict[str, dict]) -> str:
    return markdown_table(["strategy"] + [label for _, label, _ in HEADLINE_COLUMNS], headline_rows(headline))


def per_site_markdown(images: list[dict], strategies: Sequence[str]) -> str:
    """One table per site: each strategy's Dice@1/3/5/10, NoC@85/90 and NoF over its images and seeds."""
    blocks = []
    for (site,), recs in sorted(_group(images, "site").items()):
        first = recs[0]
        title = f"### {site} ({first['modality']}, shift {first['shift']}" + (
            f", joins in round {first['join_round']})" if first["late"] else ")")
        rows = []
        for name in strategies:
            mine = [r for r in recs if r["strategy"] == name]
            if mine:
                rows.append([name] + [f"{np.mean([r[m] for r in mine]):.3f}" if is_fraction(m)
                                      else f"{np.mean([r[m] for r in mine]):.2f}" for m in SITE_METRICS]
                            + [str(len(mine))])
        header = ["strategy", *(HEADERS[m] for m in SITE_METRICS), "images"]
        blocks.append(title + "\n\n" + markdown_table(header, rows))
    return "\n\n".join(blocks)


def timings_markdown(images: list[dict], rounds: list[dict], strategies: Sequence[str]) -> str:
    rows = []
    for name in strategies:
        mine = [r for r in images if r["strategy"] == name]
        if not mine:
            continue
        round_seconds = [sum(r["seconds"] for r in rows_) for rows_ in _group(
            [r for r in rounds if r["strategy"] == name], "seed", "round").values()]
        rows.append([name, f"{np.mean([r['predict_ms'] for r in mine]):.1f}",
                     f"{np.mean([r['update_ms'] for r in mine]):.1f}", f"{np.mean([r['post_ms'] for r in mine]):.1f}",
                     f"{np.mean([r['seconds'] for r in mine]):.2f}",
                     f"{np.mean(round_seconds):.1f}" if round_seconds else "–"])
    header = ["strategy", "predict ms/click", "update ms/click", "post ms/image", "s/image", "site s/round"]
    return markdown_table(header, rows)


def noc90_by_site_markdown(images: list[dict], strategy: str = DEFAULT_ARM, reference: str = REFERENCE) -> str:
    """Where the NoC@90 target holds or fails: each site's NoC@90 under the reference and the
    strategy, and the reduction."""
    rows = []
    for (site,), recs in sorted(_group(images, "site").items()):
        ref = [r["noc90"] for r in recs if r["strategy"] == reference]
        ours = [r["noc90"] for r in recs if r["strategy"] == strategy]
        if not ref or not ours:
            continue
        a, b = float(np.mean(ref)), float(np.mean(ours))
        first = recs[0]
        role = "late joiner" if first["late"] else ("shifted" if first["shifted"] else "unshifted")
        stuck = sum(r["noc90"] >= 20 for r in recs if r["strategy"] == strategy)
        rows.append([site, first["modality"], role, f"{a:.2f}", f"{b:.2f}",
                     f"{100 * (1 - b / a):+.1f}%" if a else "–", f"{stuck}/{len(ours)}"])
    if not rows:
        return ""
    header = ["site", "modality", "role", f"NoC@90 {reference}", f"NoC@90 {strategy}", "reduction",
              f"never 0.90 ({strategy})"]
    return markdown_table(header, rows)


def _lr(lr: float | None, kind: str):
    """The rate an experiment used: `lr` given, else the kind's default (`AdapterKind.lr_for`)."""
    from fedpoint.shared.adapter_kinds import adapter_kind

    try:
        return adapter_kind(kind).lr_for(lr)
    except ValueError:
        return lr or "?"


def _ci(t: dict, scale: float, unit: str) -> str:
    if not t.get("ci"):
        return ""
    low, high = t["ci"]
    return f", 95% CI [{scale * low:+.1f}, {scale * high:+.1f}]{unit}, n = {t['n']}"


def targets_markdown(targets: list[dict]) -> str:
    lines = []
    for t in targets:
        mark = {True: "**held**", False: "**missed**", None: "not measured"}[t["held"]]
        if t.get("verdict") == "refuted":
            mark = "**refuted**"
        elif t.get("verdict") == "unresolved":
            mark = "**not shown** (the interval straddles the threshold)"
        if t["value"] is None:
            detail = "a strategy it needs did not run"
        elif t["name"] == "noc90-reduction":
            detail = f"NoC@90 reduction {100 * t['value']:.1f}% (needs ≥ 20%)" + _ci(t, 100, "%")
        elif t["name"] == "late-joiner-dice3":
            ref = "local-online" if t.get("verdict") is not None else "frozen"
            detail = f"late Dice@3 {100 * t['value']:+.1f} points vs {ref} (needs ≥ +5)" + _ci(t, 100, " pts")
        else:
            detail = (f"fed-full sends {t['value']:.0f}× the bytes of fed-banks (needs ≥ 50×); "
                      f"Dice@5 gap {100 * t['dice5_gap']:+.1f} points (needs ≥ −1)")
        lines.append(f"- {mark}: {t['text']}. {detail}.")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------ report.md
PLOT_CAPTIONS = {
    "learning_curves.png": "The headline: NoC@90, NoC@85 and Dice@1 against images annotated, per arm (mean over "
                           "seeds, sites and the images of each bin; shaded: 95% bootstrap interval over seeds, then images).",
    "dice_vs_images.png": "Dice@3 and Dice@5 against images annotated, per site (mean over seeds).",
    "noc90.png": "NoC@90 per strategy on the headline sites (bars: mean over seeds; dots: sites).",
    "clicks_saved.png": "Cumulative clicks (NoC@90) saved against the frozen model, over all sites' images in round order.",
    "bytes_per_round.png": "Bytes sent up + down per round, all sites together (log scale; local strategies send nothing).",
}


def _samples_phrase(exp: dict, data: dict) -> str:
    """What the sites annotate: whole volumes, whole slices at their native sizes, or object crops."""
    if exp.get("spatial_dims") == 3:
        if exp.get("route") == "propagate":
            return "whole volumes with the 2D base, each mask propagated through the slices"
        return "whole volumes with a 3D base"
    if exp.get("whole_slices"):
        shapes = sorted({tuple(s) for site in data["sites"] for s in site.get("image_shapes", [])}, reverse=True)
        sizes = ", ".join("×".join(str(n) for n in shape) for shape in shapes)
        return f"whole slices at native resolution ({sizes} px) through the focus crop"
    return f"{exp['size']}×{exp['size']} px object crops"


def write_report(results: dict, path, plots: Sequence[str] = ()) -> str:
    """`report.md`: the headline table first, then targets, plots, per-site tables, data and timings."""
    exp, headline = results["experiment"], results["headline"]
    strategies = list(headline)
    scope = next(iter(headline.values()))["scope"] if headline else "shifted"
    parts = [
        f"# fedpoint experiment `{exp['name']}`",
        "",
        f"{len(exp['sites'])} sites ({', '.join(results['data']['modalities'])}), {exp['rounds']} rounds of "
        f"{exp['images_per_round']} image{'s' if exp['images_per_round'] != 1 else ''} per site, {exp['clicks']} simulated clicks per image, "
        + _samples_phrase(exp, results["data"])
        + f", adapter `{exp['adapter']}` (lr {_lr(exp.get('lr'), exp['adapter'])}"
        f"; every-weight arms lr {_lr(exp.get('full_lr'), 'full')}), seeds {exp['seeds']}. "
        f"Means over {'shifted sites' if scope == 'shifted' else 'all sites (none is shifted)'} present from the first round"
        + (" and seeds, ± sd over seeds." if len(exp["seeds"]) > 1 else " (one seed: no sd)."),
        "",
        headline_markdown(headline),
        "",
        "NoC@85/NoC@90: clicks until Dice ≥ 0.85/0.90, counted as 20 when not reached within the clicks simulated "
        "(lower is better). Dice-AUC: the mean Dice over clicks 1..n, the area under the Dice-vs-clicks "
        "curve. Late Dice@3: the late joiners' first round of images. Bytes/round: adapter "
        "payloads up and down, all sites, per round.",
        "",
        *curves_markdown(results.get("curves")),
        *companions_markdown(results.get("companions", [])),
        "## Targets",
        "",
        targets_markdown(results["targets"]),
        "",
        "## Paired comparisons",
        "",
        "Same image, same simulated user: differences per (seed, site, image), percentile-bootstrap 95% "
        "intervals over those units. Dice in points; NoC in clicks (negative = fewer clicks). A claim "
        "stands only where its interval clears the threshold; where an interval contains 0, this "
        "experiment does not show a difference.",
        "",
        comparisons_markdown(results.get("comparisons", [])),
        "",
        noc90_by_site_markdown(results["images"]),
        "",
    ]
    if plots:
        parts += ["## Plots", ""]
        for name in plots:
            parts += [f"![{name}]({name})", "", PLOT_CAPTIONS.get(name, ""), ""]
    scored = federated_evaluation_markdown(results.get("federation", []))
    if scored:
        parts += ["## Federated evaluation round", "",
                  "After each aggregation the sites scored the new version of their bank on their held-out "
                  "cached cases (validation and judgement splits; only the scores left the sites): the "
                  "cases-weighted mean Dice-AUC of the simulated user over "
                  f"{EVAL_CLICKS} clicks, no updates.", "", scored, ""]
    parts += ["## Per site", "", per_site_markdown(results["images"], strategies), "",
              "## Data", "", data_markdown(results["data"]), "", base_markdown(results["environment"].get("base", {})), "",
              "## Strategies", "", strategies_markdown(strategies), "",
              "## Timings", "", timings_markdown(results["images"], results["rounds"], strategies), "",
              "Site s/round: the sites' annotation time in a round, all sites together. "
              f"Measured on {results['environment'].get('machine', 'this machine')}; whole run "
              f"{results['seconds']:.0f} s. Per-strategy wall time"
              + (" (the local arms ran beside the federated ones, so these overlap)" if results["experiment"].get("lanes", 1) > 1
                 else "") + ": "
              + ", ".join(f"{k} {v:.0f} s" for k, v in results["strategy_seconds"].items()) + ".", ""]
    text = "\n".join(parts)
    from pathlib import Path

    Path(path).write_text(text)
    return text


def curves_markdown(curves: dict | None) -> list[str]:
    """The learning-curve section: each arm against frozen over the second half of the streams."""
    rows = (curves or {}).get("second_half") or []
    if not rows:
        return []
    table = []
    for r in rows:
        if r["metric"].startswith("noc"):
            change = f"{100 * r['reduction']:+.0f}% fewer [{100 * r['reduction_low']:+.0f}, {100 * r['reduction_high']:+.0f}]"
            values = f"{r['mean']:.2f} vs {r['frozen']:.2f}"
        else:
            change = f"{100 * r['gain']:+.1f} pts [{100 * r['gain_low']:+.1f}, {100 * r['gain_high']:+.1f}]"
            values = f"{r['mean']:.3f} vs {r['frozen']:.3f}"
        table.append([r["strategy"], HEADERS.get(r["metric"], r["metric"]), values, change, str(r["n"])])
    return ["## Learning curves", "",
            "Second half of every site's stream (present from round 1), each arm against frozen on the same "
            "images: NoC as the relative reduction (positive: fewer clicks), Dice@1 as the gain in points; "
            "95% bootstrap intervals over seeds, then images. The curves are in the first plot below.", "",
            markdown_table(["strategy", "metric", "arm vs frozen", "change [95% CI]", "images"], table), ""]


def companions_markdown(companions: list[dict]) -> list[str]:
    """The companion scenarios (where the field sees large gains): their curves and second halves."""
    if not companions:
        return []
    parts = ["## Companion scenarios", ""]
    for c in companions:
        folder = c["folder"]
        parts += [f"### `{c['name']}`: {c['description']}", "",
                  f"Full report: [{folder}/report.md]({folder}/report.md) ({c['seconds']:.0f} s).", "",
                  f"![learning curves of {c['name']}]({folder}/learning_curves.png)", ""]
        parts += curves_markdown({"second_half": c["second_half"]})[4:]  # the table, without the section heading
    return parts


def federated_evaluation_markdown(federation: list[dict]) -> str:
    """One row per (federated arm, seed, round, bank version) the sites scored."""
    rows = []
    for run in federation:
        outcome = run.get("outcome") or {}
        for number, banks in zip(outcome.get("round_numbers", []), outcome.get("evaluation", [])):
            for version, entry in sorted(banks.items()):
                rows.append([run.get("strategy", ""), str(run.get("seed", "")), str(number), version,
                             str(entry.get("sites")), str(entry.get("cases")), f"{entry.get('dice_auc', float('nan')):.3f}"])
    if not rows:
        return ""
    return markdown_table(["strategy", "seed", "round", "bank version", "sites", "held-out cases", "Dice-AUC"], rows)


def strategies_markdown(strategies: Sequence[str]) -> str:
    return "\n".join(f"- `{n}` ({ARMS[n].kind}, mode `{ARMS[n].mode}`): {ARMS[n].summary}."
                     for n in strategies)


def base_markdown(base: dict) -> str:
    """Which base model every strategy starts from, and what it was trained on."""
    if not base or "error" in base:
        return f"Base model: {base.get('spec') or 'packaged base2d'}."
    note = base.get("provenance", {}).get("note", "")
    val = base.get("validation", {})
    text = f"Base model: `{base.get('spec')}` (fingerprint `{base.get('fingerprint')}`)."
    if note:
        text += f" Pre-training: {note}"
    if val:
        text += (f" Its own validation (in its training domain): Dice@5 {val.get('dice5', float('nan')):.3f}, "
                 f"NoC@90 {val.get('noc90', float('nan')):.1f}.")
    return text


def data_markdown(data: dict) -> str:
    """What the images are: datasets with subject counts and licences, which labels are derived, sites."""
    lines = ["Real images from the built-in datasets (nothing synthetic). Subject counts are small; several "
             "sites may draw different slices, objects or acquisition shifts of the same subjects.", ""]
    rows = [[d["name"], d["modality"], str(d["subjects"]), str(d["cases"]), d["labels"],
             ", ".join(d["derived_objects"]) or "none", d["notes"]] for d in data["datasets"]]
    lines.append(markdown_table(["dataset", "modality", "subjects", "cases", "labels", "derived labels", "notes"], rows))
    lines += ["", "Sources and licences:", ""]
    lines += [f"- {d['name']}: {d['source']}. Licence: {d['licence'] or 'not stated'}." for d in data["datasets"]]
    lines += ["", markdown_table(
        ["site", "dataset", "modality", "shift", "joins", "images", "objects"],
        [[s["name"], s["dataset"], s["modality"], s["shift"], str(s["join_round"]), str(s["images"]),
          ", ".join(s["objects"])] for s in data["sites"]])]
    return "\n".join(lines)
