"""Named, seeded acquisition shifts built from MONAI intensity transforms.

Two sites of one modality differ the way two scanners do: contrast curve, coil bias field, noise,
blur or lower resolution, overall intensity scale. Each shift is a short recipe of transforms;
`apply_shift(image, name, seed)` is deterministic for a seed. Inputs and outputs are normalised
images (C, *spatial) in [0, 1]; outputs are clipped back to [0, 1].
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from fedpoint.shared.monai_import import load_monai

# name -> (description, recipe). A recipe lists steps; a step builds one MONAI transform for an
# image with `ndim` spatial axes and spatial shape `shape`.
Step = Callable[[int, tuple[int, ...]], object]


def _gamma(low: float, high: float) -> Step:
    def make(ndim, shape):
        from monai.transforms import RandAdjustContrast

        return RandAdjustContrast(prob=1.0, gamma=(low, high))

    return make


class _MeanOneBiasField:
    """MONAI's RandBiasField, with its gain field rescaled to mean 1: the raw field's exponential
    peaks at the corners (gains of 2-20 for moderate coefficients) would just saturate images."""

    def __init__(self, low: float, high: float):
        from monai.transforms import RandBiasField

        self.field = RandBiasField(prob=1.0, degree=3, coeff_range=(low, high))

    def set_random_state(self, seed: int) -> None:
        self.field.set_random_state(seed=seed)

    def __call__(self, image: np.ndarray) -> np.ndarray:
        from monai.utils import convert_to_numpy

        gain = convert_to_numpy(self.field(np.ones(image.shape[1:], np.float32)[None]), dtype=np.float32)[0]
        return image * (gain / gain.mean())


def _bias(low: float, high: float) -> Step:
    def make(ndim, shape):
        return _MeanOneBiasField(low, high)

    return make


def _noise(std: float) -> Step:
    def make(ndim, shape):
        from monai.transforms import RandGaussianNoise

        return RandGaussianNoise(prob=1.0, mean=0.0, std=std, sample_std=False)

    return make


def _blur(sigma: float) -> Step:
    def make(ndim, shape):
        from monai.transforms import GaussianSmooth

        return GaussianSmooth(sigma=sigma)

    return make


def _lowres(factor: float) -> Step:
    """Acquire at 1/factor of the resolution (area average), then interpolate back up."""

    def make(ndim, shape):
        from monai.transforms import Compose, Resize

        small = [max(1, int(round(n / factor))) for n in shape]
        up_mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[ndim]
        return Compose([Resize(small, mode="area"), Resize(list(shape), mode=up_mode)])

    return make


def _scale(low: float, high: float) -> Step:
    def make(ndim, shape):
        from monai.transforms import RandScaleIntensity

        return RandScaleIntensity(factors=(low, high), prob=1.0)

    return make


_RECIPES: dict[str, tuple[str, list[Step]]] = {
    "none": ("no shift: the images as normalised", []),
    "gamma-low": ("contrast curve gamma 0.6-0.8 (brighter mid-tones)", [_gamma(0.6, 0.8)]),
    "gamma-high": ("contrast curve gamma 1.3-1.6 (darker mid-tones)", [_gamma(1.3, 1.6)]),
    "bias": ("smooth multiplicative bias field (degree 3, coefficients 0.1-0.2, mean gain 1)", [_bias(0.1, 0.2)]),
    "noise": ("additive Gaussian noise, std 0.04", [_noise(0.04)]),
    "blur": ("Gaussian blur, sigma 1.2 voxels", [_blur(1.2)]),
    "lowres": ("acquired at 1/2.5 resolution, interpolated back", [_lowres(2.5)]),
    "scale": ("intensity scaled down by 15-35%", [_scale(-0.35, -0.15)]),
    "scanner-b": ("gamma 1.3-1.6 + bias field + noise std 0.03", [_gamma(1.3, 1.6), _bias(0.1, 0.2), _noise(0.03)]),
    "scanner-c": ("gamma 0.6-0.8 + 1/2 resolution + noise std 0.02", [_gamma(0.6, 0.8), _lowres(2.0), _noise(0.02)]),
}

SHIFTS: dict[str, str] = {name: description for name, (description, _) in _RECIPES.items()}


def check_shift(name: str) -> str:
    if name not in _RECIPES:
        raise ValueError(f"unknown shift {name!r}; known shifts: {', '.join(SHIFTS)}")
    return name


def apply_shift(image: np.ndarray, shift: str, seed: int) -> np.ndarray:
    """`image` (C, *spatial) in [0, 1] under the named shift; the same seed gives the same result."""
    _, steps = _RECIPES[check_shift(shift)]
    image = np.asarray(image, dtype=np.float32)
    if not steps:
        return image.copy()
    load_monai()
    from monai.utils import convert_to_numpy

    spatial = tuple(image.shape[1:])
    seeds = np.random.SeedSequence(int(seed)).generate_state(len(steps))
    out = image
    for step, step_seed in zip(steps, seeds):
        transform = step(len(spatial), spatial)
        if hasattr(transform, "set_random_state"):
            transform.set_random_state(seed=int(step_seed))
        out = convert_to_numpy(transform(out), dtype=np.float32)
    return np.clip(out, 0.0, 1.0).astype(np.float32)
