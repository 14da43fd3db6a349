"""The site service's composition root: builds each owner once and wires them together.

One `SiteEngine` serves every clinician: per task (each structure of site.toml `labels`, else the
site's one) an adapter + optimizer, a store, an episode scheduler and a regression guard. The
owners the routers call:

- `desk` (`desk.AnnotationDesk`): open sessions, their slice geometry, accept-to-cache, the cache index;
- `labels` (`labels.LabelOperations`): MONAI Label's infer and label saves, on the desk;
- `volumes` (`volumes.VolumeOperations`): a whole volume by a route (propagation, 3D), its progress;
- `next_image` (`next_image.NextImageChoice`): which image to annotate next;
- `training`, `banks`, `images`/`pacs`, `sessions`, `audit`: episodes, bank deliveries, the image
  sources (`images` a `datastore.Datastore`: the folder, the PACS or both; `pacs` the PACS or None),
  the session registry and the audit log.
"""

from __future__ import annotations

import logging

from fedpoint.client.engine import SiteEngine, set_threads
from fedpoint.client.service.bank_watcher import BankWatcher
from fedpoint.client.service.site_config import SiteServiceConfig
from fedpoint.client.service.desk import AnnotationDesk, case_stores
from fedpoint.client.service.dicomweb import open_site_images
from fedpoint.client.service.journal import case_name, recover
from fedpoint.client.service.labels import LabelOperations
from fedpoint.client.service.next_image import NextImageChoice
from fedpoint.client.service.sessions import SessionRegistry
from fedpoint.client.service.training import Training
from fedpoint.client.service.users import AuditLog
from fedpoint.client.service.volumes import VolumeOperations
from fedpoint.client.site_store import SiteStore

log = logging.getLogger("fedpoint.service")
# The page's colour for structure 1, 2, ...: distinct on grey images and for red-green colour blindness.
STRUCTURE_COLOURS = ["#ffc83d", "#3db8ff", "#ff6b9a", "#7ee07e", "#c58bff", "#ff9d3d", "#3dffe0", "#f0f0f0"]


class ServiceState:
    def __init__(self, config: SiteServiceConfig, engine: SiteEngine | None = None):
        self.config = config
        set_threads(config.threads)
        self.engine = engine or _create_engine(config)
        if self.engine.store is None:
            raise ValueError("the service needs an engine with a site store")
        self.store: SiteStore = self.engine.root_store
        self.stores = case_stores(config, self.engine)  # the root and each structure's task store
        recover(self.store)  # a multi-slice save a crash cut: none of it stays, in whichever task's cache
        self.store.wipe_staging()  # the whole tree, task stores included
        self.quarantined_at_start = [(case_name(task, case), reason) for task, store in self.stores.items()
                                     for case, reason in store.quarantine_corrupt_cases()]
        self.model_cfg = self.engine.model.model_cfg
        self.images, self.pacs = open_site_images(config, self.model_cfg.image_channels)  # folder and/or PACS
        self.sessions = SessionRegistry(config.max_sessions, config.session_ttl_s)
        self.audit = AuditLog(config.audit_path)
        self.training = Training(self.engine, {s: config.task_of(s) for s in config.structures})
        # each structure's task bank lands in its task store and goes to its adapter only
        self.banks = BankWatcher(self.engine, config.bank_poll_s, [config.task_of(s) for s in config.structures])
        self.desk = AnnotationDesk(config, self.engine, self.images, self.pacs, self.sessions, self.audit, self.training)
        self.volumes = VolumeOperations(self.desk)  # whole-volume annotations (propagation) and their progress
        self.labels = LabelOperations(self.desk, self.volumes)
        self.next_image = NextImageChoice(self.desk, config.al_candidates)

    def start(self) -> None:
        self.banks.start()

    def stop(self, timeout: float = 120.0) -> None:
        """Stop watching for banks and let a running episode finish (it is on a copy of the model)."""
        self.banks.stop()
        self.training.wait(timeout)
        self.desk.close()

    # ---------------------------------------------------------------------------------- status
    def adapter_status(self, task: str | None = None) -> dict:
        """The adapter of `task` (None: the site's default one): its kind, saved version, swaps,
        online steps and its online guard's counts."""
        slot = self.engine.slot(task)
        model = slot.model
        try:
            current = slot.store.current_adapter()
        except (OSError, ValueError, KeyError, TypeError):  # an unreadable current.json (logged at start)
            current = None
        return {"kind": model.adapter.kind, "saved_version": int(current.name[1:]) if current else 0,
                "swaps": model.version, "online_steps": model.steps, "parameters": model.adapter.num_trainable(),
                "guard": dict(model.online_guard.counts),
                "guard_last_rejections": model.online_guard.events[-5:]}

    def status(self) -> dict:
        ids = self.images.ids()
        desk = self.desk
        return {
            "site": self.config.site,
            "modality": self.config.modality,
            "label": self.config.structures[0],
            "structures": [{"name": n, "value": v, "color": STRUCTURE_COLOURS[(v - 1) % len(STRUCTURE_COLOURS)]}
                           for n, v in self.config.label_values.items()],
            "mode": self.config.mode,
            "model": {"spatial_dims": self.model_cfg.spatial_dims, "channels": self.model_cfg.image_channels},
            "adapter": self.adapter_status(self.config.task_of(self.config.structures[0])),
            # with `labels`, each structure adapts its own adapter: each one's state, by structure name
            "adapters": ({n: self.adapter_status(self.config.task_of(n)) for n in self.config.structures}
                         if self.config.labels else None),
            "cache": {"cases": desk.cache_size(), "images_labelled": sum(1 for i in ids if i in desk.cases_by_image)},
            "images": {"total": len(ids), "skipped": self.images.skipped_list()},
            "pacs": None if self.pacs is None else self.pacs.status(),
            "quarantined": [{"case": case_name(task, c), "reason": r} for task, store in self.stores.items()
                            for c, r in store.quarantined()],
            "sessions": len(self.sessions),
            "training": self.training.status(),
            "last_episode": self.training.last_result(),
            "last_bank": self.banks.last,
            "last_click_ms": None if desk.last_click_ms is None else round(desk.last_click_ms, 1),
        }


def _create_engine(config: SiteServiceConfig) -> SiteEngine:
    """The engine on the store's newest adapter version that loads (`SiteModelFactory`: a damaged
    one is logged, naming its file, and skipped); with none left, a fresh adapter of the configured kind."""
    return SiteEngine.create(config.base, config.adapter, config.adaptation_config(), SiteStore(config.store),
                             config.device, config.campaign_size, True)

