"""Intensity normalisation by modality, to float32 in [0, 1].

CT has physical units (HU), so a fixed window is used; MR and microscopy have arbitrary units, so
each channel is scaled between two of its own percentiles.
"""

from __future__ import annotations

import numpy as np

# A wide window that shows lung parenchyma and soft tissue at once (level -300 HU, width 1400 HU),
# so both lung nodules and soft-tissue lesions keep contrast.
CT_WINDOW_DEFAULT = (-1000.0, 400.0)
CT_WINDOWS = {
    "lung": (-1350.0, 150.0),
    "soft-tissue": (-160.0, 240.0),
    "bone": (-450.0, 1050.0),
    "wide": CT_WINDOW_DEFAULT,
}
PERCENTILES = {"MR": (0.5, 99.5), "microscopy": (1.0, 99.8)}
PERCENTILES_OTHER = (0.5, 99.5)


def canonical_modality(name: str) -> str:
    """Map the many ways datasets spell a modality onto 'CT', 'MR', 'microscopy' or the name itself."""
    text = name.strip()
    upper = text.upper()
    if upper in {"CT", "CTA", "PET/CT"} or upper.startswith("CT"):
        return "CT"
    mr_words = ("MR", "T1", "T2", "FLAIR", "ADC", "DWI", "PD", "SWI", "BOLD", "NONCONTRAST", "CONTRAST")
    if upper.startswith(mr_words) or upper in {"MRI", "T1W", "T2W", "T1GD", "T1C"}:
        return "MR"
    if upper.startswith(("MICROSCOPY", "FLUORESCENCE", "HISTO", "EM")):
        return "microscopy"
    return text or "unknown"


def normalize(
    image: np.ndarray,
    modality: str,
    *,
    window: tuple[float, float] | str | None = None,
    percentiles: tuple[float, float] | None = None,
) -> np.ndarray:
    """Scale `image` (C, *spatial) to float32 in [0, 1] the way its modality needs.

    CT: clip to `window` (HU; a name from CT_WINDOWS or (low, high); default CT_WINDOW_DEFAULT).
    Other modalities: per channel, clip to `percentiles` (default MR 0.5-99.5, microscopy 1-99.8).
    """
    image = np.asarray(image, dtype=np.float32)
    if canonical_modality(modality) == "CT" and percentiles is None:
        low, high = ct_window(window)
        return np.clip((image - low) / (high - low), 0.0, 1.0).astype(np.float32)
    pct = percentiles or PERCENTILES.get(canonical_modality(modality), PERCENTILES_OTHER)
    return np.stack([_scale_by_percentiles(channel, pct) for channel in image]).astype(np.float32)


def ct_window(window: tuple[float, float] | str | None) -> tuple[float, float]:
    if window is None:
        return CT_WINDOW_DEFAULT
    if isinstance(window, str):
        if window not in CT_WINDOWS:
            raise ValueError(f"unknown CT window {window!r}; known: {sorted(CT_WINDOWS)}")
        return CT_WINDOWS[window]
    low, high = float(window[0]), float(window[1])
    if high <= low:
        raise ValueError(f"CT window must have low < high, got {window}")
    return low, high


def _scale_by_percentiles(channel: np.ndarray, pct: tuple[float, float]) -> np.ndarray:
    # Percentiles of a subsample are indistinguishable from the full ones and much faster on volumes.
    flat = channel.ravel()
    step = max(1, flat.size // 2_000_000)
    low, high = np.percentile(flat[::step], pct)
    if high <= low:
        return np.zeros_like(channel, dtype=np.float32)
    return np.clip((channel - low) / (high - low), 0.0, 1.0)
