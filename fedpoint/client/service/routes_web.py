"""The annotation page and its JSON API (`/api/...`).

Pixels travel as raw float32 slices (the page applies window/level itself, so a CT keeps its HU),
masks as bit-packed rows (base64): a 512 x 512 mask is 32 KiB before base64. A named user's token
says who the user is; with the site token the `X-Fedpoint-User` header names them. Each user has
their own sessions.
"""

from __future__ import annotations

import base64
from pathlib import Path

import numpy as np
from fastapi import APIRouter, Depends, Header, Query
from fastapi.responses import FileResponse, Response
from fedpoint.client.service.desk import AnnotationDesk, SessionView
from fedpoint.client.service.security import shared_name, valid_id
from fedpoint.client.service.state import ServiceState
from fedpoint.client.service.validation import BoxBody, ClickBody, SliceBody

WEB = Path(__file__).resolve().parent / "web"
DEFAULT_USER = "web"


def mask_payload(mask: np.ndarray) -> dict:
    """A 2D mask (x, y) as rows of bits, top row first, as the page draws it."""
    rows = np.ascontiguousarray(np.asarray(mask, dtype=bool).T)
    return {"width": int(mask.shape[0]), "height": int(mask.shape[1]), "area": int(rows.sum()),
            "bits": base64.b64encode(np.packbits(rows.ravel()).tobytes()).decode()}


def user_dependency(require, guard=None):
    """The request's user: a named user's token says who it is; with the site token the client
    names the user (`X-Fedpoint-User`), never a named user (`guard.shared_user`). FastAPI runs
    `require` once per request."""

    def user_of(named: str | None = Depends(require), x_fedpoint_user: str | None = Header(None)) -> str:
        return named or shared_name(guard, x_fedpoint_user, DEFAULT_USER)

    return user_of


def page_router() -> APIRouter:
    """The page itself: static code, no site data, so no token (the page asks for it)."""
    router = APIRouter()

    @router.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(WEB / "index.html", media_type="text/html")

    @router.get("/static/{name}", include_in_schema=False)
    def static(name: str) -> FileResponse:
        files = {p.name: p for p in WEB.iterdir() if p.is_file()}  # a fixed listing: no path is built from the URL
        if name not in files:
            return Response(status_code=404)
        return FileResponse(files[name])

    return router


def clicks_payload(view: SessionView) -> list[dict]:
    """The session's clicks as the page draws them, [x, y(, z)] (z: the session's slice, where it has one)."""
    extra = [view.slice] if view.slice is not None else []
    return [{"point": [*click.point, *extra], "positive": click.positive} for click in view.clicks]


def box_payload(view: SessionView) -> dict | None:
    """The session's box as the page draws it: first and last pixel, [x, y(, z)]."""
    if view.box is None:
        return None
    extra = [view.slice] if view.slice is not None else []
    return {"lo": [*view.box.lo, *extra], "hi": [*(h - 1 for h in view.box.hi), *extra]}


def session_payload(view: SessionView) -> dict:
    """What every session reply carries: the shown slice's mask, the clicks, the box, the slices holding the mask."""
    return {"mask": mask_payload(view.plane), "clicks": clicks_payload(view), "box": box_payload(view),
            "mask_slices": view.mask_slices}


def prompt_payload(view: SessionView) -> dict:
    """The reply to a click or a box: the session, the shown slice, and how long the model took."""
    return {**session_payload(view), "slice": view.shown, "structure": view.structure,
            "server_ms": round(view.seconds * 1e3, 2), "predict_ms": round(view.predict_ms, 2),
            "update_ms": round(view.update_ms, 2), **({"after_effects": view.problems} if view.problems else {})}


