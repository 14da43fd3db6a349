"""On-disk form of a prepared case: one compressed .npz holding the image, its label maps and a
small JSON header (their sha256 for the manifest is `shared.fileio.sha256_file`).

Objects are stored as (label map, label value) pairs rather than one boolean volume each, so a
116-region atlas or 125 nuclei cost one integer array, and overlapping objects (brain and grey
matter) just live in different maps.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedpoint.data.types import Case, DataError, LabelledObject
from fedpoint.shared.fileio import write_atomic_via


@dataclass
class ObjectRecord:
    name: str
    map: str  # which label map holds it
    label: int
    derived: bool = False


def write_case(
    path: Path,
    *,
    case_id: str,
    image: np.ndarray,
    spacing: tuple[float, ...],
    modality: str,
    source: str,
    label_maps: dict[str, np.ndarray],
    objects: list[ObjectRecord],
) -> dict:
    """Write one case; `image` is (C, *spatial) in its native dtype. Returns a summary for the manifest."""
    spatial = tuple(image.shape[1:])
    for map_name, label_map in label_maps.items():
        if tuple(label_map.shape) != spatial:
            raise ValueError(f"{case_id}: label map {map_name} has shape {label_map.shape}, image {spatial}")
    header = {
        "case_id": case_id,
        "modality": modality,
        "source": source,
        "spacing": [float(s) for s in spacing],
        "objects": [vars(o) for o in objects],
    }
    arrays = {f"map_{name}": _smallest_uint(m) for name, m in label_maps.items()}
    write_atomic_via(path, lambda f: np.savez_compressed(f, image=image, header=np.array(json.dumps(header)), **arrays))
    return {
        "case_id": case_id,
        "shape": list(spatial),
        "spacing": header["spacing"],
        "objects": len(objects),
        "object_names": [o.name for o in objects],
        "derived": [o.derived for o in objects],
    }


def load_case_file(path: Path) -> Case:
    try:
        with np.load(path, allow_pickle=False) as npz:
            header = json.loads(str(npz["header"]))
            image = npz["image"].astype(np.float32)
            maps = {key[4:]: npz[key] for key in npz.files if key.startswith("map_")}
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as err:
        raise DataError(path, f"cannot read prepared case ({err}); run `fedpoint data prepare` to rebuild") from err
    objects = [
        LabelledObject(o["name"], o["label"], derived=o["derived"], label_map=maps[o["map"]])
        for o in header["objects"]
    ]
    return Case(
        case_id=header["case_id"],
        image=image,
        spacing=tuple(header["spacing"]),
        modality=header["modality"],
        objects=objects,
        source=header["source"],
    )




def _smallest_uint(label_map: np.ndarray) -> np.ndarray:
    label_map = np.asarray(label_map)
    top = int(label_map.max()) if label_map.size else 0
    dtype = np.uint8 if top < 256 else np.uint16 if top < 65536 else np.uint32
    return label_map.astype(dtype)
