"""A PACS as the site's datastore over DICOMweb: QIDO-RS lists series, WADO-RS fetches one when it
is first opened, STOW-RS takes each accepted label back as a DICOM-SEG.

The PACS's series are served beside the images folder (`SiteImages`); the folder, the PACS and
both are each a `datastore.Datastore`, and the PACS (so both) a `datastore.LabelSink`. Their ids are `pacs-` and a short hash of the SeriesInstanceUID: nothing about the
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
import json
import logging
import os
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import urlsplit

from fedpoint.client.service.datastore import Datastore, LabelOf
from fedpoint.client.service.site_config import ServiceConfigError, SiteServiceConfig
from fedpoint.client.service.images import ImageError, ImageFolder, LoadedImage, open_image
from fedpoint.client.site_store import check_id
from fedpoint.data.normalize import canonical_modality

log = logging.getLogger("fedpoint.service")
ID_PREFIX = "pacs-"
LIST_TTL_S = 30.0  # new series in the PACS appear within this
BACKOFF_S = (5, 10, 30, 60, 120)  # after the 1st, 2nd, ... failure in a row
TIMEOUT_S = (3.0, 20.0)  # connect, each read: a silent PACS is given up on
LIST_DEADLINE_S = 10.0  # a whole QIDO listing (a PACS trickling bytes cannot hold the start longer)
FETCH_DEADLINE_S = 60.0  # a whole WADO series, as a request waits for it
PACS_WORKERS, PACS_QUEUE, PACS_WAITERS = 2, 8, 4  # its own threads, jobs queued, requests waiting: never all workers
MAX_QIDO_BYTES = 32 << 20  # a listing page as decoded JSON (5000 series take a few MB): a gzip bomb stops here
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

    if isinstance(err, PacsRefused):
        return f"answered in a way fedpoint refuses: it {err}"
    if isinstance(err, requests.Timeout):
        return "unreachable (no answer in time)"
    if isinstance(err, requests.ConnectionError):
        return "unreachable (connection failed: is the PACS running, and is the address right?)"
    if isinstance(err, requests.HTTPError) and err.response is not None:
        return f"answered HTTP {err.response.status_code} {err.response.reason}"
    return f"failed ({type(err).__name__}: {err})"[:300]


def open_site_images(config: SiteServiceConfig, model_channels: int) -> tuple[Datastore, PacsImages | None]:
    """(the images the service serves, the PACS source or None): the folder alone without `dicomweb`."""
    folder = None if config.images is None else ImageFolder(config.images, config.modality, model_channels,
                                                            config.ct_window, config.image_cache, config.max_decoded_bytes)
    if config.dicomweb is None:
        return folder, None
    pacs = PacsImages(config, model_channels)
    return SiteImages(folder, pacs), pacs


class PacsBusy(RuntimeError):
    """The PACS's own queue is full: a request is refused at once, never left waiting."""


class PacsRefused(RuntimeError):
    """A PACS answer fedpoint will not use (too large, too slow, not what was asked for)."""


