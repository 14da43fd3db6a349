"""The MONAI Label REST subset that 3D Slicer's and OHIF's plugins and `MONAILabelClient` use.

Supported: `GET /info/`, `POST /infer/{model}` (points in `params`; reply multipart params + NIfTI
label, or `output=image|json`), `GET /datastore/?output=stats|all|train`, `GET /datastore/image`,
`GET /datastore/label`, `PUT /datastore/label` (a final label: into the cache through the session
accept, so the post-interaction update runs), `POST /activelearning/{first|random|uncertain}`,
`POST /train/` (body `structure`), `POST /train/{model}` (the model, or a structure's name: that
structure's episode), `GET /train/` (with `check_if_running`; each structure's episodes under `structures`).
Not supported (answered with a clear 4xx/501 that names what is missing): uploading or deleting
images (`PUT`/`DELETE /datastore/`), sessions (`/session/`), model download (`/model/`), scoring
(`/scoring/`), batch inference (`/batch/`), logs (`/logs/`), `file`/`label` uploads to infer
(scribbles), stopping training. Login: `/auth/`, `/auth/token`, `/auth/token/valid` (`auth_router`).
`/infer` honours `result_extension` (.nii.gz, .nii, .nrrd) and `result_dtype`. Points are image index space: [x, y(, z)] as 3D Slicer sends (IJK).

The routes only parse and answer: the label work is `labels.LabelOperations` (on the desk).
"""

from __future__ import annotations

import json
import secrets
from typing import TYPE_CHECKING

from fastapi import APIRouter, Depends, File, Form, HTTPException, Query, Request, UploadFile
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

import fedpoint
from fedpoint.client.service.images import check_result_format, file_response_bytes, label_file_bytes, nifti_bytes
from fedpoint.client.service.journal import case_name
from fedpoint.client.service.next_image import CHOICES
from fedpoint.client.service.security import shared_name, valid_id
from fedpoint.client.service.validation import InferParams, NextImageParams, SaveParams, TrainParams, check, json_body, parse_json
from fedpoint.client.session import InputError

if TYPE_CHECKING:  # for annotations only: the routes are handed the state, never build it
    from fedpoint.client.service.state import ServiceState

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
        "trainers": trainers(state),
        "strategies": {name: {"description": text} for name, text in CHOICES.items()},
        "scoring": {},
        "train_stats": {MODEL_NAME: state.training.last_result() or {},
                        **{s: state.training.last_result(s) or {} for s in _structure_trainers(state)}},
        "datastore": datastore_stats(state, ids),
    }


def _structure_trainers(state: ServiceState) -> list[str]:
    """The structures a client may train by name (`/train/{structure}`): each of site.toml `labels`."""
    return list(state.config.labels or [])


def trainers(state: ServiceState) -> dict:
    first = state.config.structures[0]
    out = {MODEL_NAME: {"description": "a training episode on the site's annotation cache"
                                       + (f" ({first}'s, the first structure)" if state.config.labels else "")}}
    for structure in _structure_trainers(state):
        out[structure] = {"description": f"a training episode of the {structure} adapter on its own accepted cases"}
    return out


def train_structure(state: ServiceState, model: str | None, structure: str | None) -> str | None:
    """The structure a train request names: `model` (the path's: ours, or a structure's name) and
    the body's `structure`; None: the first. An unknown name is a 422 naming its field."""
    names = state.config.structures
    if model is not None and model != MODEL_NAME:
        if model not in _structure_trainers(state):
            raise InputError(f"model: unknown model {model!r}; this site trains {', '.join([MODEL_NAME, *_structure_trainers(state)])}")
        if structure is not None and structure != model:
            raise InputError(f"structure: {structure!r} differs from the model named in the path ({model!r})")
        return model
    if structure is not None and structure not in names:
        raise InputError(f"structure: unknown structure {structure!r}; this site labels {', '.join(names)}")
    return structure


def datastore_stats(state: ServiceState, ids: list[str] | None = None) -> dict:
    ids = state.images.ids() if ids is None else ids
    completed = sum(1 for i in ids if i in state.desk.cases_by_image)
    return {"total": len(ids), "completed": completed, "label_tags": {"final": completed}, "train": state.desk.cache_size()}


def datastore_all(state: ServiceState) -> dict:
    objects = {}
    for image_id in state.images.ids():
        entry = {"image": {"ext": "".join(state.images.path(image_id).suffixes), "info": {"name": image_id}}, "labels": {}}
        if image_id in state.desk.cases_by_image:
            cases = [case_name(c.task, c.name) for c in state.desk.cases_by_image[image_id]]
            entry["labels"]["final"] = {"ext": ".nii.gz", "info": {"cases": cases}}
        objects[image_id] = entry
    return {"name": state.config.site, "description": "fedpoint site images and annotation cache", "objects": objects}


