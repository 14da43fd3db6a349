"""Sites: a name, a modality, an ordered stream of samples and an acquisition shift.

Sites are declared as `[[sites]]` tables in a TOML file (an experiment config may hold other keys
too; they are ignored here):

    [[sites]]
    name = "chest-ct-a"
    dataset = "pyradiomics-lung"     # built-in name or a folder
    cases = ["lung1"]                # optional subset, so one dataset can be split across sites
    objects = ["lesion"]             # optional; shell-style patterns such as "nucleus-*" work
    shift = "scanner-b"
    seed = 3
    slices = [0, 30]                 # optional: only slices 0..29 on the slicing axis (3D cases)
    box = [[0, 256], [0, 256]]       # optional: only this pixel box (x0..x1-1, y0..y1-1) of each case
    whole_slices = true              # optional: annotate whole slices at native resolution, not crops
    tasks = ["lesion", "default"]    # optional: the structures it labels, one adapter and task bank each
                                     # (a sample is its object's structure's; "default" takes the rest)

Regions keep sites apart: two sites that draw the same case must take slice ranges at least
`MIN_SLICE_GAP` slices apart or disjoint pixel boxes (`check_disjoint`, which experiments run).
A box crops the case itself (pixels outside it are never seen; crops near its edge are padded
with zeros) and leaves out the objects it cuts, so every object a site sees is whole.
"""

from __future__ import annotations

import fnmatch
import json
from dataclasses import dataclass, field, replace
from itertools import combinations
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from fedpoint.data.load import load_dataset
from fedpoint.data.samples import CropInfo, Sample, full_slice_samples, make_samples
from fedpoint.data.shifts import apply_shift, check_shift
from fedpoint.data.types import Case, DataError, Dataset, LabelledObject, usable
from fedpoint.shared.validation_errors import describe_validation_error

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib


class SiteSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    dataset: str
    modality: str | None = None  # defaults to the dataset's
    shift: str = "none"
    seed: int = 0
    stream_length: int | None = None  # truncate the stream to this many samples
    order: Literal["sorted", "shuffled"] = "shuffled"
    objects: list[str] | None = None  # object names (or patterns) to keep
    cases: list[str] | None = None  # case ids to keep
    max_per_object: int | None = None
    join_round: int = 0  # > 0: a late joiner
    slices: tuple[int, int] | None = None  # [lo, hi): slices lo..hi-1 on the slicing axis (the last)
    box: tuple[tuple[int, int], ...] | None = None  # [[x0, x1], [y0, y1]): a pixel box on the other axes
    whole_slices: bool = False  # 2D: whole slices (or the whole image / box) at native resolution, not object crops
    task: str | None = None  # the structure the site labels, as it declares it: its adapter and its task bank
    tasks: list[str] | None = None  # several structures (one adapter and task bank each); `task`, if given, is the primary
    label_margin: int = Field(0, ge=0, le=16, description="the site's label protocol: masks dilated by this many "
                              "pixels (e.g. 'lesion with margin' against 'lesion core')")

    @field_validator("task")
    @classmethod
    def _task_name(cls, value: str | None) -> str | None:
        from fedpoint.shared.tasks import normalise_task

        if value is not None:
            normalise_task(value)
        return value

    @field_validator("tasks")
    @classmethod
    def _task_names(cls, value: list[str] | None) -> list[str] | None:
        from fedpoint.shared.tasks import normalise_tasks

        if value is not None:
            normalise_tasks(value)
        return value

    @field_validator("slices")
    @classmethod
    def _range(cls, value):
        if value is not None and not 0 <= value[0] < value[1]:
            raise ValueError("must be [lo, hi] with 0 <= lo < hi (slices lo..hi-1)")
        return value

    @field_validator("box")
    @classmethod
    def _box(cls, value):
        if value is None:
            return value
        if not 1 <= len(value) <= 3 or any(not 0 <= lo < hi for lo, hi in value):
            raise ValueError("must be [[x0, x1], [y0, y1]] with 0 <= lo < hi on each axis (pixels lo..hi-1)")
        return value

    @field_validator("shift")
    @classmethod
    def _known_shift(cls, value: str) -> str:
        return check_shift(value)

    @field_validator("seed", "join_round")
    @classmethod
    def _non_negative(cls, value: int) -> int:
        if value < 0:
            raise ValueError("must be >= 0")
        return value

    @field_validator("stream_length", "max_per_object")
    @classmethod
    def _positive(cls, value: int | None) -> int | None:
        if value is not None and value < 1:
            raise ValueError("must be >= 1")
        return value