def multipart_parts(body: bytes, content_type: str) -> list[bytes]:
    """The parts of a multipart/related body (WADO-RS), by the boundary its content type gives."""
    boundary = ""
    for param in content_type.split(";")[1:]:
        key, _, value = param.strip().partition("=")
        if key.lower() == "boundary":
            boundary = value.strip().strip('"')
    if not content_type.lower().startswith("multipart/") or not boundary:
        raise PacsRefused(f"answered with {content_type[:60] or 'no content type'}, not multipart/related")
    parts = []
    for chunk in body.split(b"--" + boundary.encode())[1:]:
        if chunk.startswith(b"--"):
            break
        _, sep, data = chunk.partition(b"\r\n\r\n")
        if sep:
            parts.append(data[:-2] if data.endswith(b"\r\n") else data)
    return parts


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
        self._listing: dict[str, SeriesRef] = {}
        self._cache: OrderedDict[str, LoadedImage] = OrderedDict()
        self._unreadable: dict[str, str] = {}
        self.error: str | None = None
        self._failures, self._due = 0, 0.0
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fedpoint-seg")
        # PACS calls run on threads of their own, a bounded number queued; a request waits on one
        # for at most its deadline, and only PACS_WAITERS requests wait at once.
        self._pool = ThreadPoolExecutor(max_workers=PACS_WORKERS, thread_name_prefix="fedpoint-pacs")
        self._queued = threading.BoundedSemaphore(PACS_QUEUE)
        self._waiters = threading.BoundedSemaphore(PACS_WAITERS)
        self._fetches: dict[str, Future] = {}
        self.written = {"stored": 0, "failed": 0, "pending": 0, "last": None}
        self.refresh(force=True, wait=True)  # at start: the listing, within LIST_DEADLINE_S
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
    def refresh(self, force: bool = False, wait: bool | None = None) -> None:
        """List the PACS's series when the last listing is older than LIST_TTL_S (or the back-off
        ended): on the PACS's own threads; a request never waits for it. `force` (at start, or a
        caller that needs the listing now) waits up to LIST_DEADLINE_S unless `wait` is False."""
        wait = force if wait is None else wait
        if not force and time.monotonic() < self._due:
            return
        if not self._listing_lock.acquire(blocking=False):
            return  # a listing is under way: this one uses the last listing
        try:
            future = self._submit(self._list)
        except PacsBusy:
            self._listing_lock.release()
            return
        future.add_done_callback(lambda _f: self._listing_lock.release())
        if wait:
            try:
                future.result(LIST_DEADLINE_S)
            except FutureTimeout:
                self._failed(f"unreachable (no complete answer in {LIST_DEADLINE_S:.0f} s) listing series")

    def _list(self) -> None:
        try:
            listing = self._parse(self._search())
        except Exception as err:  # noqa: BLE001 - whatever the PACS or the network did: keep serving
            self._failed(f"{why(err)} listing series")
            return
        with self._lock:
            self._listing = listing
            for gone in set(self._cache) - set(listing):
                self._cache.pop(gone, None)
            self._unreadable = {k: v for k, v in self._unreadable.items() if k in listing}
        self._reached()
        self._due = time.monotonic() + LIST_TTL_S

    def _submit(self, job) -> Future:
        """`job` on the PACS's threads; PacsBusy when PACS_QUEUE jobs are queued already."""
        if not self._queued.acquire(blocking=False):
            raise PacsBusy(f"the PACS {self.shown} is busy with {PACS_QUEUE} requests; try again shortly")
        future = self._pool.submit(job)
        future.add_done_callback(lambda _f: self._queued.release())
        return future

    def _get(self, path: str, params: dict | None, accept: str, limit: int, deadline: float) -> tuple[bytes, str]:
        """(body, content type) of a GET under the root: each read timed out, the whole call bounded
        by `deadline` (monotonic) and the body, as decoded (gzip included), by `limit` bytes."""
        import requests

        headers = {**self._headers, "Accept": accept}
        with requests.get(f"{self.url}{path}", params=params, headers=headers, timeout=TIMEOUT_S, stream=True) as response:
            response.raise_for_status()
            body = bytearray()
            for chunk in response.iter_content(1 << 16):
                body += chunk
                if len(body) > limit:
                    raise PacsRefused(f"sent more than {limit / 2**20:.0f} MiB for {path.split('?')[0]}")
                if time.monotonic() > deadline:
                    raise PacsRefused(f"did not finish sending in time ({path.split('?')[0]})")
            return bytes(body), response.headers.get("content-type", "")

    def _search(self) -> list[dict]:
        """QIDO-RS pages of series (offset/limit) until an empty page, or MAX_SERIES."""
        modality = canonical_modality(self.modality)
        filters = {"Modality": DICOM_MODALITY[modality]} if modality in DICOM_MODALITY else None
        rows: list[dict] = []
        deadline = time.monotonic() + LIST_DEADLINE_S
        while len(rows) < MAX_SERIES:
            params = {"includefield": ["0020000D", "00080060"], "offset": len(rows), "limit": PAGE, **(filters or {})}
            body, _ = self._get("/series", params, "application/dicom+json", MAX_QIDO_BYTES, deadline)
            page = json.loads(body) if body.strip() else []
            if not isinstance(page, list) or not all(isinstance(row, dict) for row in page):
                raise PacsRefused("answered a series search with something other than a list of series")
            if not page:
                return rows
            rows.extend(page)
        log.warning("PACS %s lists more than %d series; serving the first %d (point dicomweb at a PACS that holds "
                    "the cases to annotate, not a whole archive)", self.shown, MAX_SERIES, MAX_SERIES)
        return rows[:MAX_SERIES]

    @staticmethod
    def _parse(rows: list[dict]) -> dict[str, SeriesRef]:
        def value(row: dict, tag: str) -> str:
            element = row.get(tag)
            found = element.get("Value") if isinstance(element, dict) else None
            return str(found[0]) if isinstance(found, list) and found and isinstance(found[0], str) else ""

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

    def skipped_list(self) -> list[dict]:
        return [{"file": f, "reason": r} for f, r in self.skipped]

    # ------------------------------------------------------------------------------- images
    def load(self, image_id: str) -> LoadedImage:
        ref = self._ref(image_id)
        image_id = series_id(ref.series_uid)  # a SeriesInstanceUID (what OHIF sends) names the same image
        with self._lock:
            if image_id in self._cache:
                self._cache.move_to_end(image_id)
                return self._cache[image_id]
            future = self._fetches.get(image_id)
            if future is None:  # several requests opening one new series: one fetch
                try:
                    future = self._fetches[image_id] = self._submit(lambda: self._fetch(image_id, ref))
                except PacsBusy as err:
                    raise ImageError(f"{image_id}: {err}") from None
                future.add_done_callback(lambda _f: self._forget(image_id))
        if not self._waiters.acquire(blocking=False):
            raise ImageError(f"{image_id}: still arriving from the PACS {self.shown}; try again shortly")
        try:
            loaded = future.result(FETCH_DEADLINE_S)
        except FutureTimeout:
            raise ImageError(f"{image_id}: the PACS {self.shown} has not delivered it within {FETCH_DEADLINE_S:.0f} s; "
                             "try again shortly") from None
        finally:
            self._waiters.release()
        with self._lock:
            self._cache[image_id] = loaded
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return loaded

    def _forget(self, image_id: str) -> None:
        with self._lock:
            self._fetches.pop(image_id, None)

    def _fetch(self, image_id: str, ref: SeriesRef) -> LoadedImage:
        from fedpoint.data.dicom import DicomError, read_series

        try:
            datasets = self._retrieve(ref)
        except DicomError as err:
            with self._lock:
                self._unreadable[image_id] = f"{image_id}: {err}"
            raise ImageError(f"{image_id}: {err}") from None
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

    def _retrieve(self, ref: SeriesRef) -> list:
        """WADO-RS of one series, bounded (time, bytes, each instance as a folder's file is), and
        checked to be the series asked for: a PACS answering with another is refused."""
        from fedpoint.data.dicom import DicomError, read_dataset

        deadline = time.monotonic() + FETCH_DEADLINE_S
        body, content_type = self._get(f"/studies/{ref.study_uid}/series/{ref.series_uid}", None,
                                       'multipart/related; type="application/dicom"', self.max_bytes, deadline)
        datasets = []
        for k, part in enumerate(multipart_parts(body, content_type)):
            try:
                datasets.append(read_dataset(part, f"instance {k + 1}", self.max_bytes))
            except DicomError:
                raise
            except Exception as err:  # noqa: BLE001 - a damaged instance: say so
                raise DicomError(f"instance {k + 1} is not readable DICOM ({type(err).__name__})") from None
        for ds in datasets:
            got = (str(ds.get("StudyInstanceUID", "")), str(ds.get("SeriesInstanceUID", "")))
            if got != (ref.study_uid, ref.series_uid):
                raise DicomError(f"the PACS answered with series {got[1] or '(none)'} when asked for {ref.series_uid}; "
                                 "refused")
        return datasets

    # ------------------------------------------------------------------------------- SEG back
    def write_back(self, image_ids: list[str], label_of: LabelOf) -> None:
        """Queue a DICOM-SEG of each image's accepted label (`label_of(loaded)`); never raises."""
        for image_id in dict.fromkeys(image_ids):
            with self._lock:
                self.written["pending"] += 1
            self._writer.submit(self._write_seg, image_id, label_of)

    def _write_seg(self, image_id: str, label_of: LabelOf) -> None:
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
    """The images folder and the PACS side by side, one `Datastore`; a folder's id wins."""

    def __init__(self, folder: ImageFolder | None, pacs: PacsImages):
        self.folder, self.pacs = folder, pacs

    def _local(self) -> list[str]:
        return self.folder.ids() if self.folder is not None else []

    def ids(self) -> list[str]:
        local = self._local()
        taken = set(local)
        return local + [i for i in self.pacs.ids() if i not in taken]

    def _source(self, image_id: str) -> Datastore:
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
        return [*local, *self.pacs.skipped_list()]

    def write_back(self, image_ids: list[str], label_of: LabelOf) -> None:
        """A SEG to the PACS for the images served from it (a folder's images stay on the site's disk)."""
        self.pacs.write_back([i for i in image_ids if self._source(i) is self.pacs], label_of)
