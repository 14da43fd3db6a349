"""The MONAI Label REST subset that 3D Slicer's and OHIF's plugins and `MONAILabelClient` use.

Supported: `GET /info/`, `POST /infer/{model}` (points in `params`; reply multipart params + NIfTI
label, or `output=image|json`), `GET /datastore/?output=stats|all|train`, `GET /datastore/image`,
`GET /datastore/label`, `PUT /datastore/label` (a final label: into the cache through the session
accept, so the post-interaction update runs), `POST /activelearning/{first|random|uncertain}`,
`POST /train/`, `POST /train/{model}`, `GET /train/` (with `check_if_running`).
Not supported (answered with a clear 4xx/501 that names what is missing): uploading or deleting
images (`PUT`/`DELETE /datastore/`), sessions (`/session/`), model download (`/model/`), scoring
(`/scoring/`), batch inference (`/batch/`), logs (`/logs/`), `file`/`label` uploads to infer
(scribbles), stopping training. Login: `/auth/`, `/auth/token`, `/auth/token/valid` (`auth_router`).
`/infer` honours `result_extension` (.nii.gz, .nii, .nrrd) and `result_dtype`. Points are image index space: [x, y(, z)] as 3D Slicer sends (IJK).
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from collections import Counter
from typing import TYPE_CHECKING

import numpy as np

from fastapi import APIRouter, Depends, File, Form, HTTPException, Query, Request, UploadFile
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

import fedpoint
from fedpoint.client.service.desk import AnnotationDesk
from fedpoint.client.service.images import (LoadedImage, check_result_format, file_response_bytes, label_file_bytes,
                                            nifti_bytes, read_label)
from fedpoint.client.service.next_image import CHOICES
from fedpoint.client.service.security import shared_name, valid_id
from fedpoint.client.service.sessions import OpenSession
from fedpoint.client.service.validation import InferParams, NextImageParams, SaveParams, TrainParams, check, json_body, parse_json
from fedpoint.client.session import InputError
from fedpoint.shared.clicks import Box, Click

if TYPE_CHECKING:  # the state builds this module's LabelOperations
    from fedpoint.client.service.state import ServiceState
    from fedpoint.client.service.volumes import VolumeOperations

MODEL_NAME = "fedpoint"
DEFAULT_CLIENT = "monailabel"
NIFTI_TYPE = "application/gzip"


def _params(text: str | None, model):
    """The `params` form field, parsed and checked as `model` (a 422 naming the field otherwise)."""
    return check(model, parse_json(text, "params"), "params")


def _client(params, named: str | None, guard) -> str:
    """Who is annotating: a named user's token says; with the site token the client's `client_id`
    (never a named user's name)."""
    return named or shared_name(guard, params.client_id, DEFAULT_CLIENT)


def _media_type(filename: str) -> str:
    return NIFTI_TYPE if filename.endswith(".gz") else "application/octet-stream"


def multipart(params: dict, data: bytes, filename: str) -> Response:
    """MONAI Label's infer reply: a `params` JSON part and the label file part."""
    boundary = secrets.token_hex(16)
    head = (f'--{boundary}\r\nContent-Disposition: form-data; name="params"\r\n'
            f"Content-Type: application/json\r\n\r\n{json.dumps(params)}\r\n"
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{filename}"\r\n'
            f"Content-Type: {_media_type(filename)}\r\n\r\n").encode()
    return Response(head + data + f"\r\n--{boundary}--\r\n".encode(), media_type=f"multipart/form-data; boundary={boundary}")


def file_reply(data: bytes, filename: str) -> Response:
    return Response(data, media_type=_media_type(filename), headers={"content-disposition": f'attachment; filename="{filename}"'})


class LabelOperations:
    """MONAI Label's label work on the desk: `infer` brings a user's sessions to a client's points,
    `save_label` puts a client's final label into the cache through the sessions' accept."""

    def __init__(self, desk: AnnotationDesk, volumes: "VolumeOperations | None" = None):
        self.desk, self.volumes = desk, volumes

    def infer(self, image_id: str, user: str, foreground: list, background: list,
              structure: str | None = None, roi: list | None = None, roi_slice: int | None = None,
              route: str | None = None) -> tuple[np.ndarray, dict]:
        """Bring the user's sessions on this image to exactly these points (and box); returns (label volume, params).

        Clients send every point each time. Points the session already has are kept (no repeated
        update); a point that disappeared undoes back to before it; new points are clicked in order.
        `roi` is a box as MONAI Label's SAM2 integration sends it, [x0, y0, x1, y1] (end exclusive;
        `roi_slice` its slice on a volume annotated slice by slice) or [x0, y0, z0, x1, y1, z1]; it
        starts its session, and a changed box starts the session again. On a volume, `route`
        (`volumes.ROUTES`; default the site's) picks how: `propagate` is `VolumeOperations.infer`.
        """
        desk = self.desk
        loaded = desk.load(image_id)
        structure = desk.structure(structure)
        max_points = desk.config.max_points
        if len(foreground) + len(background) == 0 and roi is None:
            raise InputError("give at least one foreground or background point, or a box (params.roi)")
        if len(foreground) + len(background) > max_points:
            raise InputError(f"{len(foreground) + len(background)} points; at most {max_points} are accepted")
        if roi is not None and len(roi) not in (4, 6):
            raise InputError(f"params.roi: {len(roi)} numbers; give [x0, y0, x1, y1] or [x0, y0, z0, x1, y1, z1]")
        if self.volumes is not None and (route is not None or loaded.ndim == 3):
            if self.volumes.route_for(loaded, route, "params.route") == "propagate":
                return self.volumes.infer(loaded, user, structure, foreground, background, roi, roi_slice)
        groups: dict[int | None, list[Click]] = {}
        boxes: dict[int | None, Box] = {}
        if roi is not None:
            half = len(roi) // 2
            lo, hi = list(roi[:half]), [v - 1 for v in roi[half:]]  # MONAI Label's roi ends are exclusive
            z, lo_i, hi_i = desk.locate_box(loaded, lo, hi, roi_slice, field="params.roi")
            boxes[z] = Box(lo_i, hi_i)
            groups.setdefault(z, [])
        for points, positive in ((foreground, True), (background, False)):
            for point in points:
                z, local = desk.locate(loaded, point)
                groups.setdefault(z, []).append(Click(local, positive))
        t0 = time.perf_counter()
        for z, wanted in groups.items():
            _sync(desk.session(loaded, user, z, structure), wanted, boxes.get(z))
        label = self.label_volume(loaded, user, structure)
        desk.audit.record(user, "infer", image_id, foreground=len(foreground), background=len(background),
                          box=roi is not None)
        params = {"label_names": {structure: desk.config.label_values[structure]}, "structure": structure,
                  "latencies": {"total": round(time.perf_counter() - t0, 4)},
                  "slices": [z for z in groups if z is not None], "adapter_version": desk.engine.model.version}
        return label, params

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

    def save_label(self, image_id: str, user: str, label: np.ndarray, values: dict[str, int | None],
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
        key = f"{image_id}|{user}|{request_id}"
        with desk.saving(image_id, user):
            if key in desk.requests:
                return {"cases": list(desk.requests[key]), "duplicate": True}
            result = self._save_label(image_id, user, label, values, key)
        problems = result.pop("after_effects", []) + desk.audit.record(user, "save_label", image_id, cases=result["cases"],
                                                                        structures=sorted(values))
        return {**result, **({"after_effects": problems} if problems else {})}

    def _save_label(self, image_id: str, user: str, label: np.ndarray, values: dict[str, int | None], key: str) -> dict:
        """A final label from a client: each structure's annotated parts into the cache through a
        session accept, all in one cache write.

        The user's open session supplies the first click for the post-interaction update; a label
        made without clicks here gets a first click at its deepest point (`SiteEngine.accept`). A
        volume on a 2D model adds the slices this user clicked on, then the largest others, up to
        `max_label_slices` (per structure).
        """
        loaded = self.desk.load(image_id)
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


def info(state: ServiceState) -> dict:
    config, dims = state.config, state.model_cfg.spatial_dims
    ids = state.images.ids()
    return {
        "name": f"fedpoint site {config.site}",
        "description": "fedpoint interactive segmentation with online adapter updates (MONAI Label subset)",
        "version": fedpoint.__version__,
        "labels": config.structures,
        "models": {MODEL_NAME: {
            "type": "deepgrow",
            "labels": config.label_values,
            "dimension": dims,
            "description": f"{dims}D click model, adapter {state.engine.adapter.kind}, mode {config.mode}"
                           + ("; a volume: params.route propagate (default: the mask carried through the slices) "
                              "or slice (one slice at a time, last axis)" if dims == 2 else ""),
        }},
        "trainers": {MODEL_NAME: {"description": "a training episode on the site's annotation cache"}},
        "strategies": {name: {"description": text} for name, text in CHOICES.items()},
        "scoring": {},
        "train_stats": {MODEL_NAME: state.training.last_result() or {}},
        "datastore": datastore_stats(state, ids),
    }


def datastore_stats(state: ServiceState, ids: list[str] | None = None) -> dict:
    ids = state.images.ids() if ids is None else ids
    completed = sum(1 for i in ids if i in state.desk.cases_by_image)
    return {"total": len(ids), "completed": completed, "label_tags": {"final": completed}, "train": state.desk.cache_size()}


def datastore_all(state: ServiceState) -> dict:
    objects = {}
    for image_id in state.images.ids():
        entry = {"image": {"ext": "".join(state.images.path(image_id).suffixes), "info": {"name": image_id}}, "labels": {}}
        if image_id in state.desk.cases_by_image:
            entry["labels"]["final"] = {"ext": ".nii.gz", "info": {"cases": state.desk.cases_by_image[image_id]}}
        objects[image_id] = entry
    return {"name": state.config.site, "description": "fedpoint site images and annotation cache", "objects": objects}


def router(state: ServiceState, require) -> APIRouter:
    api = APIRouter(dependencies=[Depends(require)])

    def check_model(model: str) -> None:
        if model != MODEL_NAME:
            raise HTTPException(404, f"unknown model {model!r}; this site serves {MODEL_NAME!r}")

    @api.get("/info/")
    def get_info() -> dict:
        return info(state)

    @api.post("/infer/{model}")
    def infer(model: str, image: str = Query(""), output: str | None = Query(None), session_id: str = Query(""),
              params: str = Form("{}"), file: UploadFile | None = File(None), label: UploadFile | None = File(None),
              named: str | None = Depends(require)):
        check_model(model)
        if file is not None or label is not None or session_id:
            raise InputError("uploaded images, scribble labels and sessions are not supported: infer on an image of the site")
        if not image:
            raise InputError("give ?image=<id> of an image in the site's datastore")
        if output not in (None, "all", "image", "json"):
            raise InputError(f"output {output!r} is not supported; use image, json or all")
        request = _params(params, InferParams)
        extension, dtype = request.result_extension or ".nii.gz", request.result_dtype or "uint8"
        check_result_format(extension, dtype)  # a bad format fails before any click
        user = _client(request, named, getattr(state, "guard", None))
        label_volume, reply = state.labels.infer(valid_id(image), user, request.foreground or [],
                                                 request.background or [], request.label, request.roi, request.roi_slice,
                                                 request.route)
        if output == "json":
            return reply
        data = label_file_bytes(label_volume, state.desk.load(image).affine, extension, dtype)
        name = f"label_{image}{extension}"
        return file_reply(data, name) if output == "image" else multipart(reply, data, name)

    @api.get("/datastore/")
    def datastore(output: str = Query("stats")) -> dict | list:
        if output == "all":
            return datastore_all(state)
        if output == "train":
            return [{"image": i, "label": i} for i in state.images.ids() if i in state.desk.cases_by_image]
        if output != "stats":
            raise InputError(f"output {output!r} is not supported; use stats, all or train")
        return datastore_stats(state)

    @api.get("/datastore/image")
    def download_image(image: str = Query(...)) -> Response:
        data, name = file_response_bytes(state.desk.load(valid_id(image)))
        return file_reply(data, name)

    @api.get("/datastore/label")
    def download_label(label: str = Query(...), tag: str = Query("final")) -> Response:
        if tag != "final":
            raise LookupError(f"only final labels are kept (tag {tag!r} asked)")
        loaded = state.desk.load(valid_id(label))
        volume = state.desk.stored_label(loaded)
        if volume is None:
            raise LookupError(f"{label} has no accepted label yet")
        return file_reply(nifti_bytes(volume, loaded.affine), f"{label}.nii.gz")

    @api.put("/datastore/label")
    def save_label(image: str = Query(...), tag: str = Query("final"), params: str = Form("{}"),
                   label: UploadFile = File(...), named: str | None = Depends(require)) -> dict:
        if tag not in ("", "final"):
            raise InputError(f"only final labels go into the annotation cache (tag {tag!r} given)")
        request = _params(params, SaveParams)
        loaded = state.desk.load(valid_id(image))
        data = label.file.read(int(state.config.max_upload_mb * 2**20) + 1)
        if len(data) > state.config.max_upload_mb * 2**20:
            raise HTTPException(413, "label file larger than max_upload_mb")
        if is_dicom(data, label.filename):
            array, values = seg_label(data, loaded, state.config.label_values, state.config.max_decoded_bytes)
        else:
            array = read_label(data, label.filename or "label.nii.gz", loaded.shape,
                               int(state.config.max_decoded_mb * 2**20), loaded.affine)
            values = label_values(request, state.config.label_values)
        result = state.labels.save_label(image, _client(request, named, getattr(state, "guard", None)), array, values, request.request_id)
        return {"image": image, "label": image, **result}

    @api.post("/activelearning/{strategy}")
    async def next_sample(strategy: str, request: Request) -> dict:
        if strategy not in CHOICES:  # MONAI Label's word for a next-image choice
            raise HTTPException(404, f"unknown strategy {strategy!r}; known: {', '.join(CHOICES)}")
        params = await json_body(request, NextImageParams)
        return await run_in_threadpool(_next_sample, strategy, params.model_dump(exclude_none=True))

    def _next_sample(strategy: str, params: dict) -> dict:
        image_id, details = state.next_image.choose(strategy, params)
        if image_id is None:
            return {}
        return {"id": image_id, "name": state.images.path(image_id).name, "strategy": strategy, **details}

    def start_training() -> dict:
        return state.training.start()

    @api.post("/train/")
    async def train(request: Request) -> dict:
        await json_body(request, TrainParams)
        return await run_in_threadpool(start_training)

    @api.post("/train/{model}")
    async def train_model(model: str, request: Request) -> dict:
        check_model(model)
        await json_body(request, TrainParams)
        return await run_in_threadpool(start_training)

    @api.get("/train/")
    def train_status(check_if_running: bool = Query(False), all: bool = Query(False)):
        status = state.training.status()
        if check_if_running and status["status"] != "RUNNING":
            return JSONResponse({"detail": "no training task is running"}, status_code=404)
        return status

    @api.delete("/train/")
    def train_stop():
        return JSONResponse({"detail": "stopping an episode is not supported; it ends after its configured epochs"},
                            status_code=501)

    # MONAI Label routes this service does not offer: a clear 501 naming what is missing, not a bare 404/405.
    unsupported = {
        "session": "sessions (uploading an image for one inference session) are not supported: infer on an image of the site",
        "model": "model download is not supported: the site's base and adapters never leave it",
        "scoring": "scoring tasks are not supported",
        "batch": "batch inference is not supported",
        "logs": "server logs are not served over the API",
    }
    methods = ["GET", "POST", "PUT", "DELETE"]
    for prefix, why in unsupported.items():
        def answer(path: str = "", why: str = why):
            return JSONResponse({"detail": why}, status_code=501)
        api.add_api_route(f"/{prefix}/", answer, methods=methods, include_in_schema=False)
        api.add_api_route(f"/{prefix}/{{path:path}}", answer, methods=methods, include_in_schema=False)

    @api.put("/datastore/")
    @api.delete("/datastore/")
    def datastore_write():
        return JSONResponse({"detail": "adding or removing datastore images is not supported: put image files in the "
                                       "site's images folder"}, status_code=501)

    return api


def auth_router(guard) -> APIRouter:
    """MONAI Label's login routes, as 3D Slicer's plugin uses them: `GET /auth/` says login is on;
    `POST /auth/token` takes a user name and, as password, that user's token (or the site token
    with any name, when shared tokens are allowed) and hands back the bearer token to send;
    `GET /auth/token/valid` tells whether a token still works and whose it is."""
    api = APIRouter(prefix="/auth")

    @api.get("/")
    def auth_enabled() -> dict:
        return {"enabled": True, "client_id": MODEL_NAME, "realm": None}

    @api.post("/token")
    def access_token(username: str = Form(...), password: str = Form(...)) -> dict:
        try:
            named = guard.identify(password)
        except HTTPException:
            named = ""
        if named is None and guard.has_users():  # the site token logs in as nobody once named users exist
            named = ""
        if named == "" or (named is not None and named != username):
            raise HTTPException(401, "wrong user name or token: the password is the token `fedpoint site user add` printed",
                                headers={"WWW-Authenticate": "Bearer"})
        return {"access_token": password, "token_type": "bearer"}

    @api.get("/token/valid")
    def valid(named: str | None = Depends(guard.require)) -> dict:
        return {"username": named or "site", "email": None, "name": named or "site token", "roles": ["annotator"]}

    return api


def is_dicom(data: bytes, filename: str | None) -> bool:
    return data[128:132] == b"DICM" or (filename or "").lower().endswith(".dcm")


def seg_label(data: bytes, loaded, structures: dict[str, int], max_bytes: int = 1 << 30) -> tuple[np.ndarray, dict[str, int]]:
    """A DICOM-SEG upload as a label map on a DICOM image: each segment whose label names one of
    the site's structures (a lone segment, for a one-structure site) takes that structure's value.
    A SEG made on another series, or on an image that is not DICOM, is refused. Its frames are
    checked against the image (size, count) before any is decoded."""
    from pydicom.errors import InvalidDicomError

    from fedpoint.data.dicom import HEADER_ERRORS, DicomError, check_seg_frames, read_dataset, read_seg

    if loaded.dicom is None:
        raise InputError(f"{loaded.id} is not a DICOM series: send a NIfTI, NRRD, PNG or NPY label, not a DICOM-SEG")
    try:
        dataset = read_dataset(data, "the uploaded DICOM-SEG", max_bytes)
        segments = {int(item.SegmentNumber): str(item.SegmentLabel) for item in dataset.SegmentSequence}
        check_seg_frames(dataset, loaded.dicom, len(segments), max_bytes)
    except DicomError as err:
        raise InputError(str(err)) from None
    except (InvalidDicomError, *HEADER_ERRORS, EOFError, OSError) as err:  # not DICOM, or not a SEG
        raise InputError(f"the uploaded DICOM is not a readable DICOM-SEG ({type(err).__name__})") from None
    chosen = {n: name for n, name in segments.items() if name in structures}
    if not chosen and len(structures) == 1 and len(segments) == 1:
        chosen = {next(iter(segments)): next(iter(structures))}
    if not chosen:
        raise InputError(f"the SEG's segments ({', '.join(segments.values())}) name none of this site's structures "
                         f"({', '.join(structures)})")
    label = np.zeros(loaded.shape, np.uint8)
    try:
        for number, name in chosen.items():
            label[read_seg(dataset, loaded.dicom, segment=number).reshape(loaded.shape) > 0] = structures[name]
    except DicomError as err:
        raise InputError(f"{loaded.id}: {err}") from None
    return label, {name: structures[name] for name in chosen.values()}


def label_values(params: SaveParams, structures: dict[str, int]) -> dict[str, int | None]:
    """Which value of an uploaded label map is which of the site's structures.

    With `label_info` (3D Slicer sends one entry per segment), each of our structures it names
    takes its `idx`, and segments we do not label are ignored; naming none of ours is an error.
    Without it, one structure takes every non-zero voxel and several take 1, 2, ... in site.toml order."""
    if params.label_info:
        named = {item.name: item.idx for item in params.label_info if item.name in structures}
        if 0 in named.values():
            zero = next(name for name, idx in named.items() if idx == 0)
            raise InputError(f"label_info gives {zero!r} idx 0, the background value of a label map; give its own value")
        if not named:
            given = ", ".join(repr(item.name) for item in params.label_info)
            raise InputError(f"label_info names {given}; this site labels {', '.join(structures)}")
        return {name: (idx if idx is not None else structures[name]) for name, idx in named.items()}
    if len(structures) == 1:
        return {next(iter(structures)): None}
    return dict(structures)