@dataclass
class Site:
    name: str
    modality: str
    shift: str
    samples: list[Sample]
    spec: SiteSpec
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, reason) from loading

    @property
    def case_ids(self) -> list[str]:
        return sorted({s.case_id for s in self.samples})


def sample_seed(site_seed: int, index: int) -> int:
    """The shift seed of the `index`-th sample of a site: distinct per sample, fixed per site seed."""
    return int(np.random.SeedSequence([site_seed, index]).generate_state(1)[0])


def build_site(
    spec: SiteSpec,
    *,
    data_dir: Path | None = None,
    spatial_dims: int = 2,
    size: tuple[int, ...] = (128, 128),
    dataset: Dataset | None = None,
    strict: bool = False,
) -> Site:
    """Load the site's data, cut samples, order them into a stream and apply the site's shift.
    In 3D a sample is a whole volume at native resolution with its spacing (the 3D focus crop
    zooms), as `fedpoint evaluate` annotates volumes with a 3D base."""
    data = dataset if dataset is not None else load_dataset(spec.dataset, data_dir=data_dir, strict=strict)
    cases = _select_cases(data, spec)
    if spatial_dims == 3:
        volumes = [c for c in cases if c.ndim == 3]
        if not volumes:
            raise DataError(spec.dataset, f"site {spec.name}: a 3D base needs volumes; this dataset has none")
        samples = full_slice_samples(volumes, spatial_dims=3)
    elif spec.whole_slices:  # what a clinician sees: the focus crop of the session does the zooming
        samples = full_slice_samples(cases, spatial_dims=spatial_dims, max_per_object=spec.max_per_object)
    else:
        samples = make_samples(cases, spatial_dims=spatial_dims, size=size, max_per_object=spec.max_per_object)
    if spec.order == "shuffled":
        permutation = np.random.default_rng(spec.seed).permutation(len(samples))
        samples = [samples[i] for i in permutation]
    if spec.stream_length is not None:
        samples = samples[: spec.stream_length]
    modality = spec.modality or data.modality
    for index, sample in enumerate(samples):
        sample.image = apply_shift(sample.image, spec.shift, sample_seed(spec.seed, index))
        sample.modality = modality
        if spec.label_margin:
            sample.mask = with_margin(sample.mask, spec.label_margin)
    return Site(spec.name, modality, spec.shift, samples, spec, skipped=list(data.skipped))


def with_margin(mask: np.ndarray, pixels: int) -> np.ndarray:
    """A label protocol that includes a margin: the mask grown by `pixels` (city-block, per axis)."""
    from scipy.ndimage import binary_dilation

    return binary_dilation(mask, iterations=pixels)


# ------------------------------------------------------------------------------------ built streams
STREAM_SUFFIX = ".stream.npz"


def save_site_stream(site: Site, folder: Path) -> Path:
    """The site's built stream (its shifted samples, in order) as `<folder>/<name>.stream.npz`:
    what a simulated site's worker loads instead of reading, cutting and shifting the dataset
    again. One file per site, written atomically; 2D samples only (volumes stay lazy)."""
    from dataclasses import asdict

    from fedpoint.shared.fileio import write_atomic_via

    samples = list(site.samples)
    header = {"name": site.name, "modality": site.modality, "shift": site.shift,
              "samples": [{"case_id": x.case_id, "object_name": x.object_name, "modality": x.modality,
                           "crop": asdict(x.crop), "spacing": x.spacing} for x in samples]}
    arrays = {f"image_{i}": x.image for i, x in enumerate(samples)} | {f"mask_{i}": x.mask for i, x in enumerate(samples)}
    path = Path(folder) / f"{site.name}{STREAM_SUFFIX}"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic_via(path, lambda out: np.savez(out, header=json.dumps(header), **arrays))
    return path


