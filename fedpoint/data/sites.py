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
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from fedpoint.data.load import load_dataset
from fedpoint.data.samples import Sample, make_samples
from fedpoint.data.shifts import apply_shift, check_shift
from fedpoint.data.types import Case, DataError, Dataset

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
    """Load the site's data, cut samples, order them into a stream and apply the site's shift."""
    data = dataset if dataset is not None else load_dataset(spec.dataset, data_dir=data_dir, strict=strict)
    cases = _select_cases(data, spec)
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
    return Site(spec.name, modality, spec.shift, samples, spec, skipped=list(data.skipped))


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
            problems = "; ".join(
                f"sites[{i}].{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in err.errors()
            )
            raise DataError(path, problems) from err
    return specs


def _select_cases(data: Dataset, spec: SiteSpec) -> list[Case]:
    cases = data.cases
    if spec.cases is not None:
        known = {c.case_id for c in cases}
        missing = [c for c in spec.cases if c not in known]
        if missing:
            raise DataError(spec.dataset, f"site {spec.name}: no cases {missing}; cases are {sorted(known)}")
        cases = [c for c in cases if c.case_id in spec.cases]
    if spec.objects is not None:
        cases = [replace(c, objects=[o for o in c.objects if _wanted(o.name, spec.objects)]) for c in cases]
        if not any(c.objects for c in cases):
            raise DataError(spec.dataset, f"site {spec.name}: no object matches {spec.objects}")
    return cases


def _wanted(object_name: str, patterns: list[str]) -> bool:
    base = object_name.split("#")[0]  # components of a split object keep their parent's name
    return any(fnmatch.fnmatchcase(base, p) for p in patterns)
