"""The one place a client's input becomes typed values: every field declared, every number checked.

- JSON from a client (a form field such as MONAI Label's `params`, or a request body) is parsed by
  `parse_json`: integers longer than 18 digits, `NaN`/`Infinity` and nesting deeper than Python can
  follow are refused with a 422 that names the field (they used to be 500s).
- Each request's fields are a pydantic model with strict types: a coordinate is an int or a float
  (never a boolean, never a string) inside +-2^31; a seed is an int; `label_info` is a list of
  `{name, idx}`; a client id is a string. A violation is an `InputError` (422) naming the field, as
  `params.foreground.0.1: ...`.
- Unknown fields in MONAI Label's `params` are ignored (clients send more than we use); the web
  API's bodies forbid them.
- A point (`Point`, `Coordinate`) is checked here once; the desk takes the typed value and only
  places it in the image (inside its shape, which slice), which needs the image.
"""

from __future__ import annotations

import json
import math
from typing import Annotated, Any, Union

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr, ValidationError
from pydantic.functional_validators import AfterValidator

from fedpoint.client.session import InputError
from fedpoint.shared.validation_errors import describe_validation_error

MAX_INT_DIGITS = 18
MAX_COORDINATE = 2**31 - 1
MAX_JSON_CHARS = 1 << 20
POINT_FIELDS = {"foreground", "background", "point"}  # params are small: 1 MiB of JSON is far more than any client sends


def _finite(value: float | int) -> float | int:
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("must be a finite number")
    if abs(value) > MAX_COORDINATE:
        raise ValueError(f"must lie within +-{MAX_COORDINATE}")
    return value


Coordinate = Annotated[Union[StrictInt, StrictFloat], AfterValidator(_finite)]
Point = Annotated[list[Coordinate], Field(min_length=2, max_length=3)]
Seed = Annotated[StrictInt, Field(ge=-(2**63), le=2**63 - 1)]
SliceIndex = Annotated[StrictInt, Field(ge=0, le=MAX_COORDINATE)]
RequestId = Annotated[StrictStr, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]*$")]


class LabelInfo(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: StrictStr | None = None
    idx: Annotated[StrictInt, Field(ge=0, le=MAX_COORDINATE)] | None = None


class InferParams(BaseModel):
    """MONAI Label's `params` of `POST /infer/{model}`."""
    model_config = ConfigDict(extra="ignore")
    foreground: list[Point] | None = None
    background: list[Point] | None = None
    # A box prompt as MONAI Label's SAM2 integration sends one: [x0, y0, x1, y1] (2D; on a slice of a
    # volume with `roi_slice`, or [x0, y0, z0, x1, y1, z1] in 3D), end exclusive, image index space.
    roi: Annotated[list[Coordinate], Field(min_length=4, max_length=6)] | None = None
    roi_slice: SliceIndex | None = None
    client_id: StrictStr | None = None
    label: StrictStr | None = None  # the structure the points are for (a segment's name); default the first
    route: StrictStr | None = None  # a volume: propagate, 3d or slice (`volumes.ROUTES`); default the site's
    result_extension: StrictStr | None = None  # OHIF asks for ".nrrd"; default ".nii.gz"
    result_dtype: StrictStr | None = None      # default "uint8"


class SaveParams(BaseModel):
    """MONAI Label's `params` of `PUT /datastore/label`."""
    model_config = ConfigDict(extra="ignore")
    label_info: list[LabelInfo] | None = None
    client_id: StrictStr | None = None
    request_id: RequestId | None = None


class NextImageParams(BaseModel):
    """The body of `POST /activelearning/{name}` (a next-image choice)."""
    model_config = ConfigDict(extra="ignore")
    seed: Seed | None = None


class TrainParams(BaseModel):
    """The body of `POST /train/`: which structure's episode (an episode is configured by the site, not by the request)."""
    model_config = ConfigDict(extra="ignore")
    structure: StrictStr | None = Field(None, max_length=128, description="which structure (site.toml labels); default the first")


class ClickBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    point: Point = Field(description="[x, y] or [x, y, z], image index space")
    positive: StrictBool = True
    structure: StrictStr | None = Field(None, max_length=128, description="which structure (site.toml labels); default the first")


class BoxBody(BaseModel):
    """A box drawn on the page: its first (`lo`) and last (`hi`) pixel, both inside the box, [x, y] or
    [x, y, z] in image index space; on a slice of a volume, the slice is `z` or `slice`."""
    model_config = ConfigDict(extra="forbid")
    lo: Point = Field(description="the box's first corner, inside it")
    hi: Point = Field(description="the box's last corner, inside it")
    slice: SliceIndex | None = None
    structure: StrictStr | None = Field(None, max_length=128, description="which structure (site.toml labels); default the first")


class SliceBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    slice: SliceIndex | None = None
    request_id: RequestId | None = None
    structure: StrictStr | None = Field(None, max_length=128)


def _bounded_int(text: str) -> int:
    digits = text.lstrip("-")
    if len(digits) > MAX_INT_DIGITS:
        raise InputError(f"an integer of {len(digits)} digits; at most {MAX_INT_DIGITS} are accepted")
    return int(text)


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise InputError(f"{text[:20]} is not a finite number")
    return value


def _no_constant(name: str):
    raise InputError(f"{name} is not a number JSON allows")


def parse_json(text: str | bytes | None, field: str) -> Any:
    """A client's JSON text, refusing what Python's json would accept but the service cannot use."""
    if text is None or (isinstance(text, (str, bytes)) and not text.strip()):
        return None
    if len(text) > MAX_JSON_CHARS:
        raise InputError(f"{field}: {len(text)} characters of JSON; at most {MAX_JSON_CHARS} are accepted")
    try:
        return json.loads(text, parse_int=_bounded_int, parse_float=_finite_float, parse_constant=_no_constant)
    except InputError as err:
        raise InputError(f"{field}: {err}") from None
    except (ValueError, UnicodeDecodeError) as err:  # JSONDecodeError is a ValueError
        raise InputError(f"{field} is not valid JSON ({err})") from None
    except RecursionError:
        raise InputError(f"{field}: JSON nested too deeply") from None


def check(model: type[BaseModel], data: Any, field: str) -> BaseModel:
    """`data` as `model`, or an InputError naming every offending field (`params.seed: ...`)."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise InputError(f"{field} must be a JSON object, not {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise InputError(describe_validation_error(err, within=(field,), limit=5, hint=_point_hint)) from None


def _point_hint(loc: tuple) -> str:
    return " (points are [x, y] or [x, y, z], image index space)" if set(loc) & POINT_FIELDS else ""


async def json_body(request, model: type[BaseModel], field: str = "body") -> BaseModel:
    """A request's JSON body (empty: every field at its default) checked as `model`."""
    return check(model, parse_json(await request.body(), field), field)