def api_router(state: ServiceState, require) -> APIRouter:
    """`/api/...`: the site's images and each user's sessions; every operation is one call on the desk."""
    router = APIRouter(prefix="/api", dependencies=[Depends(require)])
    user_of = user_dependency(require, getattr(state, "guard", None))
    _image_routes(router, state)
    _session_routes(router, state.desk, user_of)

    @router.get("/status")
    def status() -> dict:
        return state.status()

    @router.get("/me")
    def me(named: str | None = Depends(require), user: str = Depends(user_of)) -> dict:
        """Who the page is annotating as: a named user (from the token) cannot be renamed."""
        return {"user": user, "named": named is not None}

    @router.post("/banks/check")
    def check_banks() -> dict:
        """Look for a delivered bank now instead of at the next poll."""
        return {"review": state.banks.check(), "last": state.banks.last}

    return router


def _image_routes(router: APIRouter, state: ServiceState) -> None:
    desk = state.desk

    @router.get("/images")
    def images() -> dict:
        return {"images": [{"id": i, "labelled": i in desk.cases_by_image} for i in state.images.ids()],
                "skipped": [{"file": f, "reason": r} for f, r in state.images.skipped]}

    @router.get("/images/{image_id}")
    def image_meta(image_id: str) -> dict:
        loaded = desk.load(valid_id(image_id))
        return {**loaded.meta(), "per_slice": desk.sliced(loaded), "labelled": image_id in desk.cases_by_image}

    @router.get("/images/{image_id}/slice/{z}")
    def image_slice(image_id: str, z: int) -> Response:
        loaded = desk.load(valid_id(image_id))
        if not 0 <= z < loaded.slices:
            raise LookupError(f"{image_id} has {loaded.slices} slice(s); there is no slice {z}")
        plane = loaded.display if loaded.ndim == 2 else loaded.display[..., z]
        rows = np.ascontiguousarray(plane.T, dtype="<f4")
        return Response(rows.tobytes(), media_type="application/octet-stream",
                        headers={"x-width": str(plane.shape[0]), "x-height": str(plane.shape[1])})

    @router.get("/next")
    def next_image(after: str | None = Query(None)) -> dict:
        todo = sorted(desk.unlabelled())
        later = [i for i in todo if after is None or i > after]
        return {"id": (later or todo or [None])[0], "remaining": len(todo)}


def _session_routes(router: APIRouter, desk: AnnotationDesk, user_of) -> None:
    @router.get("/sessions/{image_id}")
    def session_view(image_id: str, slice: int = Query(0), structure: str | None = Query(None, max_length=128),
                     user: str = Depends(user_of)) -> dict:
        view = desk.view(valid_id(image_id), user, slice, structure)
        return {**session_payload(view), "slice": slice, "structure": view.structure}

    @router.post("/sessions/{image_id}/click")
    def click(image_id: str, body: ClickBody, user: str = Depends(user_of)) -> dict:
        return prompt_payload(desk.click(valid_id(image_id), user, body.point, body.positive, structure=body.structure))

    @router.post("/sessions/{image_id}/box")
    def box(image_id: str, body: BoxBody, user: str = Depends(user_of)) -> dict:
        """Start the annotation with a box (a base trained with box prompts); clicks then refine it."""
        return prompt_payload(desk.box(valid_id(image_id), user, body.lo, body.hi, body.slice, structure=body.structure))

    @router.post("/sessions/{image_id}/undo")
    def undo(image_id: str, body: SliceBody, user: str = Depends(user_of)) -> dict:
        return session_payload(desk.undo(valid_id(image_id), user, body.slice, body.structure))

    @router.post("/sessions/{image_id}/accept")
    def accept(image_id: str, body: SliceBody, user: str = Depends(user_of)) -> dict:
        return desk.accept_current(valid_id(image_id), user, body.slice, body.request_id, body.structure)

    @router.post("/sessions/{image_id}/discard")
    def discard(image_id: str, body: SliceBody, user: str = Depends(user_of)) -> dict:
        desk.discard(valid_id(image_id), user, body.slice, body.structure)
        return {"discarded": True}
