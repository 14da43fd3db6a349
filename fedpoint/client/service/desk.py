"""The annotation desk: the one owner of the annotation operations the routes call, with the
sessions' geometry, accept-to-cache and the cache index.

Sessions are per (image, user, slice, structure): a 3D volume on a 2D model is annotated slice by
slice (a click's z picks the slice, and an accepted slice becomes one 2D case in the cache, which
is what a 2D model trains on); a 3D model annotates the whole volume. Sessions open and accept
through the engine (`SiteEngine.open` / `SiteEngine.accept`), like everywhere else; the desk
writes the accepted cases itself, so a multi-slice save lands all at once (`journal`).

With `labels` each structure is a task of its own (`SiteServiceConfig.task_of`): its sessions adapt
its adapter, its accepted cases go into its task store (`SiteStore.for_task`, `tasks/<task>/`) and
its episode scheduler is told, so its episodes train on its cases only. The cache index and the
accepted label of an image are read from every store (`case_stores`): each structure's, and the
root's, which holds the site's cases without `labels` and, on a site that set `labels` before
structures had stores of their own, the cases accepted then (read and counted, never moved).

The desk is the one owner of the operations the routes call: each takes what a request says
(image id, user, the page's slice, structure, typed points) and returns everything its reply needs
(`SessionView`), so a route neither loads the image nor looks the session up again. The session key
is built in one place (`AnnotationDesk.key`).

Accepts from several people at once all land: each runs its post-interaction update under the
model's lock, then `SiteStore.add_case` writes under the store's file lock and never overwrites
(a second accept of the same case id is kept beside the first, suffixed).
"""

from __future__ import annotations

import json
import logging
import threading
import time
import zlib
from dataclasses import dataclass

import numpy as np

from fedpoint.client.engine import SiteEngine
from fedpoint.client.service.compute import FairCompute
from fedpoint.client.service.datastore import Datastore, LabelSink
from fedpoint.client.service.site_config import SiteServiceConfig
from fedpoint.client.service.images import ImageError, LoadedImage
from fedpoint.client.service.journal import write_cases
from fedpoint.client.service.sessions import OpenSession, SessionKey, SessionRegistry
from fedpoint.client.service.training import Training
from fedpoint.client.service.users import AuditLog
from fedpoint.client.session import InputError
from fedpoint.client.site_store import SiteStore
from fedpoint.shared.clicks import Box, Click, check_box, check_point
from fedpoint.shared.tasks import DEFAULT_TASK

log = logging.getLogger("fedpoint.service")
SAVE_WAIT_S = 60.0


class Conflict(RuntimeError):
    """Another request holds what this one needs (409); the message says who."""


@dataclass
class SessionView:
    """A session as a reply shows it, read under the session's lock by the operation that changed it."""
    structure: str
    slice: int | None  # the session's slice of a volume annotated slice by slice; None: the whole image
    shown: int  # the slice the page shows
    mask: np.ndarray  # the session's mask (2D, or 3D for a 3D model); a 2D zero mask without a session
    clicks: list[Click]
    box: Box | None  # the drawn box, `hi` exclusive
    steps: int = 0  # the box and the clicks
    seconds: float = 0.0  # the click or box on the model's thread, as the client waited for it
    predict_ms: float = 0.0
    update_ms: float = 0.0
    problems: list[str] | None = None  # what failed after the request took effect (the audit line)

    @property
    def plane(self) -> np.ndarray:
        """The 2D mask of the shown slice."""
        return self.mask if self.mask.ndim == 2 else self.mask[..., self.shown]

    @property
    def mask_slices(self) -> list[int] | None:
        """For a 3D session mask: the slices (last axis) it holds voxels on; None for 2D."""
        if self.mask.ndim != 3:
            return None
        return [int(z) for z in np.flatnonzero(self.mask.any(axis=(0, 1)))]


@dataclass(frozen=True)
class CachedCase:
    """An accepted case in the desk's index: the task whose store holds it, and its folder name there."""
    task: str
    name: str


