"""Bit-packed masks for a session's older steps: a click's mask is kept for undo, and at one byte a
voxel a 3D session's history grew by the volume's size at every click (54 MB a click on a
512 x 512 x 200 volume). Packed, a mask takes one bit a voxel; the newest two steps stay unpacked,
since the next click and the mid-interaction update read them, and undo unpacks as it goes back.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

KEEP_UNPACKED = 2  # the last step's mask and the one before it (its input mask)


@dataclass(frozen=True)
class PackedMask:
    bits: np.ndarray  # np.packbits of the flattened bool mask
    shape: tuple[int, ...]
    device: torch.device

    @classmethod
    def of(cls, mask: torch.Tensor) -> "PackedMask":
        flat = mask.detach().to("cpu", torch.bool).numpy().ravel()
        return cls(np.packbits(flat), tuple(mask.shape), mask.device)

    def tensor(self) -> torch.Tensor:
        flat = np.unpackbits(self.bits, count=math.prod(self.shape)).astype(bool)
        return torch.from_numpy(flat.reshape(self.shape)).to(self.device)

    @property
    def nbytes(self) -> int:
        return int(self.bits.nbytes)


def _unpacked(mask):
    return mask.tensor() if isinstance(mask, PackedMask) else mask


def compact(steps: list) -> None:
    """Pack every step's mask but the newest KEEP_UNPACKED (and the input masks that are those)."""
    for i in range(max(0, len(steps) - KEEP_UNPACKED)):
        if not isinstance(steps[i].mask, PackedMask):
            steps[i].mask = PackedMask.of(steps[i].mask)
        if i + 1 < len(steps):
            steps[i + 1].input_mask = steps[i].mask  # one object for both, as before packing


def expand(steps: list) -> None:
    """After an undo: the newest KEEP_UNPACKED steps' masks unpacked again, input masks shared."""
    start = max(0, len(steps) - KEEP_UNPACKED)
    for i in range(start, len(steps)):
        steps[i].mask = _unpacked(steps[i].mask)
        steps[i].input_mask = steps[i - 1].mask if i > 0 else _unpacked(steps[i].input_mask)
