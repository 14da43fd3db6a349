"""fedpoint.shared.validation_errors: the one formatter of pydantic validation errors."""

import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator

from fedpoint.shared.validation_errors import describe_validation_error, validation_problems


class Inner(BaseModel):
    lr: float

    @field_validator("lr")
    @classmethod
    def _positive(cls, value: float) -> float:
        if value <= 0:
            raise ValueError("must be positive")
        return value


class Outer(BaseModel):
    model_config = ConfigDict(extra="forbid")
    inner: Inner
    name: str = "x"

    @model_validator(mode="after")
    def _not_both(self):
        if self.name == "bad":
            raise ValueError("name is bad")
        return self


def _error(**data) -> ValidationError:
    with pytest.raises(ValidationError) as info:
        Outer(**data)
    return info.value


def test_each_problem_names_its_field_without_pydantic_wrapping():
    err = _error(inner={"lr": -1}, extra=1)
    assert validation_problems(err) == ["inner.lr: must be positive", "extra: Extra inputs are not permitted"]
    assert describe_validation_error(err) == "inner.lr: must be positive; extra: Extra inputs are not permitted"


def test_within_root_limit_and_hint():
    err = _error(inner={"lr": -1}, extra=1)
    assert describe_validation_error(err, within=("sites[2]",)).startswith("sites[2].inner.lr: must be positive; ")
    assert validation_problems(err, within=("body",), limit=1) == ["body.inner.lr: must be positive"]
    hinted = validation_problems(err, hint=lambda loc: " (see lr)" if "lr" in loc else "")
    assert hinted == ["inner.lr: must be positive (see lr)", "extra: Extra inputs are not permitted"]
    whole = _error(inner={"lr": 1}, name="bad")  # a model-level problem has no location
    assert validation_problems(whole) == ["name is bad"]
    assert validation_problems(whole, root="(config)") == ["(config): name is bad"]


def test_the_callers_keep_their_messages(tmp_path):
    from fedpoint.client.service.site_config import ServiceConfigError, make_service_config
    from fedpoint.shared.run_config import parse_run_config

    with pytest.raises(ValueError, match=r"^bad federation run config: num-server-rounds: Input should be a valid integer"):
        parse_run_config({"num-server-rounds": "many"})
    with pytest.raises(ServiceConfigError, match=r"^site\.toml: "):
        make_service_config({"no_such_setting": 1}, source="site.toml")


def test_the_formatter_is_light():
    code = "import sys, fedpoint.shared.validation_errors; print('pydantic' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[2],
                         capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False", out.stderr
