"""From cases to model-sized samples, one object at a time, and back.

A sample is one object (optionally one slice of it) cut out of a normalised case: a box centred on
the object's bounding box, enlarged by `margin` of its extent on each side, given the aspect ratio
of the model's input so the object is not distorted, never smaller than the input size at native
resolution, padded with zeros where it runs off the image, and resampled to `size` (linear for the
image, nearest for the mask). `CropInfo` records the box, so `uncrop` maps a predicted mask back.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from fedpoint.data.normalize import normalize
from fedpoint.data.types import Case, Dataset, LabelledObject, usable


@dataclass(frozen=True)
class CropInfo:
    grid_shape: tuple[int, ...]  # shape of the grid the box was cut from (the slice for 2D-from-3D)
    start: tuple[float, ...]  # box origin on that grid, in voxels (may be negative: padding)
    scale: float  # grid voxels per output voxel (same on every axis)
    size: tuple[int, ...]  # output size
    case_shape: tuple[int, ...]  # spatial shape of the whole case
    axis: int | None = None  # slicing axis of the case (None: no slicing)
    index: int | None = None  # slice index along `axis`

    @property
    def box_shape(self) -> tuple[float, ...]:
        return tuple(self.scale * s for s in self.size)


@dataclass
class Sample:
    image: np.ndarray  # float32 (C, *size), normalised to ~[0, 1]
    mask: np.ndarray  # bool (*size); never empty
    case_id: str
    object_name: str
    modality: str
    crop: CropInfo
    spacing: tuple[float, ...] | None = None  # mm per axis of a whole 3D volume (None: voxels count)


def make_samples(
    data: Dataset | list[Case],
    *,
    spatial_dims: int = 2,
    size: tuple[int, ...] = (128, 128),
    axis: int = -1,
    min_voxels: int = 20,
    split_components: bool = False,
    max_per_object: int | None = None,
    margin: float = 0.5,
    seed: int = 0,
) -> list[Sample]:
    """Samples in a deterministic (case, object, slice) order.

    2D from 3D cases: slices along `axis` (a spatial axis, negative counts from the last) where the
    object has at least `min_voxels`; `max_per_object` keeps that many evenly spaced slices. With
    `split_components`, each connected component of an object becomes its own object `name#k`.
    `seed` is accepted for interface stability; the selection is deterministic without it.
    """
    del seed  # nothing random yet: slice choice is evenly spaced, order is fixed
    size = tuple(int(s) for s in size)
    if len(size) != spatial_dims:
        raise ValueError(f"size {size} must have {spatial_dims} entries for spatial_dims={spatial_dims}")
    cases = data.cases if isinstance(data, Dataset) else list(data)
    samples: list[Sample] = []
    for case in usable(cases):  # a lazily read case is decoded here, one at a time
        samples.extend(_case_samples(case, spatial_dims, size, axis, min_voxels, split_components, max_per_object, margin))
    return samples


def _case_samples(case, spatial_dims, size, axis, min_voxels, split_components, max_per_object, margin):
    if case.ndim < spatial_dims:
        raise ValueError(f"case {case.case_id} is {case.ndim}D; cannot make {spatial_dims}D samples")
    if case.ndim > spatial_dims + 1:
        raise ValueError(f"case {case.case_id} is {case.ndim}D; only one axis can be sliced")
    image = normalize(case.image, case.modality)
    sliced = case.ndim > spatial_dims
    ax = axis % case.ndim
    if sliced:  # slicing axis first and contiguous: slices become cheap views
        image = np.ascontiguousarray(np.moveaxis(image, ax + 1, 0))
    out = []
    for obj in _objects(case, split_components):
        mask = obj.mask
        if not sliced:
            if mask.sum() >= min_voxels:
                out.append(_cut(image, mask, case, obj.name, size, margin, None, None))
            continue
        mask = np.ascontiguousarray(np.moveaxis(mask, ax, 0))
        counts = mask.reshape(mask.shape[0], -1).sum(axis=1)
        for index in _pick_slices(np.flatnonzero(counts >= min_voxels), max_per_object):
            out.append(_cut(image[index], mask[index], case, obj.name, size, margin, ax, int(index)))
    return out


def full_slice_samples(
    data: Dataset | list[Case],
    *,
    spatial_dims: int = 2,
    axis: int = -1,
    min_voxels: int = 20,
    split_components: bool = False,
    max_per_object: int | None = None,
) -> list[Sample]:
    """Like `make_samples`, with the same (case, object, slice) selection, but nothing is cut out:
    each sample is the whole slice (or the whole 2D/3D case) at native resolution, and the object's
    mask on it is the target. `crop` is then the identity (`uncrop` returns the mask unchanged)."""
    cases = data.cases if isinstance(data, Dataset) else list(data)
    out: list[Sample] = []
    for case in usable(cases):
        if case.ndim not in (spatial_dims, spatial_dims + 1):
            raise ValueError(f"case {case.case_id} is {case.ndim}D; cannot make {spatial_dims}D full-slice samples")
        image = normalize(case.image, case.modality)
        sliced = case.ndim > spatial_dims
        ax = axis % case.ndim
        if sliced:
            image = np.ascontiguousarray(np.moveaxis(image, ax + 1, 0))
        for obj in _objects(case, split_components):
            mask = obj.mask
            if not sliced:
                if mask.sum() >= min_voxels:
                    out.append(_whole(image, mask, case, obj.name, None, None))
                continue
            mask = np.ascontiguousarray(np.moveaxis(mask, ax, 0))
            counts = mask.reshape(mask.shape[0], -1).sum(axis=1)
            for index in _pick_slices(np.flatnonzero(counts >= min_voxels), max_per_object):
                # A copy: a view would keep the whole normalised volume alive for every case.
                out.append(_whole(image[index].copy(), mask[index], case, obj.name, ax, int(index)))
    return out


class LazyVolumes(Sequence):
    """Whole-volume samples built when used, one at a time: a list of twenty 512 x 512 x 100
    volumes as samples would hold 2 GiB of normalised voxels at once. Each entry is (case, object,
    component or None); `transform(sample, position)` (a shift) applies as each is built."""

    def __init__(self, refs: list[tuple[Case, LabelledObject, int | None]],
                 transform: Callable[[Sample, int], Sample] | None = None, start: int = 0):
        self.refs, self.transform, self.start = list(refs), transform, start

    def __len__(self) -> int:
        return len(self.refs)

    def __getitem__(self, i):
        if isinstance(i, slice):
            positions = range(len(self.refs))[i]
            return LazyVolumes([self.refs[k] for k in positions], self.transform, self.start + (positions.start or 0))
        case, obj, component = self.refs[i]
        mask = obj.mask if component is None else ndimage.label(obj.mask)[0] == component
        name = obj.name if component is None else f"{obj.name}#{component}"
        sample = _whole(normalize(case.image, case.modality), mask, case, name, None, None)
        return self.transform(sample, self.start + (i % len(self.refs))) if self.transform else sample


def volume_refs(cases: list[Case], min_voxels: int = 20, split_components: bool = False) -> list[tuple]:
    """The (case, object, component) triples `full_slice_samples(spatial_dims=3)` would make, in
    its order, with no voxels kept: masks are decoded to count and let go."""
    refs = []
    for case in usable(cases):
        for obj in case.objects:
            mask = obj.mask
            labels, count = ndimage.label(mask) if split_components else (None, 1)  # labelled once: volumes are large
            if count <= 1:
                if mask.sum() >= min_voxels:
                    refs.append((case, obj, None))
                continue
            refs += [(case, obj, k) for k in range(1, count + 1) if (labels == k).sum() >= min_voxels]
    return refs


def _whole(image, mask, case, name, axis, index) -> Sample:
    shape = tuple(mask.shape)
    crop = CropInfo(shape, (0.0,) * len(shape), 1.0, shape, case.spatial_shape, axis, index)
    # A whole volume keeps its spacing (the 3D focus crop and the clicker measure in mm); slices of
    # 2D work stay in voxels, as the 2D base was trained.
    spacing = tuple(float(x) for x in case.spacing) if axis is None and len(shape) == 3 and case.spacing else None
    return Sample(np.ascontiguousarray(image, dtype=np.float32), mask.astype(bool), case.case_id, name,
                  case.modality, crop, spacing)


def _objects(case: Case, split_components: bool) -> list[LabelledObject]:
    if not split_components:
        return list(case.objects)
    parts = []
    for obj in case.objects:
        labels, count = ndimage.label(obj.mask)
        if count <= 1:
            parts.append(obj)
            continue
        for k in range(1, count + 1):
            parts.append(LabelledObject(f"{obj.name}#{k}", obj.label, labels == k, obj.derived))
    return parts


def _pick_slices(indices: np.ndarray, limit: int | None) -> np.ndarray:
    if limit is None or len(indices) <= limit:
        return indices
    if limit <= 0:
        return indices[:0]
    return indices[np.unique(np.round(np.linspace(0, len(indices) - 1, limit)).astype(int))]


def crop_box(mask: np.ndarray, size: tuple[int, ...], margin: float) -> tuple[tuple[float, ...], float]:
    """Origin and scale of the box around the object in `mask` (see the module docstring)."""
    coords = np.nonzero(mask)
    lo = np.array([c.min() for c in coords], float)
    hi = np.array([c.max() for c in coords], float) + 1
    extent = (hi - lo) * (1 + 2 * margin)
    scale = max(1.0, float(np.max(extent / np.array(size))))
    centre = (lo + hi) / 2
    # Whole-voxel origins: at native scale the crop is then an exact copy, with no interpolation.
    start = tuple(float(np.floor(c - scale * s / 2 + 0.5)) for c, s in zip(centre, size))
    return start, scale


def _grid(start, scale, size) -> list[np.ndarray]:
    # Output voxel i samples the box at its centre: start + (i + 0.5) * scale, in voxel-centre units.
    return [st + (np.arange(n) + 0.5) * scale - 0.5 for st, n in zip(start, size)]


def _resample(array: np.ndarray, start, scale, size, order: int) -> np.ndarray:
    axes = np.meshgrid(*_grid(start, scale, size), indexing="ij")
    return ndimage.map_coordinates(array, axes, order=order, mode="constant", cval=0.0)


def _cut(image, mask, case, name, size, margin, axis, index) -> Sample:
    start, scale = crop_box(mask, size, margin)
    crop = CropInfo(tuple(mask.shape), start, scale, size, case.spatial_shape, axis, index)
    channels = [_resample(ch, start, scale, size, order=1) for ch in image]
    cut_mask = _resample(mask.astype(np.uint8), start, scale, size, order=0).astype(bool)
    if not cut_mask.any():  # an object thinner than one output voxel: keep its centre voxel
        cut_mask[tuple(n // 2 for n in size)] = True
    return Sample(
        image=np.stack(channels).astype(np.float32),
        mask=cut_mask,
        case_id=case.case_id,
        object_name=name,
        modality=case.modality,
        crop=crop,
    )


def uncrop(mask: np.ndarray, crop: CropInfo, *, to_case: bool = False) -> np.ndarray:
    """Map a mask (or probabilities) of `crop.size` back onto the grid it was cut from.

    Returns a bool array of `crop.grid_shape`, or with `to_case=True` of the whole case's spatial
    shape (a sliced sample lands in its slice, everything else stays False).
    """
    mask = np.asarray(mask)
    if tuple(mask.shape) != crop.size:
        raise ValueError(f"mask shape {mask.shape} does not match the crop size {crop.size}")
    out = np.zeros(crop.grid_shape, bool)
    # Only grid voxels inside the box can be covered; compute those.
    lo = [max(0, int(np.floor(s))) for s in crop.start]
    hi = [min(n, int(np.ceil(s + b))) for s, b, n in zip(crop.start, crop.box_shape, crop.grid_shape)]
    if all(h > low for low, h in zip(lo, hi)):
        coords = [(np.arange(low, h) - s + 0.5) / crop.scale - 0.5 for low, h, s in zip(lo, hi, crop.start)]
        axes = np.meshgrid(*coords, indexing="ij")
        # Linear interpolation thresholded at one half: smoother edges than nearest when upsampling,
        # and identical to it at native scale. Probabilities work too.
        values = ndimage.map_coordinates(mask.astype(np.float32), axes, order=1, mode="constant", cval=0.0)
        out[tuple(slice(low, h) for low, h in zip(lo, hi))] = values >= 0.5
    if not to_case or crop.axis is None:
        return out
    full = np.zeros(crop.case_shape, bool)
    index = [slice(None)] * len(crop.case_shape)
    index[crop.axis] = crop.index
    full[tuple(index)] = out
    return full
