"""A PACS as the site's datastore over DICOMweb: QIDO-RS lists series, WADO-RS fetches one when it
is first opened, STOW-RS takes each accepted label back as a DICOM-SEG.

The PACS's series are served beside the images folder (`SiteImages`, with `ImageFolder`'s
interface). Their ids are `pacs-` and a short hash of the SeriesInstanceUID: nothing about the
patient appears in an id, a URL or the annotation cache, and every id passes `check_id`.

A PACS that cannot be reached never stops the service: the failure is logged, shown in the status
(`pacs`) and in the images' skipped list, and the listing is retried with back-off while the
images folder is served. SEGs are written in the background, so an accept never waits on the
PACS; a SEG that cannot be stored is logged and counted, and the accepted case stays in the cache.
dicomweb_client, requests and highdicom are imported only when a PACS is configured.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import urlsplit

from fedpoint.client.service.site_config import ServiceConfigError, SiteServiceConfig
from fedpoint.client.service.images import ImageError, ImageFolder, LoadedImage, open_image
from fedpoint.client.site_store import check_id
from fedpoint.data.normalize import canonical_modality

log = logging.getLogger("fedpoint.service")
ID_PREFIX = "pacs-"
LIST_TTL_S = 30.0  # new series in the PACS appear within this
BACKOFF_S = (5, 10, 30, 60, 120)  # after the 1st, 2nd, ... failure in a row
TIMEOUT_S = (3.0, 60.0)  # connect, read: a PACS that does not answer must not hold a request long
PAGE, MAX_SERIES = 500, 5000  # a whole hospital archive is not a worklist: the listing stops there
NOT_IMAGES = {"SEG", "SR", "PR", "KO", "RTSTRUCT", "RTPLAN", "RTDOSE", "RTRECORD", "REG", "FID", "DOC", "ECG", "AU"}
DICOM_MODALITY = {"CT": "CT", "MR": "MR", "microscopy": "SM"}  # the site's modality as a QIDO filter
STUDY_UID, SERIES_UID, MODALITY = "0020000D", "0020000E", "00080060"
EPOCH_2020 = 1577836800  # InstanceNumber: seconds since 2020 grow with each SEG and fit an IS


def series_id(series_uid: str) -> str:
    return ID_PREFIX + hashlib.sha256(series_uid.encode()).hexdigest()[:12]


def shown_url(url: str) -> str:
    """The address without a user:password part or query, for logs and status."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or ''}{f':{parts.port}' if parts.port else ''}{parts.path}"


def auth_headers(config: SiteServiceConfig) -> dict[str, str]:
    """`user:password` is sent as HTTP Basic, anything else as a bearer token."""
    if not config.dicomweb_token_env:
        return {}
    value = os.environ.get(config.dicomweb_token_env, "").strip()
    if not value:
        raise ServiceConfigError(f"dicomweb_token_env: ${config.dicomweb_token_env} is empty or not set")
    if ":" in value and " " not in value:
        return {"Authorization": "Basic " + base64.b64encode(value.encode()).decode()}
    return {"Authorization": f"Bearer {value}"}


def why(err: Exception) -> str:
    """A failed DICOMweb call in a few words."""
    import requests

    if isinstance(err, requests.Timeout):
        return "unreachable (no answer in time)"
    if isinstance(err, requests.ConnectionError):
        return "unreachable (connection failed: is the PACS running, and is the address right?)"
    if isinstance(err, requests.HTTPError) and err.response is not None:
        return f"answered HTTP {err.response.status_code} {err.response.reason}"
    return f"failed ({type(err).__name__}: {err})"[:300]


def open_site_images(config: SiteServiceConfig, model_channels: int):
    """(the images the service serves, the PACS source or None): the folder alone without `dicomweb`."""
    folder = None if config.images is None else ImageFolder(config.images, config.modality, model_channels,
                                                            config.ct_window, config.image_cache, config.max_decoded_bytes)
    if config.dicomweb is None:
        return folder, None
    pacs = PacsImages(config, model_channels)
    return SiteImages(folder, pacs), pacs


@dataclass(frozen=True)
class SeriesRef:
    study_uid: str
    series_uid: str
    modality: str


