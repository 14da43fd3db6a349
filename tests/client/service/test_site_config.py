"""site.toml: errors name their field, paths are relative to the file, tokens come from one place."""

from __future__ import annotations

import pytest

from fedpoint.client.service.site_config import ServiceConfigError, load_service_config, make_service_config

BASE = {"site": "s1", "store": "store", "images": "images", "token": "a-token-of-enough-length"}


def write_toml(tmp_path, text: str):
    path = tmp_path / "site.toml"
    path.write_text(text)
    return path


def test_relative_paths_resolve_against_the_config_folder(tmp_path):
    (tmp_path / "site-token").write_text("secret-token-from-a-file\n")
    path = write_toml(tmp_path, 'site = "h1"\nmodality = "CT"\nstore = "store"\nimages = "imgs"\n'
                                'token_file = "site-token"\nadapter = "lora"\n[adaptation]\nlr = 0.01\n')
    cfg = load_service_config(path)
    assert cfg.store == tmp_path / "store" and cfg.images == tmp_path / "imgs"
    assert cfg.resolve_token() == "secret-token-from-a-file"
    assert cfg.adapter.kind == "lora" and cfg.adaptation_config().lr == 0.01
    assert cfg.host == "127.0.0.1" and cfg.cors_origins == []


def test_command_line_overrides_win(tmp_path):
    path = write_toml(tmp_path, 'site = "h1"\nstore = "s"\nimages = "i"\ntoken = "a-token-of-enough-length"\nport = 9000\n')
    assert load_service_config(path, port=9100, host=None).port == 9100


@pytest.mark.parametrize("change, field", [
    ({"port": 70000}, "port"),
    ({"adapter": "resnet"}, "adapter"),
    ({"mode": "sometimes"}, "mode"),
    ({"site": "../etc"}, "site"),
    ({"adaptation": {"mode": "mid"}}, "adaptation"),
    ({"adaptation": {"lr": -1}}, "adaptation"),
    ({"cors_origins": ["*"]}, "cors_origins"),
    ({"colour": "blue"}, "colour"),
    ({"max_upload_mb": 0}, "max_upload_mb"),
])
def test_errors_name_the_field(change, field):
    with pytest.raises(ServiceConfigError) as err:
        make_service_config({**BASE, **change}, "site.toml")
    assert f"site.toml: {field}" in str(err.value)


def test_exactly_one_token_source(monkeypatch):
    without = {k: v for k, v in BASE.items() if k != "token"}
    with pytest.raises(ServiceConfigError, match="exactly one of token, token_env, token_file"):
        make_service_config(without)
    with pytest.raises(ServiceConfigError, match="exactly one"):
        make_service_config({**BASE, "token_env": "X"})
    monkeypatch.setenv("SITE_TOKEN_FOR_TEST", "short")
    cfg = make_service_config({**without, "token_env": "SITE_TOKEN_FOR_TEST"})
    with pytest.raises(ServiceConfigError, match="at least 16 characters"):
        cfg.resolve_token()


def test_missing_file_and_bad_toml(tmp_path):
    with pytest.raises(ServiceConfigError, match="no such config file"):
        load_service_config(tmp_path / "nope.toml")
    with pytest.raises(ServiceConfigError, match="not valid TOML"):
        load_service_config(write_toml(tmp_path, "site = \n"))