def router(state: ServiceState, require) -> APIRouter:
    """MONAI Label's routes on the service's owners: label work on `state.labels` (over the desk), the
    datastore on `state.images`, next images on `state.next_image`, episodes on `state.training`."""
    api = APIRouter(dependencies=[Depends(require)])
    _label_routes(api, state, require)
    _datastore_routes(api, state)
    _training_routes(api, state)
    _unsupported_routes(api)
    return api


def _check_model(model: str) -> None:
    if model != MODEL_NAME:
        raise HTTPException(404, f"unknown model {model!r}; this site serves {MODEL_NAME!r}")


def _label_routes(api: APIRouter, state: ServiceState, require) -> None:
    @api.post("/infer/{model}")
    def infer(model: str, image: str = Query(""), output: str | None = Query(None), session_id: str = Query(""),
              params: str = Form("{}"), file: UploadFile | None = File(None), label: UploadFile | None = File(None),
              named: str | None = Depends(require)):
        _check_model(model)
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
        result = state.labels.infer(valid_id(image), user, request.foreground or [], request.background or [],
                                    request.label, request.roi, request.roi_slice, request.route)
        if output == "json":
            return result.params
        data = label_file_bytes(result.label, result.affine, extension, dtype)
        name = f"label_{image}{extension}"
        return file_reply(data, name) if output == "image" else multipart(result.params, data, name)

    @api.put("/datastore/label")
    def save_label(image: str = Query(...), tag: str = Query("final"), params: str = Form("{}"),
                   label: UploadFile = File(...), named: str | None = Depends(require)) -> dict:
        if tag not in ("", "final"):
            raise InputError(f"only final labels go into the annotation cache (tag {tag!r} given)")
        request = _params(params, SaveParams)
        image_id = valid_id(image)
        limit = int(state.config.max_upload_mb * 2**20)
        data = label.file.read(limit + 1)
        if len(data) > limit:
            raise HTTPException(413, "label file larger than max_upload_mb")
        user = _client(request, named, getattr(state, "guard", None))
        result = state.labels.save_upload(image_id, user, data, label.filename, request.label_info, request.request_id)
        return {"image": image, "label": image, **result}


def _datastore_routes(api: APIRouter, state: ServiceState) -> None:
    @api.get("/info/")
    def get_info() -> dict:
        return info(state)

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

    @api.put("/datastore/")
    @api.delete("/datastore/")
    def datastore_write():
        return JSONResponse({"detail": "adding or removing datastore images is not supported: put image files in the "
                                       "site's images folder"}, status_code=501)


def _training_routes(api: APIRouter, state: ServiceState) -> None:
    @api.post("/activelearning/{strategy}")
    async def next_sample(strategy: str, request: Request) -> dict:
        if strategy not in CHOICES:  # MONAI Label's word for a next-image choice
            raise HTTPException(404, f"unknown strategy {strategy!r}; known: {', '.join(CHOICES)}")
        params = await json_body(request, NextImageParams)
        return await run_in_threadpool(_next_sample, state, strategy, params.model_dump(exclude_none=True))

    @api.post("/train/")
    async def train(request: Request) -> dict:
        params = await json_body(request, TrainParams)
        return await run_in_threadpool(state.training.start, train_structure(state, None, params.structure))

    @api.post("/train/{model}")
    async def train_model(model: str, request: Request) -> dict:
        params = await json_body(request, TrainParams)
        return await run_in_threadpool(state.training.start, train_structure(state, model, params.structure))

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


def _next_sample(state: ServiceState, strategy: str, params: dict) -> dict:
    image_id, details = state.next_image.choose(strategy, params)
    if image_id is None:
        return {}
    return {"id": image_id, "name": state.images.path(image_id).name, "strategy": strategy, **details}


# MONAI Label routes this service does not offer: a clear 501 naming what is missing, not a bare 404/405.
UNSUPPORTED = {
    "session": "sessions (uploading an image for one inference session) are not supported: infer on an image of the site",
    "model": "model download is not supported: the site's base and adapters never leave it",
    "scoring": "scoring tasks are not supported",
    "batch": "batch inference is not supported",
    "logs": "server logs are not served over the API",
}


def _unsupported_routes(api: APIRouter) -> None:
    methods = ["GET", "POST", "PUT", "DELETE"]
    for prefix, why in UNSUPPORTED.items():
        def answer(path: str = "", why: str = why):
            return JSONResponse({"detail": why}, status_code=501)
        api.add_api_route(f"/{prefix}/", answer, methods=methods, include_in_schema=False)
        api.add_api_route(f"/{prefix}/{{path:path}}", answer, methods=methods, include_in_schema=False)


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