def load_site_stream(folder: Path, spec: SiteSpec) -> Site | None:
    """The stream `save_site_stream` wrote for this site, or None when there is none."""
    path = Path(folder) / f"{spec.name}{STREAM_SUFFIX}"
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as npz:
        header = json.loads(str(npz["header"]))
        samples = []
        for i, meta in enumerate(header["samples"]):
            crop = {k: tuple(v) if isinstance(v, list) else v for k, v in meta["crop"].items()}
            spacing = None if meta["spacing"] is None else tuple(meta["spacing"])
            samples.append(Sample(npz[f"image_{i}"], npz[f"mask_{i}"], meta["case_id"], meta["object_name"],
                                  meta["modality"], CropInfo(**crop), spacing))
    return Site(header["name"], header["modality"], header["shift"], samples, spec)


def build_sites(
    specs: list[SiteSpec],
    *,
    data_dir: Path | None = None,
    spatial_dims: int = 2,
    size: tuple[int, ...] = (128, 128),
    strict: bool = False,
) -> list[Site]:
    """Build several sites, loading each dataset once."""
    names = [s.name for s in specs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"site names must be unique; repeated: {', '.join(duplicates)}")
    loaded: dict[str, Dataset] = {}
    sites = []
    for spec in specs:
        if spec.dataset not in loaded:
            loaded[spec.dataset] = load_dataset(spec.dataset, data_dir=data_dir, strict=strict)
        sites.append(build_site(spec, spatial_dims=spatial_dims, size=size, dataset=loaded[spec.dataset]))
    return sites


def load_site_specs(path: Path) -> list[SiteSpec]:
    """The `[[sites]]` tables of a TOML file; other keys are ignored. Errors name the file, the site
    and the field."""
    path = Path(path)
    try:
        config = tomllib.loads(path.read_text())
    except FileNotFoundError as err:
        raise DataError(path, "no such file") from err
    except tomllib.TOMLDecodeError as err:
        raise DataError(path, f"is not valid TOML ({err})") from err
    tables = config.get("sites")
    if not isinstance(tables, list) or not tables:
        raise DataError(path, "defines no sites: expected one or more [[sites]] tables")
    specs = []
    for i, table in enumerate(tables):
        try:
            specs.append(SiteSpec(**table))
        except ValidationError as err:
            raise DataError(path, describe_validation_error(err, within=(f"sites[{i}]",))) from err
    return specs


# ------------------------------------------------------------------------------------ disjoint sites
MIN_SLICE_GAP = 2  # slices left unused between two sites' ranges of one case


class SiteOverlapError(ValueError):
    """Two sites would draw the same pixels (or neighbouring slices) of one case."""


def check_disjoint(specs: list[SiteSpec]) -> None:
    """Refuse two sites that draw the same case of the same dataset unless their slice ranges lie at
    least `MIN_SLICE_GAP` slices apart or their pixel boxes do not intersect. No `cases` means every case,
    no `slices` every slice, no `box` the whole image. The error names both sites and the overlap."""
    for a, b in combinations(specs, 2):
        if a.dataset != b.dataset:
            continue
        if a.cases is not None and b.cases is not None:
            shared = sorted(set(a.cases) & set(b.cases))
            if not shared:
                continue
            what = f"case{'s' if len(shared) > 1 else ''} {', '.join(shared)}"
        else:
            named = a.cases if a.cases is not None else b.cases
            what = "every case" if named is None else f"case{'s' if len(named) > 1 else ''} {', '.join(named)}"
        if _slices_apart(a.slices, b.slices, MIN_SLICE_GAP) or _boxes_apart(a.box, b.box):
            continue
        raise SiteOverlapError(
            f"sites {a.name} and {b.name} overlap: both draw {what} of {a.dataset}, "
            f"{_describe_region(a)} and {_describe_region(b)}; give sites of one case slice ranges at least "
            f"{MIN_SLICE_GAP} slices apart (slices = [lo, hi]) or disjoint pixel boxes (box = [[x0, x1], [y0, y1]])")


