"""MONAI Label's label work on the desk: `infer` brings a user's sessions to a client's points (and
box), `save_upload` puts a client's final label file into the cache through the sessions' accept.

The routes (`monailabel`) parse the request; this module owns what happens to the sessions and the
cache. Points arrive typed (`validation.InferParams`); the desk places them in the image.
"""

from __future__ import annotations

import hashlib
import time
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from fedpoint.client.service.desk import AnnotationDesk, request_key
from fedpoint.client.service.images import LoadedImage
from fedpoint.client.service.sessions import OpenSession
from fedpoint.client.service.uploads import is_dicom, read_label, seg_label
from fedpoint.client.session import InputError
from fedpoint.shared.clicks import Box, Click

if TYPE_CHECKING:  # the state hands it over
    from fedpoint.client.service.volumes import VolumeOperations


@dataclass
class Inference:
    """What `/infer` answers with: the user's label map of the structure, its params, the image's grid."""
    label: np.ndarray
    params: dict
    affine: np.ndarray


class LabelOperations:
    def __init__(self, desk: AnnotationDesk, volumes: "VolumeOperations | None" = None):
        self.desk, self.volumes = desk, volumes

    # ---------------------------------------------------------------------------------- infer
    def infer(self, image_id: str, user: str, foreground: list, background: list,
              structure: str | None = None, roi: list | None = None, roi_slice: int | None = None,
              route: str | None = None) -> Inference:
        """Bring the user's sessions on this image to exactly these points (and box).

        Clients send every point each time. Points the session already has are kept (no repeated
        update); a point that disappeared undoes back to before it; new points are clicked in order.
        `roi` is a box as MONAI Label's SAM2 integration sends it, [x0, y0, x1, y1] (end exclusive;
        `roi_slice` its slice on a volume annotated slice by slice) or [x0, y0, z0, x1, y1, z1]; it
        starts its session, and a changed box starts the session again. Every point and the box are
        placed in the image before any session changes. On a volume, `route` (`volumes.ROUTES`;
        default the site's) picks how: `propagate` is `VolumeOperations.infer`.
        """
        desk = self.desk
        loaded = desk.load(image_id)
        structure = desk.structure(structure)
        _check_prompt_count(len(foreground) + len(background), roi is not None, desk.config.max_points)
        if roi is not None and len(roi) not in (4, 6):
            raise InputError(f"params.roi: {len(roi)} numbers; give [x0, y0, x1, y1] or [x0, y0, z0, x1, y1, z1]")
        if self.volumes is not None and (route is not None or loaded.ndim == 3):
            if self.volumes.route_for(loaded, route, "params.route") == "propagate":
                label, params = self.volumes.infer(loaded, user, structure, foreground, background, roi, roi_slice)
                return Inference(label, params, loaded.affine)
        groups, boxes = self._place(loaded, foreground, background, roi, roi_slice)
        t0 = time.perf_counter()
        for z, wanted in groups.items():
            _sync(desk.session(loaded, user, z, structure), wanted, boxes.get(z))
        label = self.label_volume(loaded, user, structure)
        desk.audit.record(user, "infer", image_id, foreground=len(foreground), background=len(background),
                          box=roi is not None)
        params = {"label_names": {structure: desk.config.label_values[structure]}, "structure": structure,
                  "latencies": {"total": round(time.perf_counter() - t0, 4)},
                  "slices": [z for z in groups if z is not None], "adapter_version": desk.slot(structure).model.version}
        return Inference(label, params, loaded.affine)

    def _place(self, loaded: LoadedImage, foreground: list, background: list, roi: list | None,
               roi_slice: int | None) -> tuple[dict[int | None, list[Click]], dict[int | None, Box]]:
        """The prompts grouped by the session (slice) they land in: clicks in order, and the box."""
        groups: dict[int | None, list[Click]] = {}
        boxes: dict[int | None, Box] = {}
        if roi is not None:
            half = len(roi) // 2
            lo, hi = list(roi[:half]), [v - 1 for v in roi[half:]]  # MONAI Label's roi ends are exclusive
            z, lo_i, hi_i = self.desk.locate_box(loaded, lo, hi, roi_slice, field="params.roi")
            boxes[z] = Box(lo_i, hi_i)
            groups.setdefault(z, [])
        for points, positive in ((foreground, True), (background, False)):
            for point in points:
                z, local = self.desk.locate(loaded, point)
                groups.setdefault(z, []).append(Click(local, positive))
        return groups, boxes

    def label_volume(self, loaded: LoadedImage, user: str, structure: str) -> np.ndarray:
        """The user's open sessions of one structure as a label map (the structure's value inside)."""
        label = np.zeros(loaded.shape, dtype=np.uint8)
        value = self.desk.config.label_values[structure]
        for entry in self.desk.sessions.of_user(loaded.id, user, structure):
            mask = entry.session.mask
            if entry.slice is None:
                label[mask] = value
            else:
                label[..., entry.slice][mask] = value
        return label

    # ---------------------------------------------------------------------------------- save
    def save_upload(self, image_id: str, user: str, data: bytes, filename: str | None, label_info: list | None = None,
                    request_id: str | None = None) -> dict:
        """A label file from a client (NIfTI, NRRD, PNG, NPY, or a DICOM-SEG on a DICOM image), read
        within the site's bounds on the image's grid, then `save_label`."""
        desk = self.desk
        loaded = desk.load(image_id)
        config = desk.config
        if is_dicom(data, filename):
            array, values = seg_label(data, loaded, config.label_values, config.max_decoded_bytes)
        else:
            array = read_label(data, filename or "label.nii.gz", loaded.shape, config.max_decoded_bytes, loaded.affine)
            values = label_values(label_info, config.label_values)
        return self.save_label(loaded, user, array, values, request_id)

    def save_label(self, loaded: LoadedImage, user: str, label: np.ndarray, values: dict[str, int | None],
                   request_id: str | None = None) -> dict:
        """See `_save_label`; `values` maps each structure to its value in `label` (None: any
        non-zero value). Idempotent: the key is the client's `request_id`, else a hash of the
        label; a retried save returns the first one's cases (`duplicate: true`) and adds nothing."""
        desk = self.desk
        values = {desk.structure(name): value for name, value in values.items()}
        if request_id is None:
            digest = hashlib.sha256(np.ascontiguousarray(label).tobytes())
            digest.update(repr((label.shape, sorted(values.items()))).encode())
            request_id = "sha256-" + digest.hexdigest()[:32]
        key = request_key(loaded.id, user, request_id)
        with desk.saving(loaded.id, user):
            if key in desk.requests:
                return {"cases": list(desk.requests[key]), "duplicate": True}
            result = self._save_label(loaded, user, label, values, key)
        problems = result.pop("after_effects", []) + desk.audit.record(user, "save_label", loaded.id, cases=result["cases"],
                                                                        structures=sorted(values))
        return {**result, **({"after_effects": problems} if problems else {})}

    def _save_label(self, loaded: LoadedImage, user: str, label: np.ndarray, values: dict[str, int | None],
                    key: str) -> dict:
        """A final label from a client: each structure's annotated parts into the cache through a
        session accept, all in one cache write.

        The user's open session supplies the first click for the post-interaction update; a label
        made without clicks here gets a first click at its deepest point (`SiteEngine.accept`). A
        volume on a 2D model adds the slices this user clicked on, then the largest others, up to
        `max_label_slices` (per structure).
        """
        parts = []
        for structure, value in values.items():
            mask = label == value if value is not None else label > 0
            if mask.any():
                parts += self._label_parts(loaded, user, structure, mask)
        if not parts:
            raise InputError(f"the label is empty for {', '.join(values)}: nothing to save")
        names, problems = self._accept_labels(loaded, user, parts, key)
        return {"cases": names, **({"after_effects": problems} if problems else {})}

    def _label_parts(self, loaded: LoadedImage, user: str, structure: str, mask: np.ndarray) -> list[tuple]:
        desk = self.desk
        if not desk.sliced(loaded):
            return [(None, structure, mask)]
        area = mask.reshape(-1, mask.shape[-1]).sum(axis=0)
        mine = desk.sessions.of_user(loaded.id, user, structure)
        clicked = [e.slice for e in mine if area[e.slice] > 0]
        if self.volumes is not None:  # the slices a person worked on in a propagated volume count as clicked
            clicked += [z for z in self.volumes.user_slices(loaded.id, user, structure) if area[z] > 0 and z not in clicked]
            self.volumes.close(loaded.id, user, structure)
        largest = [int(z) for z in np.argsort(-area, kind="stable") if area[z] > 0 and int(z) not in clicked]
        chosen = (clicked + largest)[: desk.config.max_label_slices]
        for entry in mine:
            if entry.slice not in chosen:
                desk.sessions.close(entry)
        return [(z, structure, mask[..., z]) for z in sorted(chosen)]

    def _accept_labels(self, loaded: LoadedImage, user: str, parts: list[tuple[int | None, str, np.ndarray]],
                       key: str) -> tuple[list[str], list[str]]:
        """Each part's session accepts its mask (post update), then all parts land in the cache at once."""
        desk = self.desk
        accepted = []
        for z, structure, mask in parts:
            entry = desk.session(loaded, user, z, structure)
            with entry.lock:
                final = desk.finish(entry, mask, f"{loaded.id} by {user!r}: slice {z} ({structure}) was accepted by "
                                                 "another request meanwhile")
            accepted.append((entry, final))
        return desk.store_cases(accepted, key)


