"""The backends file at start and on reload: what the gunicorn master accepts is what its
workers build from (gateway.backends.snapshot), and the app keeps the result
(gateway.backends.init_app). The real SIGHUP under gunicorn: tests/e2e/test_e2e_backends_reload.py."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway import extensions
from gateway.backends import snapshot
from gateway.backends.config import ConfigFileError, from_environment, load_config
from gateway.config import Settings

VALID = "backends: [{name: a, url: http://127.0.0.1:8000/v1}]\nmodels: [{name: m, deployments: [{backend: a}]}]\n"
CHANGED = VALID.replace("{name: m,", "{name: m2,")
INVALID = VALID.replace("url:", "ur1:")


@pytest.fixture(autouse=True)
def _fresh_master(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each test is a new gunicorn master: no snapshot yet, and none left behind."""
    monkeypatch.setitem(snapshot._state, "started", False)
    monkeypatch.setattr(logging.getLogger("gateway"), "propagate", True)  # for caplog
    os.environ.pop(snapshot.ACCEPTED_VARIABLE, None)
    yield
    os.environ.pop(snapshot.ACCEPTED_VARIABLE, None)


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(VALID)
    return path


def test_workers_build_from_what_the_master_accepted_not_from_the_file(config_file: Path) -> None:
    settings = Settings(gateway_config=str(config_file))
    snapshot.take(settings)
    assert snapshot.started() and os.environ[snapshot.ACCEPTED_VARIABLE] == VALID
    config_file.write_text(INVALID)  # edited after start, no reload yet
    assert snapshot.build(settings).public_models() == ("m",)


def test_an_invalid_file_stops_the_start(config_file: Path) -> None:
    config_file.write_text(INVALID)
    with pytest.raises(ConfigFileError, match=rf"^{config_file}: backends\[0\]\.ur1: unknown key"):
        snapshot.take(Settings(gateway_config=str(config_file)))
    assert not snapshot.started() and snapshot.ACCEPTED_VARIABLE not in os.environ


def test_without_a_file_the_snapshot_says_so_and_replaces_an_inherited_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(snapshot.ACCEPTED_VARIABLE, VALID)  # from some other process's environment
    settings = Settings()
    snapshot.take(settings)
    assert os.environ[snapshot.ACCEPTED_VARIABLE] == ""
    assert snapshot.build(settings) == from_environment(settings)


def test_without_gunicorn_the_file_is_read_directly(config_file: Path) -> None:
    assert snapshot.build(Settings(gateway_config=str(config_file))).source == str(config_file)


def test_reload_accepts_a_valid_changed_file(config_file: Path, caplog: pytest.LogCaptureFixture) -> None:
    settings = Settings(gateway_config=str(config_file))
    snapshot.take(settings)
    config_file.write_text(CHANGED)
    with caplog.at_level(logging.INFO, logger="gateway.backends"):
        assert snapshot.reload(settings)
    assert snapshot.build(settings).public_models() == ("m2",)
    assert f"backends configuration reloaded from {config_file}: 1 backends, 1 model routes" in caplog.messages


def test_reload_refuses_an_invalid_file_and_keeps_the_previous_one(config_file: Path, caplog: pytest.LogCaptureFixture) -> None:
    settings = Settings(gateway_config=str(config_file))
    snapshot.take(settings)
    config_file.write_text(INVALID)
    with caplog.at_level(logging.INFO, logger="gateway.backends"):
        assert not snapshot.reload(settings)
    assert os.environ[snapshot.ACCEPTED_VARIABLE] == VALID
    assert snapshot.build(settings).public_models() == ("m",)
    (record,) = caplog.records
    assert record.levelno == logging.ERROR
    assert record.getMessage() == (
        f"configuration file refused on reload, keeping the previous one: {config_file}: backends[0].ur1: unknown key "
        "(known: name, url, dialect, api_key, api_key_env, api_version, timeouts, max_concurrent, weight, headers)"
    )
    config_file.unlink()  # a file gone is refused the same way
    assert not snapshot.reload(settings) and snapshot.build(settings).public_models() == ("m",)


def test_a_file_first_named_on_reload_and_invalid_keeps_the_single_upstream(config_file: Path) -> None:
    snapshot.take(Settings())  # started without GATEWAY_CONFIG
    config_file.write_text(INVALID)
    settings = Settings(gateway_config=str(config_file))  # the .env file names one now
    assert not snapshot.reload(settings)
    assert snapshot.build(settings) == from_environment(settings)  # new workers still boot


def test_the_app_keeps_the_configuration(make_app, config_file: Path) -> None:
    app = make_app(gateway_config=str(config_file))
    assert extensions.backends_config(app).source == str(config_file)
    assert extensions.backends_config(make_app()).source is None


def test_the_app_refuses_an_invalid_file_in_one_line(make_app, config_file: Path) -> None:
    config_file.write_text(INVALID)
    with pytest.raises(ConfigFileError, match=rf"^{config_file}: backends\[0\]\.ur1: unknown key \(known: [^\n]*\)$"):
        make_app(gateway_config=str(config_file))


def test_the_readme_example_is_a_valid_file() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("\n### Config file reference\n", 1)[1].split("\n## ", 1)[0]
    example = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    environ = {"OPENAI_API_KEY": "k1", "AZURE_OPENAI_API_KEY": "k2", "VLLM_A_HOST": "10.0.0.11"}
    config = load_config(Settings(gateway_config="README.md"), text=example, environ=environ)
    assert config.public_models() == ("gpt-4o",) and config.route_for("llama-3.1-8b").name == "llama-*"  # type: ignore[union-attr]
    assert config.backend("vllm-a").url == "http://10.0.0.11:8000/v1"
    assert [price.model for price in config.prices] == ["gpt-4o", "llama-*"]


def test_the_several_backends_example_is_a_valid_file() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("\n## Several backends\n", 1)[1].split("\n## ", 1)[0]
    example = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    config = load_config(Settings(gateway_config="README.md"), text=example, environ={"OPENAI_API_KEY": "k1"})
    assert config.public_models() == ("gpt-4o-mini", "llama-3.1-8b")
    route = config.route_for("llama-3.1-8b")
    assert route is not None and [(d.backend, d.priority) for d in route.deployments] == [("vllm-1", 0), ("vllm-2", 0), ("ollama", 1)]