# ------------------------------------------------------------------------------------ the PACS
class PacsImages:
    """A PACS's image series as site images, listed, fetched and decoded as needed."""

    def __init__(self, config: SiteServiceConfig, model_channels: int):
        self.url, self.shown = config.dicomweb, shown_url(config.dicomweb)
        self.modality, self.model_channels, self.ct_window = config.modality, model_channels, config.ct_window
        self.cache_size, self.site, self.structures = config.image_cache, config.site, config.structures
        self.max_bytes = config.max_decoded_bytes
        self._headers = auth_headers(config)
        self._client = None
        self._lock = threading.Lock()
        self._listing_lock = threading.Lock()
        self._gates: dict[str, threading.Lock] = {}
        self._listing: dict[str, SeriesRef] = {}
        self._cache: OrderedDict[str, LoadedImage] = OrderedDict()
        self._unreadable: dict[str, str] = {}
        self.error: str | None = None
        self._failures, self._due = 0, 0.0
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fedpoint-seg")
        self.written = {"stored": 0, "failed": 0, "pending": 0, "last": None}
        self.refresh()
        if self.error is None:
            log.info("PACS %s: %d image series", self.shown, len(self._listing))

    def _dicomweb(self):
        if self._client is None:
            from dicomweb_client.api import DICOMwebClient

            self._client = DICOMwebClient(self.url, headers=self._headers or None, timeout=TIMEOUT_S)
            # Its own retries wait 30 s on a refused connection, inside a request; the listing backs off here instead.
            self._client.set_http_retry_params(retry=False)
        return self._client

    # ------------------------------------------------------------------------------- listing
    def refresh(self, force: bool = False) -> None:
        """List the PACS's series when the last listing is older than LIST_TTL_S (or the back-off ended)."""
        if not force and time.monotonic() < self._due:
            return
        if not self._listing_lock.acquire(blocking=False):
            return  # another request is listing: this one uses the last listing
        try:
            listing = self._parse(self._search())
        except Exception as err:  # noqa: BLE001 - whatever the PACS or the network did: keep serving
            self._failed(f"{why(err)} listing series")
            return
        finally:
            self._listing_lock.release()
        with self._lock:
            self._listing = listing
            for gone in set(self._cache) - set(listing):
                self._cache.pop(gone, None)
            self._unreadable = {k: v for k, v in self._unreadable.items() if k in listing}
        self._reached()
        self._due = time.monotonic() + LIST_TTL_S

    def _search(self) -> list[dict]:
        """QIDO-RS pages of series (offset/limit) until an empty page, or MAX_SERIES."""
        modality = canonical_modality(self.modality)
        filters = {"Modality": DICOM_MODALITY[modality]} if modality in DICOM_MODALITY else None
        rows: list[dict] = []
        while len(rows) < MAX_SERIES:
            page = self._dicomweb().search_for_series(fields=["StudyInstanceUID", "Modality"], search_filters=filters,
                                                      offset=len(rows), limit=PAGE)
            if not page:
                return rows
            rows.extend(page)
        log.warning("PACS %s lists more than %d series; serving the first %d (point dicomweb at a PACS that holds "
                    "the cases to annotate, not a whole archive)", self.shown, MAX_SERIES, MAX_SERIES)
        return rows[:MAX_SERIES]

    @staticmethod
    def _parse(rows: list[dict]) -> dict[str, SeriesRef]:
        def value(row: dict, tag: str) -> str:
            found = row.get(tag, {}).get("Value") or [""]
            return str(found[0])

        listing = {}
        for row in rows:
            ref = SeriesRef(value(row, STUDY_UID), value(row, SERIES_UID), value(row, MODALITY).upper())
            if ref.study_uid and ref.series_uid and ref.modality not in NOT_IMAGES:
                listing[series_id(ref.series_uid)] = ref
        return dict(sorted(listing.items()))

    def _failed(self, reason: str) -> None:
        self._failures += 1
        delay = BACKOFF_S[min(self._failures, len(BACKOFF_S)) - 1]
        self._due = time.monotonic() + delay
        self.error = f"PACS {self.shown} {reason}"
        log.warning("%s; the other images are still served; retrying in %d s", self.error, delay)

    def _reached(self) -> None:
        if self.error is not None:
            log.warning("PACS %s reachable again: %d image series", self.shown, len(self._listing))
        self.error, self._failures = None, 0

    def ids(self) -> list[str]:
        self.refresh()
        with self._lock:
            return list(self._listing)

    def _ref(self, image_id: str) -> SeriesRef:
        check_id(image_id, "image id")
        self.refresh()
        with self._lock:
            ref = self._listing.get(image_id) or self._listing.get(series_id(image_id))
        if ref is None:
            raise KeyError(f"no image {image_id!r} in the site's images folder or its PACS")
        return ref

    def path(self, image_id: str) -> Path:
        """A name for the image (no file: it lives in the PACS)."""
        self._ref(image_id)
        return Path(image_id)

    def unreadable(self) -> dict[str, str]:
        with self._lock:
            return {k: v for k, v in self._unreadable.items() if k in self._listing}

    @property
    def skipped(self) -> list[tuple[str, str]]:
        down = [(f"PACS {self.shown}", self.error)] if self.error else []
        return down + list(self.unreadable().items())

    # ------------------------------------------------------------------------------- images
    def load(self, image_id: str) -> LoadedImage:
        ref = self._ref(image_id)
        image_id = series_id(ref.series_uid)  # a SeriesInstanceUID (what OHIF sends) names the same image
        with self._lock:
            if image_id in self._cache:
                self._cache.move_to_end(image_id)
                return self._cache[image_id]
            gate = self._gates.setdefault(image_id, threading.Lock())
        with gate:  # several requests opening one new series: one fetch
            with self._lock:
                if image_id in self._cache:
                    return self._cache[image_id]
            loaded = self._fetch(image_id, ref)
            with self._lock:
                self._cache[image_id] = loaded
                while len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
        return loaded

    def _fetch(self, image_id: str, ref: SeriesRef) -> LoadedImage:
        from fedpoint.data.dicom import DicomError, read_series

        try:
            datasets = self._dicomweb().retrieve_series(ref.study_uid, ref.series_uid)
        except Exception as err:  # noqa: BLE001 - not this image's fault: not marked unreadable
            if "unreachable" in why(err):  # the PACS is down, not just this series: back off the listing too
                self._failed(f"{why(err)} fetching series {ref.series_uid}")
            raise ImageError(f"{image_id}: the PACS {why(err)} when asked for it") from None
        try:
            series = read_series(datasets, f"{image_id} (PACS series {ref.series_uid})", self.max_bytes)
            return open_image(image_id, Path(image_id), self.modality, self.model_channels, self.ct_window, series=series,
                              max_bytes=self.max_bytes)
        except (DicomError, ImageError, MemoryError) as err:
            reason = str(err) if not isinstance(err, MemoryError) else f"{image_id}: too large to decode"
            with self._lock:
                self._unreadable[image_id] = reason
            raise ImageError(reason) from None

    # ------------------------------------------------------------------------------- SEG back
    def write_back(self, image_ids: list[str], label_of) -> None:
        """Queue a DICOM-SEG of each image's accepted label (`label_of(loaded)`); never raises."""
        for image_id in dict.fromkeys(image_ids):
            with self._lock:
                self.written["pending"] += 1
            self._writer.submit(self._write_seg, image_id, label_of)

    def _write_seg(self, image_id: str, label_of) -> None:
        import fedpoint
        from fedpoint.data.dicom import build_seg

        result: dict = {"image": image_id, "at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        try:
            loaded = self.load(image_id)
            label = label_of(loaded)
            if label is None:
                raise ValueError("it has no accepted label")
            seg = build_seg(loaded.dicom, label, self.structures, self.site, int(time.time()) - EPOCH_2020,
                            fedpoint.__version__)
            self._dicomweb().store_instances([seg])
            result.update(stored=True, sop_instance_uid=str(seg.SOPInstanceUID), series_instance_uid=str(seg.SeriesInstanceUID))
            log.info("DICOM-SEG of %s stored to the PACS %s (%s)", image_id, self.shown, seg.SOPInstanceUID)
        except Exception as err:  # noqa: BLE001 - the case is in the cache already; the SEG is reported, not retried
            reason = why(err)
            result.update(stored=False, error=reason[:300])
            log.warning("DICOM-SEG of %s not stored to the PACS %s: %s (the accepted case stays in the cache)",
                        image_id, self.shown, reason)
        with self._lock:
            self.written["pending"] -= 1
            self.written["stored" if result["stored"] else "failed"] += 1
            self.written["last"] = result

    def wait(self, timeout: float = 60.0) -> None:
        """Until every SEG queued so far is written or failed (one worker: a marker queued last)."""
        self._writer.submit(lambda: None).result(timeout)

    def status(self) -> dict:
        with self._lock:
            series, written = len(self._listing), dict(self.written)
        retry = max(0.0, self._due - time.monotonic()) if self.error else None
        return {"url": self.shown, "reachable": self.error is None, "error": self.error, "series": series,
                "retry_in_s": None if retry is None else round(retry, 1), "seg": written}


# ------------------------------------------------------------------------------------ both
class SiteImages:
    """The images folder and the PACS side by side, with `ImageFolder`'s interface; a folder's id wins."""

    def __init__(self, folder: ImageFolder | None, pacs: PacsImages):
        self.folder, self.pacs = folder, pacs

    def _local(self) -> list[str]:
        return self.folder.ids() if self.folder is not None else []

    def ids(self) -> list[str]:
        local = self._local()
        taken = set(local)
        return local + [i for i in self.pacs.ids() if i not in taken]

    def _source(self, image_id: str):
        return self.folder if image_id in self._local() else self.pacs

    def path(self, image_id: str) -> Path:
        return self._source(image_id).path(image_id)

    def load(self, image_id: str) -> LoadedImage:
        return self._source(image_id).load(image_id)

    def unreadable(self) -> dict[str, str]:
        local = self.folder.unreadable() if self.folder is not None else {}
        return {**self.pacs.unreadable(), **local}

    @property
    def skipped(self) -> list[tuple[str, str]]:
        local = self.folder.skipped if self.folder is not None else []
        shadowed = set(self._local()) & set(self.pacs.ids())
        return [*local, *self.pacs.skipped, *((i, "a PACS series with the id of a file in the images folder: not served")
                                              for i in sorted(shadowed))]

    def skipped_list(self) -> list[dict]:
        local = self.folder.skipped_list() if self.folder is not None else []
        return [*local, *({"file": f, "reason": r} for f, r in self.pacs.skipped)]

    def write_back(self, image_ids: list[str], label_of) -> None:
        """A SEG to the PACS for the images served from it (a folder's images stay on the site's disk)."""
        self.pacs.write_back([i for i in image_ids if self._source(i) is self.pacs], label_of)
