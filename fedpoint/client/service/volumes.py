"""Whole volumes in the site service: one annotation of a volume by a route, and its progress.

A volume is annotated by one of three routes (`route` in a request; the site's base decides which
it can run):

- `propagate` (a 2D base): a box or click on any slice is predicted with the 2D base and the site's
  2D adapters, then carried through the neighbouring slices (`fedpoint.client.propagation`); one
  session per (image, user, structure) holds one 3D mask. Its sessions live here.
- `3d` (a 3D base): one 3D prediction per click or box; the desk's own session (slice None).
- `slice` (a 2D base): one slice per session, as the desk always did (MONAI Label only; the page
  and `/api/sessions` use it directly).

The default is the measured better route the base can run (docs/engine.md, "Which route for
volumes"): `3d` on a 3D base; on a 2D base `propagate`, the volume route of a 2D base.

Propagation runs on the model's one compute thread like every click; `progress` (slices predicted
so far out of at most how many) is readable while it runs, without the session's lock, so a page
polls it beside the pending request. Accept stores every slice that holds the accepted 3D mask as
a 2D case (`<image>.z0042`, what the 2D base trains on), all in one cache write (`journal`),
through the desk's `store_cases` (index, PACS, adapter version, episode scheduler, as any accept);
the user slices go through the engine's accept first (the post-interaction update of the 2D
adapter), the propagated ones are stored as accepted without one.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from fedpoint.client.propagation import PropagationSession, VolumeInputError
from fedpoint.client.service.desk import Conflict
from fedpoint.client.service.images import LoadedImage
from fedpoint.client.service.sessions import OpenSession, SessionKey, SessionRegistry
from fedpoint.client.session import InputError
from fedpoint.shared.clicks import Click

if TYPE_CHECKING:
    from fedpoint.client.service.desk import AnnotationDesk

PROPAGATE, THREE_D, SLICE = "propagate", "3d", "slice"
ROUTES = (PROPAGATE, THREE_D, SLICE)


@dataclass
class Progress:
    """How far a volume's interaction is: `done` slices propagated to of at most `total` (up to the
    next user slice each way; propagation usually stops before, at the object's end)."""

    running: bool = False
    done: int = 0
    total: int = 0
    slice: int | None = None
    started: float = 0.0

    def start(self, total: int) -> None:
        self.running, self.done, self.total, self.slice, self.started = True, 0, total, None, time.monotonic()

    def tick(self, z: int) -> None:
        self.done, self.slice = self.done + 1, int(z)

    def as_dict(self) -> dict:
        return {"running": self.running, "done": self.done, "total": self.total, "slice": self.slice,
                "seconds": round(time.monotonic() - self.started, 3) if self.running else None}


@dataclass
class VolumeView:
    """A volume annotation as a client sees it: the 3D mask and the prompts on it."""

    route: str
    mask: np.ndarray  # bool, the volume's spatial shape
    clicks: list[dict]  # {"point": [x, y, z], "positive"}
    boxes: list[dict]  # {"lo": [x, y, z], "hi": [x, y, z]}: first and last voxel, on one slice
    user_slices: list[int]
    seconds: float = 0.0
    cpu_seconds: float = 0.0  # the service process's CPU time over the interaction (other load does not inflate it)
    predicted: int = 0  # slices the last interaction predicted
    problems: list[str] | None = None

    @property
    def mask_slices(self) -> list[int]:
        return [int(z) for z in np.flatnonzero(self.mask.any(axis=(0, 1)))]


@dataclass
class SliceCase:
    """A propagated slice of an accepted volume, stored as a 2D case without a session of its own
    (what `AnnotationDesk.store_cases` reads of a session: case id, image, steps, post time)."""

    case_id: str
    image: np.ndarray
    steps: tuple = ()
    post_ms: float = 0.0


