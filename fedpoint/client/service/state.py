"""Everything the service keeps warm, and the operations its routers call.

One `SiteEngine` (base + adapter + optimizer, its store, episode scheduler and regression guard)
serves every clinician. Sessions are per (image, user, slice): a 3D volume on a 2D model is
annotated slice by slice (a click's z picks the slice, and an accepted slice becomes one 2D case
in the cache, which is what a 2D model trains on); a 3D model annotates the whole volume.

Accepts from several people at once all land: each runs its post-interaction update under the
model's lock, then `SiteStore.add_case` writes under the store's file lock and never overwrites
(a second accept of the same case id is kept beside the first, suffixed).
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
import zlib
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from fedpoint.client.engine import SiteEngine, set_threads
from fedpoint.client.service.bank_watcher import BankWatcher
from fedpoint.client.service.config import SiteServiceConfig
from fedpoint.client.service.dicomweb import open_site_images
from fedpoint.client.service.images import ImageError, LoadedImage
from fedpoint.client.service.journal import recover, write_cases
from fedpoint.client.service.sessions import OpenSession, SessionRegistry
from fedpoint.client.service.strategies import choose, flip_uncertainty
from fedpoint.client.service.training import Training
from fedpoint.client.service.users import AuditLog
from fedpoint.client.session import AnnotationSession, InputError
from fedpoint.client.store import SiteStore
from fedpoint.shared.clicker import deepest_point
from fedpoint.shared.clicks import Click, check_point

log = logging.getLogger("fedpoint.service")
MAX_COORDINATE = 2**31 - 1
SAVE_WAIT_S = 60.0
# The page's colour for structure 1, 2, ...: distinct on grey images and for red-green colour blindness.
STRUCTURE_COLOURS = ["#ffc83d", "#3db8ff", "#ff6b9a", "#7ee07e", "#c58bff", "#ff9d3d", "#3dffe0", "#f0f0f0"]


class Conflict(RuntimeError):
    """Another request holds what this one needs (409); the message says who."""


@dataclass
class ClickResult:
    mask: np.ndarray  # the session's mask (2D, or 3D for a 3D model)
    slice: int | None
    clicks: int
    seconds: float
    predict_ms: float
    update_ms: float


class ServiceState:
    def __init__(self, config: SiteServiceConfig, engine: SiteEngine | None = None):
        self.config = config
        set_threads(config.threads)
        self._compute = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fedpoint-model")
        self.engine = engine or _create_engine(config)
        if self.engine.store is None:
            raise ValueError("the service needs an engine with a site store")
        self.store: SiteStore = self.engine.store
        recover(self.store)  # a multi-slice save a crash cut: none of it stays
        self.store.wipe_staging()
        self.quarantined_at_start = self.store.quarantine_corrupt_cases()
        self.model_cfg = self.engine.model.model_cfg
        self.images, self.pacs = open_site_images(config, self.model_cfg.image_channels)  # folder and/or PACS
        self.sessions = SessionRegistry(config.max_sessions, config.session_ttl_s)
        self.audit = AuditLog(config.audit_path)
        self.training = Training(self.engine)
        self.banks = BankWatcher(self.engine, config.bank_poll_s)
        self.cases_by_image = self._index_cache()
        self.accepts = 0
        self.last_click_ms: float | None = None
        self._lock = threading.Lock()
        self._scores: dict[tuple[str, int], float] = {}
        self._saving: dict[tuple[str, str], tuple[threading.Lock, list[str]]] = {}

    def start(self) -> None:
        self.banks.start()

    def stop(self, timeout: float = 120.0) -> None:
        """Stop watching for banks and let a running episode finish (it is on a copy of the model)."""
        self.banks.stop()
        self.training.wait(timeout)
        self._compute.shutdown(wait=True)

    def _index_cache(self) -> dict[str, list[str]]:
        index: dict[str, list[str]] = {}
        self.requests: dict[str, list[str]] = {}  # idempotency key -> the cases its request saved
        for case_id in self.store.case_ids():
            try:
                meta = _read_meta(self.store, case_id)
            except (OSError, ValueError) as err:
                self.store.quarantine_case(case_id, f"cache/{case_id}/meta.json: {type(err).__name__}: {err}")
                continue
            index.setdefault(str(meta.get("image", case_id)), []).append(case_id)
            if isinstance(meta.get("request"), str):
                self.requests.setdefault(meta["request"], []).append(case_id)
        return index

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
        """(slice or None, the point in the session's image), refusing points outside the image."""
        point = list(point)
        if not all(isinstance(p, (int, float)) and not isinstance(p, bool) and abs(p) <= MAX_COORDINATE for p in point):
            raise InputError(f"point {str(point)[:80]} must hold finite numbers within +-{MAX_COORDINATE} (image index space)")
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


    def session(self, loaded: LoadedImage, user: str, slice_index: int | None, structure: str | None = None) -> OpenSession:
        structure = self.structure(structure)
        key = (loaded.id, user, slice_index, structure)
        case = loaded.id if slice_index is None else f"{loaded.id}.z{slice_index:04d}"
        if len(self.config.structures) > 1:  # one cache entry per structure
            case = f"{case}.{structure}"
        # A 3D model measures its focus window in mm; slices on a 2D model stay in pixels.
        spacing = loaded.spacing if self.model_cfg.spatial_dims == 3 and loaded.ndim == 3 else None
        return self.sessions.get_or_open(
            key, lambda: AnnotationSession(self.engine.model, self.session_image(loaded, slice_index), case,
                                           seed=zlib.crc32(repr(key).encode()), spacing=spacing))

    def click(self, image_id: str, user: str, point, positive: bool, slice_index: int | None = None,
              structure: str | None = None) -> ClickResult:
        loaded = self.load(image_id)
        z, local = self.locate(loaded, point, slice_index)
        entry = self.session(loaded, user, z, structure)
        with entry.lock:
            if len(entry.session.steps) >= self.config.max_points:
                raise InputError(f"a session takes at most {self.config.max_points} clicks; accept or undo")
            t0 = time.perf_counter()
            # On one long-lived thread: torch's OpenMP pool belongs to the calling thread, and the web
            # server's worker threads change from request to request (a new pool each time doubled
            # the click latency over HTTP).
            mask = self._compute.submit(entry.session.click, local, positive).result()
            seconds = time.perf_counter() - t0
            step = entry.session.steps[-1]
            result = ClickResult(mask, z, len(entry.session.steps), seconds, step.predict_ms, step.update_ms)
        self.last_click_ms = seconds * 1e3
        self.audit.record(user, "click", image_id, slice=z, structure=entry.structure, point=list(map(int, local)),
                          positive=bool(positive), clicks=result.clicks)
        return result

    def existing(self, image_id: str, user: str, slice_index: int | None, structure: str | None = None) -> OpenSession:
        entry = self.sessions.get((image_id, user, slice_index, self.structure(structure)))
        if entry is None:
            raise LookupError(f"no open annotation of {image_id}" + (f" slice {slice_index}" if slice_index is not None else "")
                              + f" by {user!r}: click first")
        return entry

    def undo(self, image_id: str, user: str, slice_index: int | None, structure: str | None = None) -> tuple[np.ndarray, int]:
        entry = self.existing(image_id, user, slice_index, structure)
        with entry.lock:
            mask = entry.session.undo()
            left = len(entry.session.steps)
        self.audit.record(user, "undo", image_id, slice=slice_index, structure=entry.structure, clicks=left)
        return mask, left

    def discard(self, image_id: str, user: str, slice_index: int | None, structure: str | None = None) -> None:
        entry = self.sessions.get((image_id, user, slice_index, self.structure(structure)))
        if entry is not None:
            self.sessions.close(entry)
            self.audit.record(user, "discard", image_id, slice=slice_index, structure=entry.structure)

    def accept(self, entry: OpenSession, mask: np.ndarray | None = None, request: str | None = None) -> dict:
        """Post-interaction update, then into the cache; the session closes."""
        with entry.lock:
            if entry.session.accepted is not None:
                raise Conflict(f"this annotation of {entry.image_id} by {entry.user!r} was already accepted by another request")
            final = entry.session.accept(mask)
            self.sessions.close(entry)
            name = self._store_cases([(entry, final)], request)[0]
        self.audit.record(entry.user, "accept", entry.image_id, slice=entry.slice, structure=entry.structure, case=name,
                          clicks=len(entry.session.steps), voxels=int(np.count_nonzero(final)))
        return {"case": name, "image": entry.image_id, "slice": entry.slice, "structure": entry.structure,
                "post_ms": round(entry.session.post_ms, 1), "cache_size": self.cache_size()}

    def accept_current(self, image_id: str, user: str, slice_index: int | None, request_id: str | None = None,
                       structure: str | None = None) -> dict:
        structure = self.structure(structure)
        key = None if request_id is None else f"{image_id}|{user}|{request_id}"
        with self._saving_lock(image_id, user):
            if key is not None and key in self.requests:
                names = self.requests[key]
                return {"case": names[0], "image": image_id, "slice": slice_index, "duplicate": True,
                        "cache_size": self.cache_size()}
            return self.accept(self.existing(image_id, user, slice_index, structure), request=key)

    def _saving_lock(self, image_id: str, user: str):
        """One save (or accept) at a time per (image, user): a second waits, then sees the first's result;
        after SAVE_WAIT_S it gets a 409 that says who holds the image."""
        state = self

        class _Held:
            def __enter__(self_):
                with state._lock:
                    lock, holder = state._saving.setdefault((image_id, user), (threading.Lock(), []))
                if not lock.acquire(timeout=SAVE_WAIT_S):
                    raise Conflict(f"{image_id} is being saved by {user!r} in another request; retry when it finishes")
                holder[:] = [threading.current_thread().name]
                self_.lock = lock

            def __exit__(self_, *exc):
                self_.lock.release()

        return _Held()

    def _store_cases(self, parts: list[tuple[OpenSession, np.ndarray]], request: str | None) -> list[str]:
        """Every part into the cache, all or none (see `journal`); then the index, adapter save, episodes."""
        cases = []
        for entry, final in parts:
            session = entry.session
            meta = {"image": entry.image_id, "slice": entry.slice, "structure": entry.structure, "user": entry.user,
                    "clicks": len(session.steps),
                    "post_ms": round(session.post_ms, 1), "site": self.config.site}
            if request is not None:
                meta["request"] = request
            cases.append((session.case_id, session.image, final, meta))
        names = write_cases(self.store, cases)
        with self._lock:
            for (entry, _), name in zip(parts, names):
                self.cases_by_image.setdefault(entry.image_id, []).append(name)
            if request is not None:
                self.requests[request] = list(names)
            every = self.config.save_adapter_every
            before, self.accepts = self.accepts, self.accepts + len(names)
            save = bool(every) and before // every != self.accepts // every
        if self.pacs is not None:  # a DICOM-SEG back to the PACS, in the background: a failure is logged, the case kept
            self.images.write_back([entry.image_id for entry, _ in parts], self.stored_label)
        if save:  # the version carries its Adam state, so a restart continues the same optimizer
            self.engine.save_version({"source": "online", "case": names[-1]})
        self.training.after_accept()
        return names

    # ---------------------------------------------------------------------------------- MONAI Label
    def infer(self, image_id: str, user: str, foreground: list, background: list,
              structure: str | None = None) -> tuple[np.ndarray, dict]:
        """Bring the user's sessions on this image to exactly these points; returns (label volume, params).

        Clients send every point each time. Points the session already has are kept (no repeated
        update); a point that disappeared undoes back to before it; new points are clicked in order.
        """
        loaded = self.load(image_id)
        structure = self.structure(structure)
        if len(foreground) + len(background) == 0:
            raise InputError("give at least one foreground or background point")
        if len(foreground) + len(background) > self.config.max_points:
            raise InputError(f"{len(foreground) + len(background)} points; at most {self.config.max_points} are accepted")
        groups: dict[int | None, list[Click]] = {}
        for points, positive in ((foreground, True), (background, False)):
            for point in points:
                z, local = self.locate(loaded, point)
                groups.setdefault(z, []).append(Click(local, positive))
        t0 = time.perf_counter()
        for z, wanted in groups.items():
            self._sync(self.session(loaded, user, z, structure), wanted)
        label = self.label_volume(loaded, user, structure)
        self.audit.record(user, "infer", image_id, foreground=len(foreground), background=len(background))
        params = {"label_names": {structure: self.config.label_values[structure]}, "structure": structure,
                  "latencies": {"total": round(time.perf_counter() - t0, 4)},
                  "slices": [z for z in groups if z is not None], "adapter_version": self.engine.model.version}
        return label, params

    def _sync(self, entry: OpenSession, wanted: list[Click]) -> None:
        with entry.lock:
            session = entry.session
            remaining = Counter(wanted)
            keep = 0
            for click in session.clicks:
                if remaining[click] <= 0:
                    break
                remaining[click] -= 1
                keep += 1
            for _ in range(len(session.steps) - keep):
                session.undo()
            for click in wanted:
                if remaining[click] > 0:
                    remaining[click] -= 1
                    session.click(click.point, click.positive)

    def label_volume(self, loaded: LoadedImage, user: str, structure: str) -> np.ndarray:
        """The user's open sessions of one structure as a label map (the structure's value inside)."""
        label = np.zeros(loaded.shape, dtype=np.uint8)
        value = self.config.label_values[structure]
        for entry in self.sessions.of_user(loaded.id, user, structure):
            mask = entry.session.mask
            if entry.slice is None:
                label[mask] = value
            else:
                label[..., entry.slice][mask] = value
        return label

    def save_label(self, image_id: str, user: str, label: np.ndarray, values: dict[str, int | None],
                   request_id: str | None = None) -> dict:
        """See `_save_label`; `values` maps each structure to its value in `label` (None: any
        non-zero value). Idempotent: the key is the client's `request_id`, else a hash of the
        label; a retried save returns the first one's cases (`duplicate: true`) and adds nothing."""
        values = {self.structure(name): value for name, value in values.items()}
        if request_id is None:
            digest = hashlib.sha256(np.ascontiguousarray(label).tobytes())
            digest.update(repr((label.shape, sorted(values.items()))).encode())
            request_id = "sha256-" + digest.hexdigest()[:32]
        key = f"{image_id}|{user}|{request_id}"
        with self._saving_lock(image_id, user):
            if key in self.requests:
                return {"cases": list(self.requests[key]), "duplicate": True}
            result = self._save_label(image_id, user, label, values, key)
        self.audit.record(user, "save_label", image_id, cases=result["cases"], structures=sorted(values))
        return result

    def _save_label(self, image_id: str, user: str, label: np.ndarray, values: dict[str, int | None], key: str) -> dict:
        """A final label from a client: each structure's annotated parts into the cache through a
        session accept, all in one cache write.

        The user's open session supplies the first click for the post-interaction update; a label
        made without clicks here gets a first click at its deepest point. A volume on a 2D model
        adds the slices this user clicked on, then the largest others, up to `max_label_slices`
        (per structure).
        """
        loaded = self.load(image_id)
        parts = []
        for structure, value in values.items():
            mask = label == value if value is not None else label > 0
            if mask.any():
                parts += self._label_parts(loaded, user, structure, mask)
        if not parts:
            raise InputError(f"the label is empty for {', '.join(values)}: nothing to save")
        return {"cases": self._accept_labels(loaded, user, parts, key)}

    def _label_parts(self, loaded: LoadedImage, user: str, structure: str, mask: np.ndarray) -> list[tuple]:
        if not self.sliced(loaded):
            return [(None, structure, mask)]
        area = mask.reshape(-1, mask.shape[-1]).sum(axis=0)
        mine = self.sessions.of_user(loaded.id, user, structure)
        clicked = [e.slice for e in mine if area[e.slice] > 0]
        largest = [int(z) for z in np.argsort(-area, kind="stable") if area[z] > 0 and int(z) not in clicked]
        chosen = (clicked + largest)[: self.config.max_label_slices]
        for entry in mine:
            if entry.slice not in chosen:
                self.sessions.close(entry)
        return [(z, structure, mask[..., z]) for z in sorted(chosen)]

    def _accept_labels(self, loaded: LoadedImage, user: str, parts: list[tuple[int | None, str, np.ndarray]],
                       key: str) -> list[str]:
        """Each part's session accepts its mask (post update), then all parts land in the cache at once."""
        accepted = []
        for z, structure, mask in parts:
            entry = self.session(loaded, user, z, structure)
            with entry.lock:
                if entry.session.accepted is not None:
                    raise Conflict(f"{loaded.id} by {user!r}: slice {z} ({structure}) was accepted by another request meanwhile")
                if not entry.session.steps:
                    entry.session.click(deepest_point(mask), True)
                final = entry.session.accept(mask)
                self.sessions.close(entry)
            accepted.append((entry, final))
        return self._store_cases(accepted, key)

    def stored_label(self, loaded: LoadedImage) -> np.ndarray | None:
        """The accepted label of an image, assembled from its cached cases (latest wins): each
        structure's voxels hold its value (1, 2, ... in site.toml order)."""
        names = self.cases_by_image.get(loaded.id, [])
        if not names:
            return None
        label = np.zeros(loaded.shape, dtype=np.uint8)
        for name in list(names):
            try:
                _, mask, meta = self.store.load_case(name)
            except KeyError as err:  # unreadable: the store quarantined it; the other cases still count
                log.warning("%s", err.args[0] if err.args else err)
                with self._lock:
                    if name in names:
                        names.remove(name)
                continue
            # a case from before `labels` was set (no structure in its meta) is the first structure
            value = self.config.label_values.get(meta.get("structure"), 1)
            target = label if meta.get("slice") is None else label[..., int(meta["slice"])]
            target[target == value] = 0  # a later accept of this structure replaces the earlier one
            target[np.asarray(mask, dtype=bool).reshape(target.shape)] = value
        return label

    # ---------------------------------------------------------------------------------- next image
    def unlabelled(self) -> list[str]:
        """Images still to annotate (an image known to be unreadable is skipped by every strategy)."""
        unreadable = self.images.unreadable()
        return [i for i in self.images.ids() if i not in self.cases_by_image and i not in unreadable]

    def next_image(self, strategy: str, params: dict | None = None) -> tuple[str | None, dict]:
        return choose(strategy, self.unlabelled(), params or {}, self.uncertainty, self.config.al_candidates)

    def uncertainty(self, image_id: str) -> float | None:
        """The `uncertain` score, or None for an image that cannot be read (marked, then skipped)."""
        key = (image_id, self.engine.model.version)
        if key not in self._scores:
            try:
                loaded = self.load(image_id)
            except ImageError:
                return None
            z = loaded.slices // 2 if self.sliced(loaded) else None
            self._scores[key] = flip_uncertainty(self.engine.model, self.session_image(loaded, z))
        return self._scores[key]

    # ---------------------------------------------------------------------------------- status
    def cache_size(self) -> int:
        with self._lock:
            return sum(len(v) for v in self.cases_by_image.values())

    def adapter_status(self) -> dict:
        model = self.engine.model
        try:
            current = self.store.current_adapter()
        except (OSError, ValueError, KeyError, TypeError):  # an unreadable current.json (logged at start)
            current = None
        return {"kind": self.engine.adapter.kind, "saved_version": int(current.name[1:]) if current else 0,
                "swaps": model.version, "online_steps": model.steps, "parameters": self.engine.adapter.num_trainable(),
                "guard": dict(model.online_guard.counts),
                "guard_last_rejections": model.online_guard.events[-5:]}

    def status(self) -> dict:
        ids = self.images.ids()
        return {
            "site": self.config.site,
            "modality": self.config.modality,
            "label": self.config.structures[0],
            "structures": [{"name": n, "value": v, "color": STRUCTURE_COLOURS[(v - 1) % len(STRUCTURE_COLOURS)]}
                           for n, v in self.config.label_values.items()],
            "mode": self.config.mode,
            "model": {"spatial_dims": self.model_cfg.spatial_dims, "channels": self.model_cfg.image_channels},
            "adapter": self.adapter_status(),
            "cache": {"cases": self.cache_size(), "images_labelled": sum(1 for i in ids if i in self.cases_by_image)},
            "images": {"total": len(ids), "skipped": self.images.skipped_list()},
            "pacs": None if self.pacs is None else self.pacs.status(),
            "quarantined": [{"case": c, "reason": r} for c, r in self.store.quarantined()],
            "sessions": len(self.sessions),
            "training": self.training.status(),
            "last_episode": self.training.last_result(),
            "last_bank": self.banks.last,
            "last_click_ms": None if self.last_click_ms is None else round(self.last_click_ms, 1),
        }


def _create_engine(config: SiteServiceConfig) -> SiteEngine:
    """The engine on the store's current adapter, as `SiteEngine.create` builds it, except that a
    version that does not load is skipped (logged, naming its file) and the previous valid one is
    used; with none left, a fresh adapter of the configured kind."""
    from fedpoint.shared.adapters import load_adapter, make_adapter
    from fedpoint.shared.model import load_base

    from fedpoint.client.model import SiteModel

    store = SiteStore(config.store)
    net, model_cfg, _card = load_base(config.base, config.device)
    tried: list[int] = []
    adapter = None
    while adapter is None:
        resume = store.usable_adapter(skip=tuple(tried))
        if resume is None:
            if tried or store.adapter_versions():
                log.warning("no adapter version in the store loads; starting from a fresh %s adapter", config.adapter.kind)
            adapter = make_adapter(net, config.adapter)
            break
        try:
            adapter = load_adapter(net, resume)
        except Exception as err:  # noqa: BLE001 - passed the file checks but does not load (shapes, kind...)
            version = int(resume.name[1:])
            store.log("adapter-skipped", version=version, reason=f"adapters/{resume.name}: {type(err).__name__}: {err}")
            log.warning("adapter version %d (adapters/%s) does not load (%s); trying the previous one", version,
                        resume.name, err)
            tried.append(version)
    model = SiteModel(adapter, model_cfg, config.adaptation_config(), config.device, None)
    model.load_optimizer_state(store.latest_optimizer_state(adapter.kind))
    return SiteEngine(model, store, config.campaign_size, True)


def _read_meta(store: SiteStore, case_id: str) -> dict:
    """A cached case's meta.json alone (load_case would read its arrays too)."""
    return json.loads((store.root / "cache" / case_id / "meta.json").read_text())
