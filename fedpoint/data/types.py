"""The in-memory shape of data: a dataset is a list of cases, a case holds labelled objects.

Axis order everywhere: spatial axes in the order the source file indexes them, which for NIfTI
and NRRD is (x, y, z) and for 2D images read through MONAI (PNG) or the built-in TIFF is (x, y),
i.e. columns first. Images carry a leading channel axis: (C, *spatial).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

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
    `label_map` may also be a function returning the map (a lazily read case): the object then
    holds no voxels at all, and `shape` must be given.
    """

    __slots__ = ("name", "label", "derived", "_mask", "_label_map", "_shape")

    def __init__(
        self,
        name: str,
        label: int,
        mask: np.ndarray | None = None,
        derived: bool = False,
        *,
        label_map: np.ndarray | Callable[[], np.ndarray] | None = None,
        shape: tuple[int, ...] | None = None,
    ):
        if (mask is None) == (label_map is None):
            raise ValueError("give exactly one of mask or label_map")
        if callable(label_map) and shape is None:
            raise ValueError("a label_map given as a function needs the shape")
        self.name = name
        self.label = int(label)
        self.derived = bool(derived)
        self._mask = None if mask is None else np.asarray(mask, dtype=bool)
        self._label_map = label_map
        self._shape = None if shape is None else tuple(int(n) for n in shape)

    @property
    def mask(self) -> np.ndarray:
        if self._mask is not None:
            return self._mask
        label_map = self._label_map() if callable(self._label_map) else self._label_map
        return label_map == self.label

    @property
    def shape(self) -> tuple[int, ...]:
        if self._mask is not None:
            return tuple(self._mask.shape)
        return self._shape if callable(self._label_map) else tuple(self._label_map.shape)

    def __repr__(self) -> str:
        kind = "derived" if self.derived else "manual"
        return f"LabelledObject({self.name!r}, label={self.label}, {kind}, shape={self.shape})"


@dataclass(eq=False)
class Case:
    """One image and its objects, either in memory or read lazily from files.

    A lazy case (`files` given, `image` and `objects` None; see `fedpoint.data.readers.CaseFiles`)
    holds only what its files' headers say: `image`, the label map and `objects` are decoded on
    first use, through a small shared cache, so a large dataset is never in memory at once.
    Iterate cases with `usable` to skip (and report) one whose files turn out to be damaged.
    """

    case_id: str
    image: np.ndarray | None = field(repr=False)  # float32 (C, *spatial), raw intensities
    spacing: tuple[float, ...]  # one per spatial axis, in mm (microscopy: pixels)
    modality: str  # "MR" | "CT" | "microscopy" | ...
    objects: list[LabelledObject] | None = field(repr=False)
    source: str = ""
    files: Any = field(default=None, repr=False, compare=False)

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        if self._image is None and self.files is not None:
            return tuple(self.files.shape[1:])  # from the headers: nothing decoded
        return tuple(self.image.shape[1:])

    @property
    def ndim(self) -> int:
        return len(self.spatial_shape)

    def load(self) -> None:
        """Decode a lazy case now (a no-op in memory): raises `DataError` naming a damaged file."""
        if self.files is not None and self._image is None:
            self.files.check()

    def keep_objects(self, objects: list[LabelledObject]) -> Case:
        """This case with only `objects`, decoding nothing (`dataclasses.replace` would read `image`)."""
        twin = copy.copy(self)
        twin._objects = list(objects)
        return twin


# `image` and `objects` are properties behind the dataclass fields, so a lazy case decodes on access
# while `Case(...)` and `dataclasses.replace` keep working as for a plain dataclass.
def _get_image(case: Case) -> np.ndarray:
    if case._image is None and case.files is not None:
        return case.files.image()
    return case._image


def _set_image(case: Case, image: np.ndarray | None) -> None:
    case._image = image


def _get_objects(case: Case) -> list[LabelledObject]:
    if case._objects is None:
        return case.files.objects() if case.files is not None else []
    return case._objects


def _set_objects(case: Case, objects: list[LabelledObject] | None) -> None:
    case._objects = None if objects is None else list(objects)


Case.image = property(_get_image, _set_image)
Case.objects = property(_get_objects, _set_objects)


def usable(cases: Iterable[Case]) -> Iterator[Case]:
    """The cases in order, each decoded just before it is yielded. A lazy case whose files turn out
    to be damaged is left out and reported in its dataset's `skipped` as (file, reason); strict
    reading raises instead. Cases in memory pass through."""
    for case in list(cases):  # a snapshot: a reported case leaves its dataset's list
        try:
            case.load()
        except DataError as err:
            if case.files is None or not case.files.report(err):
                raise
            continue
        yield case


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
