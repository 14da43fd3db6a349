"""The in-memory shape of data: a dataset is a list of cases, a case holds labelled objects.

Axis order everywhere: spatial axes in the order the source file indexes them, which for NIfTI
and NRRD is (x, y, z) and for 2D images read through MONAI (PNG) or the built-in TIFF is (x, y),
i.e. columns first. Images carry a leading channel axis: (C, *spatial).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydantic import BaseModel


class DataError(ValueError):
    """A problem with input data. The message always names the file and what is wrong."""

    def __init__(self, path: str | Path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class LabelledObject:
    """One object to segment: a binary mask over the case's spatial grid.

    The mask can be given directly, or as (label_map, label) so that an atlas with a hundred
    regions does not hold a hundred full-size boolean volumes; it is then computed on access.
    """

    __slots__ = ("name", "label", "derived", "_mask", "_label_map")

    def __init__(
        self,
        name: str,
        label: int,
        mask: np.ndarray | None = None,
        derived: bool = False,
        *,
        label_map: np.ndarray | None = None,
    ):
        if (mask is None) == (label_map is None):
            raise ValueError("give exactly one of mask or label_map")
        self.name = name
        self.label = int(label)
        self.derived = bool(derived)
        self._mask = None if mask is None else np.asarray(mask, dtype=bool)
        self._label_map = label_map

    @property
    def mask(self) -> np.ndarray:
        if self._mask is not None:
            return self._mask
        return self._label_map == self.label

    @property
    def shape(self) -> tuple[int, ...]:
        source = self._mask if self._mask is not None else self._label_map
        return tuple(source.shape)

    def __repr__(self) -> str:
        kind = "derived" if self.derived else "manual"
        return f"LabelledObject({self.name!r}, label={self.label}, {kind}, shape={self.shape})"


@dataclass
class Case:
    case_id: str
    image: np.ndarray  # float32 (C, *spatial), raw intensities
    spacing: tuple[float, ...]  # one per spatial axis, in mm (microscopy: pixels)
    modality: str  # "MR" | "CT" | "microscopy" | ...
    objects: list[LabelledObject]
    source: str = ""

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return tuple(self.image.shape[1:])

    @property
    def ndim(self) -> int:
        return self.image.ndim - 1


@dataclass
class Dataset:
    name: str
    modality: str
    cases: list[Case]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)
    source: str = ""
    licence: str = ""
    labels: str = "manual"  # "manual" | "derived" | "mixed"

    def __len__(self) -> int:
        return len(self.cases)

    def case(self, case_id: str) -> Case:
        for case in self.cases:
            if case.case_id == case_id:
                return case
        raise KeyError(f"{self.name} has no case {case_id!r}; cases: {[c.case_id for c in self.cases]}")


class DatasetInfo(BaseModel):
    """What `fedpoint data list` shows for one prepared dataset."""

    name: str
    modality: str
    cases: int
    objects: int
    shapes: list[list[int]]
    spacing: list[list[float]]
    source: str
    licence: str
    labels: str  # "manual" | "derived" | "mixed"
    subjects: int
    object_names: list[str] = []
    notes: str = ""


def labels_kind(objects: list[LabelledObject]) -> str:
    """'manual', 'derived' or 'mixed' for a set of objects."""
    derived = {o.derived for o in objects}
    if derived == {True}:
        return "derived"
    if derived == {False} or not derived:
        return "manual"
    return "mixed"
