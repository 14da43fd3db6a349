"""The page's volume API (`/api/volumes/...`): a thin router over `volumes.VolumeOperations`.

One annotation of a whole volume by a route (`propagate` on a 2D base, `3d` on a 3D base; the
default is the site's): a box or click on any slice, the 3D mask back (the shown slice's mask
and the slices that hold it), undo, accept, discard, and `progress` while a propagation runs.
"""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr

from fedpoint.client.service.routes_web import mask_payload, user_dependency
from fedpoint.client.service.security import valid_id
from fedpoint.client.service.validation import Point, RequestId, SliceIndex
from fedpoint.client.service.volumes import VolumeView
from fedpoint.client.session import InputError

Route = Literal["propagate", "3d"]
Structure = StrictStr


class VolumeBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    route: Route | None = Field(None, description="propagate (a 2D base) or 3d (a 3D base); default the site's")
    structure: Structure | None = Field(None, max_length=128)


class VolumeClickBody(VolumeBody):
    point: Point = Field(description="[x, y, z], image index space")
    positive: StrictBool = True


class VolumeBoxBody(VolumeBody):
    lo: Point = Field(description="the box's first corner, inside it: [x, y, z] or [x, y] with slice")
    hi: Point = Field(description="the box's last corner, inside it")
    slice: SliceIndex | None = None


class VolumeAcceptBody(VolumeBody):
    request_id: RequestId | None = None


def payload(view: VolumeView, shown: int) -> dict:
    """A view as the page draws it: the shown slice's mask, the slices the 3D mask holds, the prompts."""
    return {"route": view.route, "slice": shown, "mask": mask_payload(view.mask[..., shown]),
            "mask_slices": view.mask_slices, "user_slices": view.user_slices, "clicks": view.clicks,
            "boxes": view.boxes, "server_ms": round(view.seconds * 1e3, 2),
            "server_cpu_ms": round(view.cpu_seconds * 1e3, 2), "slices_predicted": view.predicted,
            **({"after_effects": view.problems} if view.problems else {})}


def volume_router(state, require) -> APIRouter:
    router = APIRouter(prefix="/api/volumes", dependencies=[Depends(require)])
    user_of = user_dependency(require, getattr(state, "guard", None))
    volumes = state.volumes

    @router.get("/{image_id}")
    def view(image_id: str, slice: int = Query(0), route: Route | None = Query(None),
             structure: str | None = Query(None, max_length=128), user: str = Depends(user_of)) -> dict:
        found = volumes.view(valid_id(image_id), user, route, structure)
        if not 0 <= slice < found.mask.shape[-1]:
            raise InputError(f"slice: {image_id} has {found.mask.shape[-1]} slices; there is no slice {slice}")
        return {**payload(found, slice), "routes": volumes.routes()}

    @router.get("/{image_id}/progress")
    def progress(image_id: str, structure: str | None = Query(None, max_length=128), user: str = Depends(user_of)) -> dict:
        return volumes.progress(valid_id(image_id), user, structure)

    @router.post("/{image_id}/click")
    def click(image_id: str, body: VolumeClickBody, user: str = Depends(user_of)) -> dict:
        found = volumes.click(valid_id(image_id), user, body.point, body.positive, body.route, body.structure)
        return payload(found, int(round(body.point[-1])))

    @router.post("/{image_id}/box")
    def box(image_id: str, body: VolumeBoxBody, user: str = Depends(user_of)) -> dict:
        found = volumes.box(valid_id(image_id), user, body.lo, body.hi, body.slice, body.route, body.structure)
        shown = body.slice if body.slice is not None else int(round(body.lo[-1]))
        return payload(found, shown)

    @router.post("/{image_id}/undo")
    def undo(image_id: str, body: VolumeBody, slice: int = Query(0), user: str = Depends(user_of)) -> dict:
        found = volumes.undo(valid_id(image_id), user, body.route, body.structure)
        return payload(found, min(max(slice, 0), found.mask.shape[-1] - 1))

    @router.post("/{image_id}/accept")
    def accept(image_id: str, body: VolumeAcceptBody, user: str = Depends(user_of)) -> dict:
        return volumes.accept(valid_id(image_id), user, body.route, body.structure, body.request_id)

    @router.post("/{image_id}/discard")
    def discard(image_id: str, body: VolumeBody, user: str = Depends(user_of)) -> dict:
        volumes.discard(valid_id(image_id), user, body.route, body.structure)
        return {"discarded": True}

    return router
