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

import json
import secrets

import numpy as np

from fastapi import APIRouter, Depends, File, Form, HTTPException, Query, Request, UploadFile
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

import fedpoint
from fedpoint.client.service.images import (check_result_format, file_response_bytes, label_file_bytes, nifti_bytes,
                                            read_label)
from fedpoint.client.service.security import valid_id
from fedpoint.client.service.state import ServiceState
from fedpoint.client.service.strategies import STRATEGIES
from fedpoint.client.service.validation import InferParams, SaveParams, StrategyParams, TrainParams, check, json_body, parse_json
from fedpoint.client.session import InputError

MODEL_NAME = "fedpoint"
DEFAULT_CLIENT = "monailabel"
NIFTI_TYPE = "application/gzip"


def _params(text: str | None, model):
    """The `params` form field, parsed and checked as `model` (a 422 naming the field otherwise)."""
    return check(model, parse_json(text, "params"), "params")


def _client(params, named: str | None = None) -> str:
    """Who is annotating: a named user's token says; with the site token the client's `client_id`."""
    return named or valid_id(params.client_id or DEFAULT_CLIENT, "client_id")


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
                           + ("; a volume is annotated slice by slice (last axis)" if dims == 2 else ""),
        }},
        "trainers": {MODEL_NAME: {"description": "a training episode on the site's annotation cache"}},
        "strategies": {name: {"description": text} for name, text in STRATEGIES.items()},
        "scoring": {},
        "train_stats": {MODEL_NAME: state.training.last_result() or {}},
        "datastore": datastore_stats(state, ids),
    }


def datastore_stats(state: ServiceState, ids: list[str] | None = None) -> dict:
    ids = state.images.ids() if ids is None else ids
    completed = sum(1 for i in ids if i in state.cases_by_image)
    return {"total": len(ids), "completed": completed, "label_tags": {"final": completed}, "train": state.cache_size()}


def datastore_all(state: ServiceState) -> dict:
    objects = {}
    for image_id in state.images.ids():
        entry = {"image": {"ext": "".join(state.images.path(image_id).suffixes), "info": {"name": image_id}}, "labels": {}}
        if image_id in state.cases_by_image:
            entry["labels"]["final"] = {"ext": ".nii.gz", "info": {"cases": state.cases_by_image[image_id]}}
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
        label_volume, reply = state.infer(valid_id(image), _client(request, named), request.foreground or [],
                                          request.background or [], request.label)
        if output == "json":
            return reply
        data = label_file_bytes(label_volume, state.load(image).affine, extension, dtype)
        name = f"label_{image}{extension}"
        return file_reply(data, name) if output == "image" else multipart(reply, data, name)

    @api.get("/datastore/")
    def datastore(output: str = Query("stats")) -> dict | list:
        if output == "all":
            return datastore_all(state)
        if output == "train":
            return [{"image": i, "label": i} for i in state.images.ids() if i in state.cases_by_image]
        if output != "stats":
            raise InputError(f"output {output!r} is not supported; use stats, all or train")
        return datastore_stats(state)

    @api.get("/datastore/image")
    def download_image(image: str = Query(...)) -> Response:
        data, name = file_response_bytes(state.load(valid_id(image)))
        return file_reply(data, name)

    @api.get("/datastore/label")
    def download_label(label: str = Query(...), tag: str = Query("final")) -> Response:
        if tag != "final":
            raise LookupError(f"only final labels are kept (tag {tag!r} asked)")
        loaded = state.load(valid_id(label))
        volume = state.stored_label(loaded)
        if volume is None:
            raise LookupError(f"{label} has no accepted label yet")
        return file_reply(nifti_bytes(volume, loaded.affine), f"{label}.nii.gz")

    @api.put("/datastore/label")
    def save_label(image: str = Query(...), tag: str = Query("final"), params: str = Form("{}"),
                   label: UploadFile = File(...), named: str | None = Depends(require)) -> dict:
        if tag not in ("", "final"):
            raise InputError(f"only final labels go into the annotation cache (tag {tag!r} given)")
        request = _params(params, SaveParams)
        loaded = state.load(valid_id(image))
        data = label.file.read(int(state.config.max_upload_mb * 2**20) + 1)
        if len(data) > state.config.max_upload_mb * 2**20:
            raise HTTPException(413, "label file larger than max_upload_mb")
        if is_dicom(data, label.filename):
            array, values = seg_label(data, loaded, state.config.label_values)
        else:
            array = read_label(data, label.filename or "label.nii.gz", loaded.shape,
                               int(state.config.max_decoded_mb * 2**20))
            values = label_values(request, state.config.label_values)
        result = state.save_label(image, _client(request, named), array, values, request.request_id)
        return {"image": image, "label": image, **result}

    @api.post("/activelearning/{strategy}")
    async def next_sample(strategy: str, request: Request) -> dict:
        if strategy not in STRATEGIES:
            raise HTTPException(404, f"unknown strategy {strategy!r}; known: {', '.join(STRATEGIES)}")
        params = await json_body(request, StrategyParams)
        return await run_in_threadpool(_next_sample, strategy, params.model_dump(exclude_none=True))

    def _next_sample(strategy: str, params: dict) -> dict:
        image_id, details = state.next_image(strategy, params)
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


def seg_label(data: bytes, loaded, structures: dict[str, int]) -> tuple[np.ndarray, dict[str, int]]:
    """A DICOM-SEG upload as a label map on a DICOM image: each segment whose label names one of
    the site's structures (a lone segment, for a one-structure site) takes that structure's value.
    A SEG made on another series, or on an image that is not DICOM, is refused."""
    import io

    import pydicom

    from fedpoint.data.dicom import DicomError, read_seg

    if loaded.dicom is None:
        raise InputError(f"{loaded.id} is not a DICOM series: send a NIfTI, NRRD, PNG or NPY label, not a DICOM-SEG")
    try:
        dataset = pydicom.dcmread(io.BytesIO(data))
        segments = {int(item.SegmentNumber): str(item.SegmentLabel) for item in dataset.SegmentSequence}
    except Exception as err:  # noqa: BLE001 - not DICOM, or not a SEG
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
        if not named:
            given = ", ".join(repr(item.name) for item in params.label_info)
            raise InputError(f"label_info names {given}; this site labels {', '.join(structures)}")
        return {name: (idx if idx is not None else structures[name]) for name, idx in named.items()}
    if len(structures) == 1:
        return {next(iter(structures)): None}
    return dict(structures)