class VolumeOperations:
    """The volume routes on the desk: open, click, box, undo, accept, discard, progress, infer."""

    def __init__(self, desk: "AnnotationDesk"):
        self.desk = desk
        self.sessions = SessionRegistry(desk.config.max_sessions, desk.config.session_ttl_s)
        self._progress: dict[tuple, Progress] = {}
        self._lock = threading.Lock()

    # ---------------------------------------------------------------------------------- routes
    @property
    def dims(self) -> int:
        return self.desk.model_cfg.spatial_dims

    def routes(self) -> list[str]:
        """The routes this site's base runs, the default first."""
        return [THREE_D] if self.dims == 3 else [PROPAGATE, SLICE]

    def route_for(self, loaded: LoadedImage, route: str | None, field: str = "route",
                  allowed: tuple[str, ...] = ROUTES) -> str:
        """The route a request on `loaded` takes (None: the default), refused with a 422 naming
        `field` for an unknown route, one the site's base cannot run, or a 2D image."""
        if route is not None and route not in allowed:
            raise InputError(f"{field}: unknown route {route!r}; use one of {', '.join(allowed)}")
        if loaded.ndim != 3:
            raise InputError(f"{field}: {loaded.id} is a 2D image {loaded.shape}; the volume routes take a volume "
                             "(annotate a 2D image through /api/sessions, or leave route out)")
        usable = [r for r in self.routes() if r in allowed]
        chosen = usable[0] if route is None else route
        if chosen not in usable:
            base = f"{self.dims}D"
            raise InputError(f"{field}: route {chosen!r} needs a {'3D' if chosen == THREE_D else '2D'} base; this "
                             f"site's base is {base} (its routes: {', '.join(usable)})")
        return chosen

    def volume(self, image_id: str, route: str | None, field: str = "route") -> tuple[LoadedImage, str]:
        loaded = self.desk.load(image_id)
        return loaded, self.route_for(loaded, route, field, (PROPAGATE, THREE_D))

    # ---------------------------------------------------------------------------------- sessions
    def _key(self, image_id: str, user: str, structure: str) -> SessionKey:
        return self.desk.key(image_id, user, None, structure)

    def _open(self, loaded: LoadedImage, user: str, structure: str) -> OpenSession:
        desk = self.desk
        key = self._key(loaded.id, user, structure)
        case = loaded.id if len(desk.config.structures) == 1 else f"{loaded.id}.{structure}"
        progress = self.progress_of(key)

        def make() -> PropagationSession:
            try:
                return PropagationSession(desk.engine, loaded.model_input, case, loaded.spacing,
                                          on_progress=progress.tick, task=desk.config.task_of(structure))
            except VolumeInputError as err:
                raise InputError(str(err)) from None

        return self.sessions.get_or_open(key, make)

    def progress_of(self, key: SessionKey) -> Progress:
        with self._lock:
            return self._progress.setdefault(key, Progress())

    def progress(self, image_id: str, user: str, structure: str | None) -> dict:
        """The user's running (or last) interaction on this volume; read without the session's lock."""
        key = self._key(image_id, user, self.desk.structure(structure))
        with self._lock:
            progress = self._progress.get(key)
        return (progress or Progress()).as_dict()

    def _existing(self, image_id: str, user: str, structure: str) -> OpenSession:
        entry = self.sessions.get(self._key(image_id, user, structure))
        if entry is None:
            raise LookupError(f"no open volume annotation of {image_id} by {user!r}: click or draw a box first")
        return entry

    def user_slices(self, image_id: str, user: str, structure: str) -> list[int]:
        entry = self.sessions.get(self._key(image_id, user, structure))
        return [] if entry is None else entry.session.user_slices

    def close(self, image_id: str, user: str, structure: str) -> None:
        entry = self.sessions.get(self._key(image_id, user, structure))
        if entry is not None:
            self.sessions.close(entry)

    # ---------------------------------------------------------------------------------- views
    def view(self, image_id: str, user: str, route: str | None, structure: str | None) -> VolumeView:
        loaded, route = self.volume(image_id, route)
        structure = self.desk.structure(structure)
        if route == THREE_D:
            entry = self.desk.sessions.get(self._key(loaded.id, user, structure))
            return self._view_3d(loaded, entry)
        entry = self.sessions.get(self._key(loaded.id, user, structure))
        if entry is None:
            return VolumeView(route, np.zeros(loaded.shape, bool), [], [], [])
        with entry.lock:
            return self._view_propagated(entry.session)

    @staticmethod
    def _view_propagated(session: PropagationSession, seconds: float = 0.0) -> VolumeView:
        steps = session.interactions
        boxes = [{"lo": [*b.lo, z], "hi": [*(h - 1 for h in b.hi), z]} for z, b in sorted(session.user_boxes.items())]
        return VolumeView(PROPAGATE, np.array(session.mask), [c.as_dict() for c in session.clicks], boxes,
                          session.user_slices, seconds=seconds, predicted=steps[-1].predicted if steps else 0)

    @staticmethod
    def _view_3d(loaded: LoadedImage, entry: OpenSession | None, seconds: float = 0.0) -> VolumeView:
        if entry is None:
            return VolumeView(THREE_D, np.zeros(loaded.shape, bool), [], [], [])
        session = entry.session
        box = session.drawn_box
        boxes = [] if box is None else [{"lo": list(box.lo), "hi": [h - 1 for h in box.hi]}]
        clicks = [c.as_dict() for c in session.clicks]
        return VolumeView(THREE_D, np.asarray(session.mask, bool), clicks, boxes,
                          sorted({int(c.point[-1]) for c in session.clicks}), seconds=seconds, predicted=1)

    # ---------------------------------------------------------------------------------- interaction
    def click(self, image_id: str, user: str, point, positive: bool, route: str | None = None,
              structure: str | None = None) -> VolumeView:
        loaded, route = self.volume(image_id, route)
        structure = self.desk.structure(structure)
        if route == THREE_D:
            result = self.desk.click(image_id, user, point, positive, None, structure)
            view = self._view_3d(loaded, self.desk.sessions.get(self._key(loaded.id, user, structure)), result.seconds)
            view.problems = result.problems
            return view
        z, local = self.desk.locate(loaded, point)
        entry = self._open(loaded, user, structure)
        with entry.lock:
            if len(entry.session.interactions) >= self.desk.config.max_points:
                raise InputError(f"a session takes at most {self.desk.config.max_points} interactions; accept or undo")
            view = self._run(entry, user, z, entry.session.click, (*local, z), positive)
        view.problems = self.desk.audit.record(user, "click", image_id, route=route, slice=z, structure=structure,
                                               point=[*map(int, local), z], positive=bool(positive),
                                               slices_predicted=view.predicted) or None
        return view

    def box(self, image_id: str, user: str, lo, hi, slice_index: int | None = None, route: str | None = None,
            structure: str | None = None, field: str = "box") -> VolumeView:
        """A box on one slice (`lo`, `hi`: its first and last voxel, [x, y(, z)])."""
        loaded, route = self.volume(image_id, route)
        structure = self.desk.structure(structure)
        if route == THREE_D:
            result = self.desk.box(image_id, user, lo, hi, slice_index, structure, field)
            view = self._view_3d(loaded, self.desk.sessions.get(self._key(loaded.id, user, structure)), result.seconds)
            view.problems = result.problems
            return view
        z, lo_i, hi_i = self.desk.locate_box(loaded, lo, hi, slice_index, field)
        entry = self._open(loaded, user, structure)
        with entry.lock:
            view = self._run(entry, user, z, entry.session.box, lo_i, hi_i, z)
        view.problems = self.desk.audit.record(user, "box", image_id, route=route, slice=z, structure=structure,
                                               lo=list(lo_i), hi=[int(h) - 1 for h in hi_i],
                                               slices_predicted=view.predicted) or None
        return view

    def _run(self, entry: OpenSession, user: str, z: int, action, *args) -> VolumeView:
        """One interaction on the model's thread (the caller holds `entry.lock`), its progress shown."""
        session: PropagationSession = entry.session
        progress = self.progress_of(entry.key)
        progress.start(_reach(session, z) - 1)  # the slices it may carry the mask to
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            self.desk._compute.submit(user, _volume_call, action, *args).result()  # the desk's one model thread
        finally:
            progress.running = False
        seconds = time.perf_counter() - t0
        self.desk.last_click_ms = seconds * 1e3
        view = self._view_propagated(session, seconds)
        view.cpu_seconds = time.process_time() - c0
        return view

    def undo(self, image_id: str, user: str, route: str | None = None, structure: str | None = None) -> VolumeView:
        loaded, route = self.volume(image_id, route)
        structure = self.desk.structure(structure)
        if route == THREE_D:
            self.desk.undo(image_id, user, None, structure)
            return self._view_3d(loaded, self.desk.sessions.get(self._key(loaded.id, user, structure)))
        entry = self._existing(loaded.id, user, structure)
        with entry.lock:
            _volume_call(entry.session.undo)
            view = self._view_propagated(entry.session)
        self.desk.audit.record(user, "undo", image_id, route=route, structure=structure,
                               interactions=len(entry.session.interactions))
        return view

    def discard(self, image_id: str, user: str, route: str | None = None, structure: str | None = None) -> None:
        _, route = self.volume(image_id, route)
        structure = self.desk.structure(structure)
        if route == THREE_D:
            self.desk.discard(image_id, user, None, structure)
            return
        entry = self.sessions.get(self._key(image_id, user, structure))
        if entry is not None:
            self.sessions.close(entry)
            self.desk.audit.record(user, "discard", image_id, route=route, structure=structure)

    # ---------------------------------------------------------------------------------- accept
    def accept(self, image_id: str, user: str, route: str | None = None, structure: str | None = None,
               request_id: str | None = None) -> dict:
        """The 3D mask into the cache (see the module's doc); idempotent per `request_id`."""
        loaded, route = self.volume(image_id, route)
        structure = self.desk.structure(structure)
        if route == THREE_D:
            return {**self.desk.accept_current(image_id, user, None, request_id, structure), "route": route}
        desk = self.desk
        key = None if request_id is None else f"{image_id}|{user}|{request_id}"
        with desk.saving(image_id, user):
            if key is not None and key in desk.requests:
                names = desk.requests[key]
                return {"case": names[0], "cases": list(names), "image": image_id, "route": route, "duplicate": True,
                        "cache_size": desk.cache_size()}
            entry = self._existing(loaded.id, user, structure)
            with entry.lock:
                names, problems, slices, post_ms = self._store(loaded, entry, key)
                self.sessions.close(entry)
        problems += desk.audit.record(user, "accept", image_id, route=route, structure=structure, cases=names,
                                      user_slices=entry.session.user_slices, voxels=int(entry.session.accepted.sum()))
        return {"case": names[0], "cases": names, "image": image_id, "route": route, "slices": slices,
                "structure": structure, "post_ms": round(post_ms, 1), "cache_size": desk.cache_size(),
                **({"after_effects": problems} if problems else {})}

    def _store(self, loaded: LoadedImage, entry: OpenSession, key: str | None) -> tuple[list[str], list[str], list[int], float]:
        desk, session = self.desk, entry.session
        if session.accepted is not None:
            raise Conflict(f"this annotation of {loaded.id} by {entry.user!r} was already accepted by another request")
        if not session.mask.any():
            raise InputError("the mask is empty: click or draw a box on the object first")
        # the user slices' post-interaction updates run on the model's thread, as clicks do
        final = desk._compute.submit(entry.user, _volume_call, session.accept, None, False).result()
        parts, post_ms = [], 0.0
        slices = [int(z) for z in np.flatnonzero(final.any(axis=(0, 1)))]
        for z in slices:
            name = f"{loaded.id}.z{z:04d}" + (f".{entry.structure}" if len(desk.config.structures) > 1 else "")
            case = session.slice_sessions.get(z) or SliceCase(name, session.slice_image(z))
            case.case_id = name
            post_ms += case.post_ms
            parts.append((OpenSession(self.desk.key(loaded.id, entry.user, z, entry.structure), case), final[..., z]))
        names, problems = desk.store_cases(parts, key)
        return names, problems, slices, post_ms

    # ---------------------------------------------------------------------------------- MONAI Label
    def infer(self, loaded: LoadedImage, user: str, structure: str, foreground: list, background: list,
              roi: list | None = None, roi_slice: int | None = None) -> tuple[np.ndarray, dict]:
        """MONAI Label's infer on the propagation route: the user's session brought to exactly these
        points and box (`roi`, end exclusive, on one slice), as `monailabel._sync` does for the
        desk's sessions: the common prefix stays, the rest is undone, the new ones applied in order
        (a new or changed box starts again). Returns (label volume, reply params)."""
        desk = self.desk
        wanted: list[tuple] = []
        if roi is not None:
            half = len(roi) // 2
            z, lo, hi = desk.locate_box(loaded, roi[:half], [v - 1 for v in roi[half:]], roi_slice, field="params.roi")
            wanted.append(("box", (z, tuple(lo), tuple(hi))))
        for points, positive in ((foreground, True), (background, False)):
            for point in points:
                z, local = desk.locate(loaded, point)
                wanted.append(("click", Click((*local, z), positive)))
        t0 = time.perf_counter()
        entry = self._open(loaded, user, structure)
        with entry.lock:
            session: PropagationSession = entry.session
            had = [("box", (i.z, i.box.lo, i.box.hi)) if i.click is None else ("click", i.click)
                   for i in session.interactions]
            keep = 0
            if (had[:1] if had[:1] and had[0][0] == "box" else []) == (wanted[:1] if roi is not None else []):
                remaining = Counter(wanted)
                for item in had:
                    if remaining[item] <= 0:
                        break
                    remaining[item] -= 1
                    keep += 1
            for _ in range(len(had) - keep):
                _volume_call(session.undo)
            remaining = Counter(wanted) - Counter(had[:keep])
            predicted = []
            for kind, what in wanted:
                if remaining[(kind, what)] <= 0:
                    continue
                remaining[(kind, what)] -= 1
                if kind == "box":
                    z, lo, hi = what
                    view = self._run(entry, user, z, session.box, lo, hi, z)
                else:
                    view = self._run(entry, user, what.point[-1], session.click, what.point, what.positive)
                predicted.append(view.predicted)
            mask = np.array(session.mask)
            reached = session.slices_reached()
        label = mask.astype(np.uint8) * np.uint8(desk.config.label_values[structure])
        desk.audit.record(user, "infer", loaded.id, route=PROPAGATE, foreground=len(foreground),
                          background=len(background), box=roi is not None, slices_predicted=predicted)
        params = {"label_names": {structure: desk.config.label_values[structure]}, "structure": structure,
                  "route": PROPAGATE, "latencies": {"total": round(time.perf_counter() - t0, 4)},
                  "slices": reached, "user_slices": session.user_slices, "slices_predicted": predicted,
                  "adapter_version": desk.slot(structure).model.version}
        return label, params


def _reach(session: PropagationSession, z: int) -> int:
    """The most slices an interaction on slice z can predict: up to the next user slice each way."""
    n = session.spatial_shape[-1]
    others = [u for u in session.user_slices if u != z]
    up = min((u for u in others if u > z), default=n)
    down = max((u for u in others if u < z), default=-1)
    return up - down - 1


def _volume_call(action, *args):
    """A propagation session's call, its input errors as the service's 422."""
    try:
        return action(*args)
    except VolumeInputError as err:
        raise InputError(str(err)) from None

