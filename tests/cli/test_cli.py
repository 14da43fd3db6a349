"""The CLI guides: version, choices checked before anything heavy, one error style and exit code."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from fedpoint.cli import app
from fedpoint.cli.errors import USER_ERROR

runner = CliRunner()


def test_choices_mirror_the_registries():
    from fedpoint.cli.choices import ADAPTER_KINDS, MODES, SHIFTS
    from fedpoint.data.shifts import SHIFTS as REGISTERED_SHIFTS
    from fedpoint.shared.adapters import ADAPTER_CLASSES as REGISTERED_KINDS
    from fedpoint.shared.config import ADAPTATION_MODES

    assert MODES == ADAPTATION_MODES
    assert set(ADAPTER_KINDS) == set(REGISTERED_KINDS)
    assert SHIFTS == tuple(REGISTERED_SHIFTS)
    from fedpoint.cli.choices import VOLUME_ROUTES
    from fedpoint.client.stream import VOLUME_ROUTES as ROUTES

    assert VOLUME_ROUTES == ROUTES


def test_version():
    from fedpoint import __version__

    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"fedpoint {__version__}"


@pytest.mark.parametrize("args, option", [
    (["evaluate", "--mode", "bogus"], "--mode"),
    (["evaluate", "--adapter", "bogus"], "--adapter"),
    (["evaluate", "--shift", "fog"], "--shift"),
    (["evaluate", "--clicks", "0"], "--clicks"),
    (["simulate", "--config", "federation"], "--config"),
    (["simulate", "--config", "nope"], "--config"),
    (["simulate", "--config", "missing.toml"], "--config"),
    (["data", "sites", "--config", "missing.toml"], "--config"),
    (["data", "nonsense"], "nonsense"),
])
def test_user_errors_exit_2_naming_the_option(args, option):
    result = runner.invoke(app, args)
    assert result.exit_code == USER_ERROR, result.output
    assert option in result.output


def test_bad_choice_fails_before_torch_loads():
    probe = ("import sys\nfrom fedpoint.cli import main\nsys.argv = ['fedpoint', 'evaluate', '--mode', 'bogus']\n"
             "try:\n    main()\nexcept SystemExit as e:\n    code = e.code\n"
             "print(code, 'torch' in sys.modules, 'monai' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert out.stdout.split() == ["2", "False", "False"], out.stdout + out.stderr


def test_help_keeps_bracketed_words_and_lists_choices():
    result = runner.invoke(app, ["simulate", "--help"], env={"COLUMNS": "200"})
    assert "'full' table" in result.output
    result = runner.invoke(app, ["evaluate", "--help"], env={"COLUMNS": "200"})
    assert "mid+post+episodes" in result.output and "norm+stem" in result.output and "scanner-b" in result.output


def test_simulate_lists_only_experiments():
    result = runner.invoke(app, ["simulate", "--list"])
    names = [line.split("\t")[0] for line in result.output.splitlines()]
    assert result.exit_code == 0 and "demo" in names and "federation" not in names


def test_data_shifts():
    result = runner.invoke(app, ["data", "shifts", "--json"])
    assert result.exit_code == 0
    assert "scanner-b" in json.loads(result.output)


def test_a_missing_extra_is_a_user_error(monkeypatch):
    import fedpoint.extras as extras

    real = extras.importlib.util.find_spec
    monkeypatch.setattr(extras.importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a))
    result = runner.invoke(app, ["simulate", "--config", "tiny"])
    assert result.exit_code == USER_ERROR
    assert "fedpoint[simulation]" in result.output


def test_device_is_checked_where_a_site_sets_it():
    from fedpoint.shared.device import check_device, resolve_device

    assert check_device("CUDA:1") == "cuda:1" and resolve_device("cpu") == "cpu"
    assert resolve_device("auto") in {"cpu", "cuda"}
    with pytest.raises(ValueError, match="cpu, cuda, cuda:N or auto"):
        check_device("gpu")
