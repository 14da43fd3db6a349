"""A PNG contact sheet of sites: one row per site, a few samples each, image with mask outline,
so a person can see what each site's data and shift look like."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def contact_sheet(sites: list, path: Path, per_site: int = 4) -> Path:
    """Write the sheet to `path` (PNG) and return it. 3D samples show their middle slice."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    rows, cols = max(1, len(sites)), max(1, per_site)
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.4 * rows), squeeze=False)
    for row, site in zip(axes, sites):
        picks = _evenly_spaced(len(site.samples), cols)
        for col, ax in enumerate(row):
            ax.set_axis_off()
            if col < len(picks):
                _draw(ax, site.samples[picks[col]])
        row[0].set_title(f"{site.name} · {site.modality} · {site.shift} · n={len(site.samples)}", loc="left", fontsize=8)
    for ax in axes[len(sites):].ravel():
        ax.set_axis_off()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _evenly_spaced(count: int, wanted: int) -> list[int]:
    if count == 0:
        return []
    return sorted(set(np.linspace(0, count - 1, min(count, wanted)).round().astype(int).tolist()))


def _draw(ax, sample) -> None:
    image, mask = sample.image[0], sample.mask
    if image.ndim == 3:  # a 3D sample: its middle slice along the last axis
        image, mask = image[..., image.shape[-1] // 2], mask[..., mask.shape[-1] // 2]
    # Arrays are (x, y); transpose so rows are y, as the image would be viewed.
    ax.imshow(image.T, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    if mask.any():
        ax.contour(mask.T.astype(float), levels=[0.5], colors="#ff3b30", linewidths=0.8)
    ax.text(1, 1, f"{sample.case_id}/{sample.object_name}", color="yellow", fontsize=6, va="top")
