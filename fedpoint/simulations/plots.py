"""The experiment's plots, as PNG files (matplotlib, Agg backend: no display needed).

Every plot averages over seeds, so a curve is what a reader should expect at a site, not one draw.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Sequence

import numpy as np

from fedpoint.simulations.arms import ARMS

COLOURS = {
    "frozen": "#7f7f7f",
    "local-online": "#1f77b4",
    "local-episodes": "#17becf",
    "local-online+episodes": "#9467bd",
    "fed-general": "#ff7f0e",
    "fed-banks": "#d62728",
    "fed-full": "#2ca02c",
    "local-judged": "#8c564b",
    "local-full": "#e377c2",
}
STYLES = {"local": "--", "federated": "-"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _style(name: str) -> dict:
    return {"color": COLOURS.get(name), "linestyle": STYLES[ARMS[name].kind] if name in ARMS else "-",
            "label": name, "linewidth": 2.2 if name == "fed-banks" else 1.4}


def _order(images: list[dict]) -> list[str]:
    present = {r["strategy"] for r in images}
    return [n for n in ARMS if n in present]


def _mean_over_seeds(records: list[dict], metric: str, key: str = "index") -> tuple[np.ndarray, np.ndarray]:
    by_key: dict[int, list[float]] = defaultdict(list)
    for r in records:
        by_key[r[key]].append(r[metric])
    xs = np.array(sorted(by_key))
    return xs, np.array([np.mean(by_key[x]) for x in xs])


def dice_vs_images(images: list[dict], path: Path, ks: Sequence[int] = (3, 5)) -> Path:
    """Rows: Dice@k; columns: sites; one line per strategy, x = images the site has annotated."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    sites = sorted({r["site"] for r in images}, key=lambda s: (any(r["late"] for r in images if r["site"] == s), s))
    fig, axes = plt.subplots(len(ks), len(sites), figsize=(3.2 * len(sites), 2.8 * len(ks)), squeeze=False, sharey=True)
    for col, site in enumerate(sites):
        mine = [r for r in images if r["site"] == site]
        for row, k in enumerate(ks):
            ax = axes[row][col]
            for name in _order(mine):
                xs, ys = _mean_over_seeds([r for r in mine if r["strategy"] == name], f"dice{k}")
                ax.plot(xs + 1, ys, marker="o", markersize=3, **_style(name))
            first = mine[0]
            if row == 0:
                late = f", joins r{first['join_round']}" if first["late"] else ""
                ax.set_title(f"{site}\n{first['modality']}, {first['shift']}{late}", fontsize=9)
            if col == 0:
                ax.set_ylabel(f"Dice@{k}")
            if row == len(ks) - 1:
                ax.set_xlabel("images annotated")
            ax.set_ylim(0, 1)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(7, len(labels)), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    return _save(fig, path)


def noc90_bars(headline: dict[str, dict], images: list[dict], path: Path) -> Path:
    """NoC@90 per strategy on the headline sites: bars with sd over seeds, dots for each site."""
    plt = _pyplot()
    names = list(headline)
    fig, ax = plt.subplots(figsize=(1.1 * len(names) + 2, 3.6))
    means = [headline[n]["noc90"] for n in names]
    sds = [headline[n]["noc90_sd"] if headline[n]["seeds"] > 1 else 0 for n in names]
    ax.bar(range(len(names)), means, yerr=sds, color=[COLOURS.get(n, "#999") for n in names], alpha=0.8, capsize=4)
    for i, name in enumerate(names):
        scoped = [r for r in images if r["strategy"] == name and r["site"] in headline[name]["sites"]]
        per_site = defaultdict(list)
        for r in scoped:
            per_site[r["site"]].append(r["noc90"])
        ys = [np.mean(v) for v in per_site.values()]
        ax.scatter(np.full(len(ys), i) + np.linspace(-0.2, 0.2, max(len(ys), 1))[: len(ys)], ys, s=12, color="k", zorder=3)
        ax.text(i, 0.5, f"{means[i]:.1f}", ha="center", va="bottom", fontsize=9, color="white", fontweight="bold")
    ax.set_xticks(range(len(names)), names, rotation=25, ha="right", fontsize=8)
    ax.set_ylabel("NoC@90 (clicks, lower is better)")
    scope = next(iter(headline.values()))["scope"] if headline else ""
    ax.set_title(f"NoC@90 on {scope} sites")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


