"""Which torch device a site runs on: `cpu`, `cuda`, `cuda:N` or `auto` (CUDA when torch sees one).

Used by the annotation service (`device` in site.toml) and the Flower ClientApp (`device` in the
SuperNode's node config). `check_device` needs no torch; `resolve_device` imports it.
"""

from __future__ import annotations

import re

DEVICE_CHOICES = "cpu, cuda, cuda:N or auto"
DEFAULT_DEVICE = "cpu"  # a site's device unless its site.toml or node config says otherwise
_DEVICE = re.compile(r"^(cpu|auto|cuda(:\d+)?)$")


def check_device(spec: str) -> str:
    """The spec, stripped and lower-cased, or ValueError naming the allowed forms."""
    value = str(spec).strip().lower()
    if not _DEVICE.match(value):
        raise ValueError(f"unknown device {spec!r}; use {DEVICE_CHOICES}")
    return value


def resolve_device(spec: str) -> str:
    """`auto` -> `cuda` if torch sees a GPU, else `cpu`; `cuda[:N]` must exist (ValueError saying why)."""
    value = check_device(spec)
    if value == "cpu":
        return value
    import torch

    available = torch.cuda.is_available()
    if value == "auto":
        return "cuda" if available else "cpu"
    if not available:
        build = "a CPU-only torch build" if torch.version.cuda is None else f"torch built for CUDA {torch.version.cuda}"
        raise ValueError(f"device {spec!r}: torch sees no CUDA GPU ({build}); use device = \"cpu\" or \"auto\", "
                         "or install a CUDA build of torch (README, 'Installing')")
    index = int(value.split(":")[1]) if ":" in value else 0
    if index >= torch.cuda.device_count():
        raise ValueError(f"device {spec!r}: only {torch.cuda.device_count()} CUDA device(s) visible")
    return value
