"""fedpoint.client.service.validation on its own: a client's JSON and fields become typed values, every
refusal is an InputError (422) that names the field, and a point's form is checked here, once."""

from __future__ import annotations

import inspect

import pytest
from pydantic import ValidationError

from fedpoint.client.service import desk, validation
from fedpoint.client.service.validation import (MAX_COORDINATE, BoxBody, ClickBody, InferParams, SaveParams, check,
                                                parse_json)
from fedpoint.client.session import InputError


@pytest.mark.parametrize("text, says", [
    ("1234567890123456789", "params: an integer of 19 digits"),
    ("[NaN]", "params: NaN is not a number JSON allows"),
    ('{"x": 1e999}', "params: 1e999 is not a finite number"),
    ("[" * 5000 + "]" * 5000, "params: JSON nested too deeply"),
    ("{'x': 1}", "params is not valid JSON"),
])
def test_json_python_would_take_but_the_service_cannot_use_is_refused_naming_the_field(text, says):
    with pytest.raises(InputError, match=says.replace("[", r"\[")):
        parse_json(text, "params")


def test_json_that_is_fine_is_parsed_and_empty_means_defaults():
    assert parse_json('{"foreground": [[1, 2.5]], "seed": -7}', "params") == {"foreground": [[1, 2.5]], "seed": -7}
    assert parse_json("  ", "params") is None and parse_json(None, "params") is None
    assert check(InferParams, None, "params").foreground is None


def test_fields_are_strict_and_each_refusal_names_its_place():
    with pytest.raises(InputError, match=r"params\.foreground\.0\.1.*points are \[x, y\]"):
        check(InferParams, {"foreground": [[1, True]]}, "params")  # a boolean is no coordinate
    with pytest.raises(InputError, match=r"body\.point\.1: must lie within \+-2147483647"):
        check(ClickBody, {"point": [1, 2**40]}, "body")
    with pytest.raises(InputError, match=r"params\.request_id"):
        check(SaveParams, {"request_id": "../x"}, "params")
    with pytest.raises(InputError, match="params must be a JSON object, not list"):
        check(InferParams, [1, 2], "params")


def test_monai_label_params_may_carry_more_but_the_web_bodies_may_not():
    assert check(InferParams, {"foreground": [[1, 2]], "model_extra": 1}, "params").foreground == [[1, 2]]
    with pytest.raises(InputError, match=r"body\.zzz: Extra inputs are not permitted"):
        check(ClickBody, {"point": [1, 2], "zzz": 1}, "body")



@pytest.mark.parametrize("point", [[True, 1], ["3", 4], [1], [1, 2, 3, 4], [MAX_COORDINATE + 1, 0], [-(2**40), 0]])
def test_a_point_of_the_wrong_form_is_refused_by_the_request_model(point):
    with pytest.raises(ValidationError, match="point"):
        ClickBody(point=point)
    with pytest.raises(ValidationError, match="lo"):
        BoxBody(lo=point, hi=[1, 1])


def test_a_point_of_the_right_form_passes_typed():
    assert ClickBody(point=[3, 4.5]).point == [3, 4.5]
    assert ClickBody(point=[0, 0, MAX_COORDINATE]).point[2] == MAX_COORDINATE


def test_monai_label_points_are_checked_and_named_by_field():
    with pytest.raises(InputError, match=r"params\.foreground\.0\.1"):
        check(InferParams, {"foreground": [[1, float("inf")]]}, "params")
    with pytest.raises(InputError, match=r"params\.background\.0"):
        check(InferParams, {"background": [[1, 2, 3, 4]]}, "params")
    assert check(InferParams, {"foreground": [[1, 2.0]], "extra": 1}, "params").foreground == [[1, 2.0]]


def test_the_coordinate_bound_lives_here_alone():
    """The desk trusts the typed point: it keeps no bound or type check of its own."""
    assert not hasattr(desk, "MAX_COORDINATE")
    assert "MAX_COORDINATE" not in inspect.getsource(desk) and "isinstance(p" not in inspect.getsource(desk)
    assert validation.MAX_COORDINATE == 2**31 - 1