def case_stores(config: SiteServiceConfig, engine: SiteEngine) -> dict[str, SiteStore]:
    """Every store that holds accepted cases, by task: the root (the default task) and each
    structure's (the engine's slot, opened here: the same store object its scheduler writes with)."""
    stores = {DEFAULT_TASK: engine.root_store}
    for structure in config.structures:
        slot = engine.slot(config.task_of(structure))
        stores[slot.task] = slot.store
    return stores


def request_key(image_id: str, user: str, request_id: str) -> str:
    """The idempotency key of a save: a retry with the same request id by the same user on the same image."""
    return f"{image_id}|{user}|{request_id}"


class AnnotationDesk:
    def __init__(self, config: SiteServiceConfig, engine: SiteEngine, images: Datastore, pacs, sessions: SessionRegistry,
                 audit: AuditLog, training: Training):
        self.config, self.engine, self.images, self.pacs = config, engine, images, pacs
        self.sessions, self.audit, self.training = sessions, audit, training
        self.store: SiteStore = engine.root_store  # the root: the journals of multi-case saves are kept here
        self.stores = case_stores(config, engine)
        self.model_cfg = engine.model.model_cfg
        self._compute = FairCompute("fedpoint-model")  # one model thread, users served in turn
        self.requests: dict[str, list[str]] = {}  # idempotency key -> the cases its request saved
        self.cases_by_image = self._index_cache()
        self.accepts = 0
        self.last_click_ms: float | None = None
        self._lock = threading.Lock()
        self._saving: dict[tuple[str, str], tuple[threading.Lock, list[str]]] = {}

    def close(self) -> None:
        self._compute.shutdown(wait=True)

    # ---------------------------------------------------------------------------------- cache index
    def _index_cache(self) -> dict[str, list[CachedCase]]:
        """image id -> its cached cases, from every store, in the order they were accepted."""
        found = []
        for task, store in self.stores.items():
            for case_id in store.case_ids():
                try:
                    meta = _read_meta(store, case_id)
                except (OSError, ValueError) as err:
                    store.quarantine_case(case_id, f"cache/{case_id}/meta.json: {type(err).__name__}: {err}")
                    continue
                found.append((float(meta.get("accepted_at", 0.0)), CachedCase(task, case_id), meta))
        index: dict[str, list[CachedCase]] = {}
        for _, case, meta in sorted(found, key=lambda item: item[0]):
            index.setdefault(str(meta.get("image", case.name)), []).append(case)
            if isinstance(meta.get("request"), str):
                self.requests.setdefault(meta["request"], []).append(case.name)
        return index

    def cache_size(self) -> int:
        with self._lock:
            return sum(len(v) for v in self.cases_by_image.values())

    def unlabelled(self) -> list[str]:
        """Images still to annotate (an image known to be unreadable is skipped by every next-image choice)."""
        unreadable = self.images.unreadable()
        return [i for i in self.images.ids() if i not in self.cases_by_image and i not in unreadable]

    def stored_label(self, loaded: LoadedImage) -> np.ndarray | None:
        """The accepted label of an image, assembled from its cached cases in every store (latest
        wins): each structure's voxels hold its value (1, 2, ... in site.toml order)."""
        names = self.cases_by_image.get(loaded.id, [])
        if not names:
            return None
        label = np.zeros(loaded.shape, dtype=np.uint8)
        for case in list(names):
            try:
                _, mask, meta = self.stores[case.task].load_case(case.name)
            except KeyError as err:  # unreadable: the store quarantined it; the other cases still count
                log.warning("%s", err.args[0] if err.args else err)
                with self._lock:
                    if case in names:
                        names.remove(case)
                continue
            # a case from before `labels` was set (no structure in its meta) is the first structure
            value = self.config.label_values.get(meta.get("structure"), 1)
            target = label if meta.get("slice") is None else label[..., int(meta["slice"])]
            target[target == value] = 0  # a later accept of this structure replaces the earlier one
            target[np.asarray(mask, dtype=bool).reshape(target.shape)] = value
        return label

    # ---------------------------------------------------------------------------------- geometry
    def sliced(self, loaded: LoadedImage) -> bool:
        """A volume on a 2D model: annotated one slice (last axis) at a time."""
        return self.model_cfg.spatial_dims == 2 and loaded.ndim == 3

    def load(self, image_id: str) -> LoadedImage:
        loaded = self.images.load(image_id)
        if self.model_cfg.spatial_dims == 3 and loaded.ndim == 2:
            raise ImageError(f"{image_id} is a 2D image; this site's model is 3D")
        return loaded

    def locate(self, loaded: LoadedImage, point, slice_index: int | None = None) -> tuple[int | None, tuple[int, ...]]:
        """(slice or None, the point in the session's image), refusing a point outside the image. The
        point's form (2 or 3 finite numbers in range) was checked once at the edge (`validation.Point`);
        here it meets the image."""
        point = list(point)
        if loaded.ndim == 2 and len(point) == 3:
            # MONAI Label's client and 3D Slicer send [x, y, 0] for a 2D image
            if point[2] != 0:
                raise InputError(f"point {point} has z = {point[2]}, but {loaded.id} is a 2D image {loaded.shape}: "
                                 "send [x, y] or [x, y, 0]")
            point = point[:2]
        if self.sliced(loaded) and len(point) == 2 and slice_index is not None:
            point.append(slice_index)
        try:
            index = check_point(point, loaded.shape)
        except ValueError as err:
            raise InputError(f"{err} (points are [x, y] or [x, y, z] in image index space)") from None
        return (index[-1], index[:-1]) if self.sliced(loaded) else (None, index)

    def locate_box(self, loaded: LoadedImage, lo, hi, slice_index: int | None = None,
                   field: str = "box") -> tuple[int | None, tuple[int, ...], tuple[int, ...]]:
        """(slice or None, lo, hi) of a box in the session's image, `hi` exclusive; `lo` and `hi` are the
        box's first and last voxel, [x, y] or [x, y, z]. On a volume that is annotated slice by slice the
        box lies on one slice. Refused, naming `field`, when outside, inverted or of the wrong dimension."""
        lo, hi = list(lo), list(hi)
        if loaded.ndim == 2 and len(lo) == len(hi) == 3 and lo[2] == hi[2] == 0:
            lo, hi = lo[:2], hi[:2]  # [x, y, 0] for a 2D image, as clients send points
        sliced = self.sliced(loaded)
        if sliced and len(lo) == len(hi) == 3:
            if lo[2] != hi[2]:
                raise InputError(f"{field}: from z = {lo[2]} to z = {hi[2]}: this site annotates {loaded.id} slice by "
                                 "slice, so a box lies on one slice")
            slice_index = int(lo[2])
            lo, hi = lo[:2], hi[:2]
        if sliced:
            if slice_index is None:
                raise InputError(f"{field}: {loaded.id} is a volume annotated slice by slice: give the slice")
            if not 0 <= slice_index < loaded.shape[-1]:
                raise InputError(f"{field}: slice {slice_index} is outside {loaded.id} ({loaded.shape[-1]} slices)")
            shape = loaded.shape[:-1]
        else:
            shape = loaded.shape
        try:
            box = check_box(lo, [h + 1 for h in hi], shape, field)
        except (ValueError, TypeError) as err:
            raise InputError(f"{err} (corners are [x, y] or [x, y, z] in image index space)") from None
        return (slice_index if sliced else None), box.lo, box.hi

    def page_slice(self, loaded: LoadedImage, slice_index: int | None) -> int | None:
        """The session's slice for the slice a page shows: it only counts on a volume annotated slice by slice."""
        return slice_index if self.sliced(loaded) else None

    def session_image(self, loaded: LoadedImage, slice_index: int | None) -> np.ndarray:
        if slice_index is None:
            return loaded.model_input
        return np.ascontiguousarray(loaded.model_input[..., slice_index])

    @staticmethod
    def slice_of(mask: np.ndarray, slice_index: int) -> np.ndarray:
        """The 2D mask shown for a slice: the session's own mask, or a slice of a 3D one."""
        return mask if mask.ndim == 2 else mask[..., slice_index]

    # ---------------------------------------------------------------------------------- sessions
    def structure(self, name: str | None) -> str:
        """A structure of this site (None: the first); an unknown name is a clear 422."""
        names = self.config.structures
        if name is None:
            return names[0]
        if name not in names:
            raise InputError(f"unknown structure {name!r}; this site labels {', '.join(names)}")
        return name

    def key(self, image_id: str, user: str, slice_index: int | None, structure: str | None) -> SessionKey:
        """The one place a session's key is made (the structure resolved: None is the first)."""
        return SessionKey(image_id, user, slice_index, self.structure(structure))

    def session(self, loaded: LoadedImage, user: str, slice_index: int | None, structure: str | None = None) -> OpenSession:
        """The user's session of this image, slice and structure, opened on first use."""
        key = self.key(loaded.id, user, slice_index, structure)
        case = loaded.id if slice_index is None else f"{loaded.id}.z{slice_index:04d}"
        if len(self.config.structures) > 1:  # one cache entry per structure
            case = f"{case}.{key.structure}"
        # A 3D model measures its focus window in mm; slices on a 2D model stay in pixels.
        spacing = loaded.spacing if self.model_cfg.spatial_dims == 3 and loaded.ndim == 3 else None
        return self.sessions.get_or_open(
            key, lambda: self.engine.open(self.session_image(loaded, slice_index), case,
                                          seed=zlib.crc32(repr(tuple(key)).encode()), spacing=spacing,
                                          into_cache=False, task=self.config.task_of(key.structure)))

    def slot(self, structure: str):
        """The engine's slot (adapter, store, scheduler) a structure's annotations go to."""
        return self.engine.slot(self.config.task_of(structure))

    def view(self, image_id: str, user: str, slice_index: int | None, structure: str | None = None) -> SessionView:
        """The user's session as the page shows it on `slice_index` (an empty one where none is open)."""
        loaded = self.load(image_id)
        z, shown = self.page_slice(loaded, slice_index), slice_index or 0
        key = self.key(loaded.id, user, z, structure)
        entry = self.sessions.get(key)
        if entry is None:
            return SessionView(key.structure, z, shown, np.zeros(loaded.shape[:2], dtype=bool), [], None)
        return _view(entry, entry.session.mask, shown)  # read as it stands: a click under way is not waited for

    def click(self, image_id: str, user: str, point, positive: bool, slice_index: int | None = None,
              structure: str | None = None) -> SessionView:
        """A click (a typed point, image index space) on the user's session, opened on first use."""
        structure = self.structure(structure)
        loaded = self.load(image_id)
        z, local = self.locate(loaded, point, slice_index)
        entry = self.session(loaded, user, z, structure)
        shown = z if z is not None else (local[2] if len(local) == 3 else 0)  # a 3D model: the click's own slice
        with entry.lock:
            if len(entry.session.steps) >= self.config.max_points:
                raise InputError(f"a session takes at most {self.config.max_points} clicks; accept or undo")
            view = self._interact(entry, user, shown, entry.session.click, local, positive)
        view.problems = self.audit.record(user, "click", image_id, slice=z, structure=entry.structure,
                                          point=list(map(int, local)), positive=bool(positive), clicks=view.steps)
        return view

    def _interact(self, entry: OpenSession, user: str, shown: int, action, *args) -> SessionView:
        """One click or box of a session (the caller holds `entry.lock`), timed, on the model's thread:
        torch's OpenMP pool belongs to the calling thread, and the web server's worker threads change
        from request to request (a new pool each time doubled the click latency over HTTP)."""
        t0 = time.perf_counter()
        mask = self._compute.submit(user, action, *args).result()
        seconds = time.perf_counter() - t0
        step = entry.session.steps[-1]
        self.last_click_ms = seconds * 1e3
        return _view(entry, mask, shown, seconds=seconds, predict_ms=step.predict_ms, update_ms=step.update_ms)

    def box(self, image_id: str, user: str, lo, hi, slice_index: int | None = None, structure: str | None = None,
            field: str = "box") -> SessionView:
        """Start (or redraw) a session's box; `lo` and `hi` are its first and last voxel."""
        structure = self.structure(structure)
        loaded = self.load(image_id)
        z, lo_i, hi_i = self.locate_box(loaded, lo, hi, slice_index, field)
        entry = self.session(loaded, user, z, structure)
        with entry.lock:
            view = self._interact(entry, user, z if z is not None else 0, entry.session.box, lo_i, hi_i)
        view.problems = self.audit.record(user, "box", image_id, slice=z, structure=entry.structure, lo=list(lo_i),
                                          hi=[int(h) - 1 for h in hi_i])
        return view

    def existing(self, loaded: LoadedImage, user: str, slice_index: int | None, structure: str | None = None) -> OpenSession:
        """The user's open session (`slice_index` the page's: it counts on a volume annotated slice by slice)."""
        z = self.page_slice(loaded, slice_index)
        entry = self.sessions.get(self.key(loaded.id, user, z, structure))
        if entry is None:
            raise LookupError(f"no open annotation of {loaded.id}" + (f" slice {z}" if z is not None else "")
                              + f" by {user!r}: click first")
        return entry

    def undo(self, image_id: str, user: str, slice_index: int | None, structure: str | None = None) -> SessionView:
        entry = self.existing(self.load(image_id), user, slice_index, structure)
        with entry.lock:
            view = _view(entry, entry.session.undo(), slice_index or 0)
        self.audit.record(user, "undo", image_id, slice=entry.slice, structure=entry.structure, clicks=view.steps)
        return view

    def discard(self, image_id: str, user: str, slice_index: int | None, structure: str | None = None) -> None:
        loaded = self.load(image_id)
        z = self.page_slice(loaded, slice_index)
        entry = self.sessions.get(self.key(loaded.id, user, z, structure))
        if entry is not None:
            self.sessions.close(entry)
            self.audit.record(user, "discard", image_id, slice=z, structure=entry.structure)

    # ---------------------------------------------------------------------------------- accept
    def finish(self, entry: OpenSession, mask: np.ndarray | None, taken: str) -> np.ndarray:
        """Accept one open session (the caller holds `entry.lock`) through the engine, then close it;
        `taken` is the 409's message when another request accepted it first."""
        if entry.session.accepted is not None:
            raise Conflict(taken)
        final = self.engine.accept(entry.session, mask)
        self.sessions.close(entry)
        return final

    def accept(self, entry: OpenSession, mask: np.ndarray | None = None, request: str | None = None) -> dict:
        """Post-interaction update, then into the cache; the session closes. Once the case is in the
        cache the reply says so, whatever fails after it (listed in `after_effects`)."""
        with entry.lock:
            final = self.finish(entry, mask, f"this annotation of {entry.image_id} by {entry.user!r} was already "
                                             "accepted by another request")
            names, problems = self.store_cases([(entry, final)], request)
        problems += self.audit.record(entry.user, "accept", entry.image_id, slice=entry.slice, structure=entry.structure,
                                      case=names[0], clicks=len(entry.session.steps), voxels=int(np.count_nonzero(final)))
        return {"case": names[0], "image": entry.image_id, "slice": entry.slice, "structure": entry.structure,
                "post_ms": round(entry.session.post_ms, 1), "cache_size": self.cache_size(),
                **({"after_effects": problems} if problems else {})}

    def accept_current(self, image_id: str, user: str, slice_index: int | None, request_id: str | None = None,
                       structure: str | None = None) -> dict:
        """Accept the user's open session (`slice_index` the page's); a retried request id answers its first reply's case."""
        loaded = self.load(image_id)
        structure = self.structure(structure)
        key = None if request_id is None else request_key(image_id, user, request_id)
        with self.saving(image_id, user):
            if key is not None and key in self.requests:
                names = self.requests[key]
                return {"case": names[0], "image": image_id, "slice": self.page_slice(loaded, slice_index),
                        "duplicate": True, "cache_size": self.cache_size()}
            return self.accept(self.existing(loaded, user, slice_index, structure), request=key)

    def saving(self, image_id: str, user: str):
        """One save (or accept) at a time per (image, user): a second waits, then sees the first's result;
        after SAVE_WAIT_S it gets a 409 that says who holds the image."""
        desk = self

        class _Held:
            def __enter__(self_):
                with desk._lock:
                    lock, holder = desk._saving.setdefault((image_id, user), (threading.Lock(), []))
                if not lock.acquire(timeout=SAVE_WAIT_S):
                    raise Conflict(f"{image_id} is being saved by {user!r} in another request; retry when it finishes")
                holder[:] = [threading.current_thread().name]
                self_.lock = lock

            def __exit__(self_, *exc):
                self_.lock.release()

        return _Held()

    def store_cases(self, parts: list[tuple[OpenSession, np.ndarray]], request: str | None) -> tuple[list[str], list[str]]:
        """Every part into its structure's cache, all or none (see `journal`); then the index, the SEG
        to a PACS, the adapter save and the structure's episode scheduler. Returns (case names, problems after the write):
        the cases are in the cache and indexed (so a retry with the same key is a duplicate), and a
        step after them that fails is logged and reported, never turned into an error reply."""
        cases, slots = [], [self.slot(entry.structure) for entry, _ in parts]
        for (entry, final), slot in zip(parts, slots):
            session = entry.session
            meta = {"image": entry.image_id, "slice": entry.slice, "structure": entry.structure, "user": entry.user,
                    "clicks": len(session.steps),
                    "post_ms": round(session.post_ms, 1), "site": self.config.site}
            if request is not None:
                meta["request"] = request
            cases.append((slot.store, session.case_id, session.image, final, meta))
        names = write_cases(self.store, cases)
        with self._lock:
            for (entry, _), slot, name in zip(parts, slots, names):
                self.cases_by_image.setdefault(entry.image_id, []).append(CachedCase(slot.task, name))
            if request is not None:
                self.requests[request] = list(names)
            every = self.config.save_adapter_every
            before, self.accepts = self.accepts, self.accepts + len(names)
            save = bool(every) and before // every != self.accepts // every
        steps = []
        if isinstance(self.images, LabelSink):  # a DICOM-SEG back to the PACS, in the background: a failure is logged
            steps.append(("the DICOM-SEG to the PACS",
                          lambda: self.images.write_back([entry.image_id for entry, _ in parts], self.stored_label)))
        structures = list(dict.fromkeys(entry.structure for entry, _ in parts))
        if save:  # the version carries its Adam state, so a restart continues the same optimizer
            for task in dict.fromkeys(slot.task for slot in slots):
                steps.append((f"the adapter version ({task})",
                              lambda task=task: self.engine.save_version({"source": "online", "case": names[-1]}, task=task)))
        for structure in structures:
            steps.append((f"the episode scheduler ({structure})", lambda s=structure: self.training.after_accept(s)))
        return names, [problem for what, step in steps if (problem := _after_effect(what, step, names))]


def _view(entry: OpenSession, mask: np.ndarray, shown: int, **timing) -> SessionView:
    """The session as it stands (the caller holds `entry.lock`), `mask` its current mask."""
    session = entry.session
    return SessionView(entry.structure, entry.slice, shown, mask, session.clicks, session.drawn_box, len(session.steps),
                       **timing)


def _after_effect(what: str, step, names: list[str]) -> str | None:
    """Run a step that follows a write the client is told about; a failure is logged and described."""
    try:
        step()
    except Exception as err:  # noqa: BLE001 - the cases are stored: say what did not follow, do not fail the reply
        log.error("after storing %s: %s failed (%s: %s)", ", ".join(names), what, type(err).__name__, err)
        return f"the case is stored; {what} failed ({type(err).__name__}: {str(err)[:200]}); the site's log has the details"
    return None


def _read_meta(store: SiteStore, case_id: str) -> dict:
    """A cached case's meta.json alone (load_case would read its arrays too)."""
    return json.loads((store.root / "cache" / case_id / "meta.json").read_text())
