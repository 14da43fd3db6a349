"""The request models (`validation`): a point's form is checked here, once, and nowhere after it."""

from __future__ import annotations

import inspect

import pytest
from pydantic import ValidationError

from fedpoint.client.service import desk, validation
from fedpoint.client.service.validation import MAX_COORDINATE, BoxBody, ClickBody, InferParams, check
from fedpoint.client.session import InputError


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