def _slices_apart(a, b, min_gap: int) -> bool:
    if a is None or b is None:
        return False
    gap = max(b[0] - a[1], a[0] - b[1])  # slices strictly between the two half-open ranges
    return gap >= min_gap


def _boxes_apart(a, b) -> bool:
    if a is None or b is None:
        return False
    return any(ha <= lb or hb <= la for (la, ha), (lb, hb) in zip(a, b))


def _describe_region(spec: SiteSpec) -> str:
    slices = "every slice" if spec.slices is None else f"slices {spec.slices[0]}-{spec.slices[1] - 1}"
    box = "the whole image" if spec.box is None else "box " + " x ".join(f"{lo}-{hi - 1}" for lo, hi in spec.box)
    return f"{spec.name}: {slices}, {box}"


def _region(case: Case, spec: SiteSpec) -> Case:
    """The part of a case a site may use: its slice range (masks cleared outside it) and its pixel
    box (image and masks cropped to it; objects the box cuts are left out)."""
    if spec.slices is None and spec.box is None:
        return case
    image, masks = case.image, [(o, o.mask) for o in case.objects]
    if spec.slices is not None:
        if case.ndim < 3:
            raise DataError(spec.dataset, f"site {spec.name}: slices applies to volumes; case {case.case_id} is {case.ndim}D")
        lo, hi = spec.slices
        if lo >= case.spatial_shape[-1]:
            raise DataError(spec.dataset, f"site {spec.name}: slices {list(spec.slices)} lie past the "
                            f"{case.spatial_shape[-1]} slices of case {case.case_id}")
        keep = np.zeros(case.spatial_shape[-1], bool)
        keep[lo:hi] = True
        masks = [(o, m & keep) for o, m in masks]
    if spec.box is not None:
        in_plane = case.ndim - 1 if case.ndim >= 3 else case.ndim
        if len(spec.box) > in_plane:
            raise DataError(spec.dataset, f"site {spec.name}: box has {len(spec.box)} axes; case {case.case_id} "
                            f"has {in_plane} besides the slicing axis")
        window = tuple(slice(lo, hi) for lo, hi in spec.box)
        image = np.ascontiguousarray(image[(slice(None), *window)])
        masks = [(o, np.ascontiguousarray(m[window])) for o, m in masks if m[window].sum() == m.sum()]
    objects = [LabelledObject(o.name, o.label, m, o.derived) for o, m in masks if m.any()]
    return replace(case, image=image, objects=objects)


def _select_cases(data: Dataset, spec: SiteSpec) -> list[Case]:
    cases = data.cases
    if spec.cases is not None:
        known = {c.case_id for c in cases}
        missing = [c for c in spec.cases if c not in known]
        if missing:
            raise DataError(spec.dataset, f"site {spec.name}: no cases {missing}; cases are {sorted(known)}")
        cases = [c for c in cases if c.case_id in spec.cases]
    if spec.slices is not None or spec.box is not None:
        cases = [_region(c, spec) for c in usable(cases)]
        if not any(c.objects for c in cases):
            raise DataError(spec.dataset, f"site {spec.name}: no whole object lies within "
                            f"{_describe_region(spec).split(': ', 1)[1]}")
    if spec.objects is not None:
        cases = [c.keep_objects([o for o in c.objects if _wanted(o.name, spec.objects)]) for c in usable(cases)]
        if not any(c.objects for c in cases):
            raise DataError(spec.dataset, f"site {spec.name}: no object matches {spec.objects}")
    return cases


def _wanted(object_name: str, patterns: list[str]) -> bool:
    base = object_name.split("#")[0]  # components of a split object keep their parent's name
    return any(fnmatch.fnmatchcase(base, p) for p in patterns)