def clicks_saved(images: list[dict], path: Path, reference: str = "frozen") -> Path:
    """Cumulative NoC@90 clicks saved against the reference, images taken in round order (then site,
    then index), averaged over seeds."""
    plt = _pyplot()
    ref = {(r["seed"], r["site"], r["index"]): r["noc90"] for r in images if r["strategy"] == reference}
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    for name in _order(images):
        if name == reference:
            continue
        curves = []
        for seed in sorted({r["seed"] for r in images}):
            mine = sorted((r for r in images if r["strategy"] == name and r["seed"] == seed),
                          key=lambda r: (r["round"], r["site"], r["index"]))
            saved = [ref[(seed, r["site"], r["index"])] - r["noc90"] for r in mine if (seed, r["site"], r["index"]) in ref]
            if saved:
                curves.append(np.cumsum(saved))
        if curves:
            n = min(len(c) for c in curves)
            curve = np.mean([c[:n] for c in curves], axis=0)
            ax.plot(np.arange(1, n + 1), curve, **_style(name))
    ax.axhline(0, color=COLOURS["frozen"], linewidth=1)
    ax.set_xlabel("images annotated (all sites, round order)")
    ax.set_ylabel(f"clicks saved vs {reference} (NoC@90)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def learning_curves(curves: dict, path: Path) -> Path:
    """The headline: NoC@90, NoC@85 and Dice@1 against images annotated, one line per arm with its
    bootstrap interval (shaded), from results.json's `curves`."""
    plt = _pyplot()
    metrics = curves["metrics"]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.6), squeeze=False)
    arms = [n for n in ARMS if any(p["strategy"] == n for p in curves["points"])]
    for ax, metric in zip(axes[0], metrics):
        for name in arms:
            pts = sorted((p for p in curves["points"] if p["strategy"] == name and p["metric"] == metric),
                         key=lambda p: p["bin"])
            if not pts:
                continue
            xs = np.array([(p["images_from"] + p["images_to"]) / 2 for p in pts])
            ax.plot(xs, [p["mean"] for p in pts], marker="o", markersize=3, **_style(name))
            ax.fill_between(xs, [p["low"] for p in pts], [p["high"] for p in pts], alpha=0.15,
                            color=COLOURS.get(name))
        ax.set_xlabel(f"images annotated (bins of {curves['bin_width']})")
        ax.set_ylabel({"noc90": "NoC@90", "noc85": "NoC@85", "dice1": "Dice@1"}.get(metric, metric))
        if metric.startswith("dice"):
            ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(7, len(labels)), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    return _save(fig, path)


def bytes_bars(headline: dict[str, dict], path: Path) -> Path:
    """Bytes per round per strategy on a log axis; strategies that send nothing are labelled, not drawn."""
    plt = _pyplot()
    names = list(headline)
    values = [headline[n]["bytes_per_round"] for n in names]
    fig, ax = plt.subplots(figsize=(1.1 * len(names) + 2, 3.6))
    positive = [v for v in values if v > 0]
    floor = min(positive) / 10 if positive else 1.0
    for i, (name, v) in enumerate(zip(names, values)):
        if v > 0:
            ax.bar(i, v, color=COLOURS.get(name, "#999"), alpha=0.85)
            ax.text(i, v * 1.15, _human(v), ha="center", va="bottom", fontsize=8)
        else:
            ax.text(i, floor * 1.5, "0\n(local)", ha="center", va="bottom", fontsize=8, color="#555")
    ax.set_yscale("log")
    ax.set_xlim(-0.6, len(names) - 0.4)
    ax.set_ylim(floor, max(positive) * 8 if positive else 10)
    ax.set_xticks(range(len(names)), names, rotation=25, ha="right", fontsize=8)
    ax.set_ylabel("bytes per round (up + down, all sites)")
    ax.grid(axis="y", alpha=0.3, which="both")
    fig.tight_layout()
    return _save(fig, path)


def _human(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def _save(fig, path: Path) -> Path:
    path = Path(path)
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def write_plots(results: dict, out_dir: Path) -> list[str]:
    """Every plot (learning curves first) into `out_dir`; returns their file names, in report order."""
    out_dir = Path(out_dir)
    images, headline = results["images"], results["headline"]
    if not images:
        return []
    written = [learning_curves(results["curves"], out_dir / "learning_curves.png")] if results.get("curves") else []
    written += [
        dice_vs_images(images, out_dir / "dice_vs_images.png"),
        noc90_bars(headline, images, out_dir / "noc90.png"),
    ]
    if any(r["strategy"] == "frozen" for r in images):
        written.append(clicks_saved(images, out_dir / "clicks_saved.png"))
    written.append(bytes_bars(headline, out_dir / "bytes_per_round.png"))
    return [p.name for p in written]
