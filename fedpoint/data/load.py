"""`load_dataset`: one entry point for built-in names and for folders in the user's own formats."""

from __future__ import annotations

from pathlib import Path

from fedpoint.data.builtin import BUILTIN_DATASETS, load_builtin
from fedpoint.data.types import DataError, Dataset


def load_dataset(spec: str | Path, *, data_dir: Path | None = None, strict: bool = False) -> Dataset:
    """A built-in dataset by name (prepared on first use), `dev-split` (the held-out images of the
    pre-training sources, for choosing defaults; `dev-split-large`: each of their slices' whole labelled
    region, a large structure; `dev-split:skimage-cell,pydicom-us`: some dev images only, by name;
    `dev-split-3d`: their volumes), or a folder: a Medical Segmentation
    Decathlon task, an nnU-Net v2 raw dataset, or a folder of image/label pairs.

    Non-strict: cases with problems are skipped and listed in `Dataset.skipped` as (file, reason).
    Strict: the first problem raises `DataError`.
    """
    if isinstance(spec, str) and spec in BUILTIN_DATASETS:
        return load_builtin(spec, data_dir)
    if isinstance(spec, str) and spec == "dev-split":  # the pre-training sources' held-out images
        from fedpoint.data.training import dev_dataset

        return dev_dataset(data_dir)
    if isinstance(spec, str) and spec.startswith("dev-split:"):  # ... of some dev images only, by name prefix
        from fedpoint.data.training import dev_dataset

        return dev_dataset(data_dir, only=tuple(n for n in spec.split(":", 1)[1].split(",") if n))
    if isinstance(spec, str) and spec == "dev-split-large":  # ... each slice's whole labelled region: large structures
        from fedpoint.data.training import dev_dataset

        return dev_dataset(data_dir, whole=True)
    if isinstance(spec, str) and spec == "dev-split-3d":  # ... their volumes, for a 3D base
        from fedpoint.data.training import dev_volumes

        return dev_volumes(data_dir)
    path = Path(spec).expanduser()
    if not path.exists():
        raise DataError(path, f"no such folder, and not a built-in dataset ({', '.join(BUILTIN_DATASETS)})")
    from fedpoint.data.readers import read_folder

    return read_folder(path, strict=strict)