def _check_prompt_count(points: int, box: bool, max_points: int) -> None:
    if points == 0 and not box:
        raise InputError("give at least one foreground or background point, or a box (params.roi)")
    if points > max_points:
        raise InputError(f"{points} points; at most {max_points} are accepted")


def _sync(entry: OpenSession, wanted: list[Click], box: Box | None = None) -> None:
    """The session's box and clicks become exactly `box` and `wanted`: a different box starts the
    session again; of the clicks the common prefix stays, the rest is undone, then clicked."""
    with entry.lock:
        session = entry.session
        if box != session.drawn_box:
            while session.steps:
                session.undo()
            if box is not None:
                session.box(box.lo, box.hi)
        remaining = Counter(wanted)
        keep = 0
        for click in session.clicks:
            if remaining[click] <= 0:
                break
            remaining[click] -= 1
            keep += 1
        for _ in range(len(session.clicks) - keep):
            session.undo()
        for click in wanted:
            if remaining[click] > 0:
                remaining[click] -= 1
                session.click(click.point, click.positive)


def label_values(label_info: list | None, structures: dict[str, int]) -> dict[str, int | None]:
    """Which value of an uploaded label map is which of the site's structures.

    With `label_info` (3D Slicer sends one entry per segment, each with `name` and `idx`), each of
    our structures it names takes its `idx`, and segments we do not label are ignored; naming none
    of ours is an error. Without it, one structure takes every non-zero voxel and several take
    1, 2, ... in site.toml order."""
    if label_info:
        named = {item.name: item.idx for item in label_info if item.name in structures}
        if 0 in named.values():
            zero = next(name for name, idx in named.items() if idx == 0)
            raise InputError(f"label_info gives {zero!r} idx 0, the background value of a label map; give its own value")
        if not named:
            given = ", ".join(repr(item.name) for item in label_info)
            raise InputError(f"label_info names {given}; this site labels {', '.join(structures)}")
        return {name: (idx if idx is not None else structures[name]) for name, idx in named.items()}
    if len(structures) == 1:
        return {next(iter(structures)): None}
    return dict(structures)
