"""Start-up safety (issue 12): the mode is logged loudly, an inline comment never becomes
part of a secret, the upstream is named at start, and every variable is documented."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest

from gateway.config import ConfigError, Settings, load, log_startup, variable_names

REPO_ROOT = Path(__file__).resolve().parents[2]
STRONG = "s" * 40
STRONG2 = "t" * 40


def _production(**environ: str) -> dict[str, str]:
    return {"NODE_ENV": "production", "MASTER_API_KEY": STRONG, "JWT_SECRET": STRONG2, **environ}


@pytest.mark.parametrize("name", ["MASTER_API_KEY", "JWT_SECRET", "AI_API_KEY", "KEY_HASH_PEPPER", "METRICS_TOKEN"])
def test_production_refuses_a_secret_carrying_an_inline_comment(tmp_path: Path, name: str) -> None:
    # What systemd's EnvironmentFile= and `docker run --env-file` make of
    # `MASTER_API_KEY=abc   # openssl rand -hex 32`: a 33-character "key".
    value = "abc   # openssl rand -hex 32"
    with pytest.raises(ConfigError) as raised:
        load(environ=_production(**{name: value}), env_file=str(tmp_path / "none"))
    message = str(raised.value)
    assert message.startswith(name) and "inline comment" in message
    assert value not in message and "openssl" not in message and "\n" not in message


@pytest.fixture(autouse=True)
def _gateway_logs_reach_caplog(monkeypatch: pytest.MonkeyPatch) -> None:
    # gateway.observability.configure_logging (run by any earlier create_app) stops the
    # gateway's records at its own stderr handler; let them reach caplog's too.
    monkeypatch.setattr(logging.getLogger("gateway"), "propagate", True)


def test_a_hash_inside_a_secret_is_fine(tmp_path: Path) -> None:
    settings = load(environ=_production(MASTER_API_KEY="a#b" * 14), env_file=str(tmp_path / "none"))
    assert settings.master_api_key == "a#b" * 14


def test_development_is_one_loud_warning_line(caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    caplog.set_level(logging.INFO, logger="gateway")
    settings = load(
        environ={"AI_API_URL": "http://upstream.internal:8000/v1/completions"},
        env_file=str(tmp_path / "none"),
        overrides={"instance_path": str(tmp_path / "instance")},
    )
    log_startup(settings)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, caplog.text
    line = warnings[0].getMessage()
    assert line.startswith("DEVELOPMENT mode") and "set NODE_ENV=production" in line
    assert "MASTER_API_KEY" in line and "secrets.json" in line
    assert settings.master_api_key not in caplog.text and settings.jwt_secret not in caplog.text


def test_production_is_an_info_line_and_the_upstream_is_named(caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    caplog.set_level(logging.INFO, logger="gateway")
    settings = load(
        environ=_production(
            AI_API_URL="https://llm.example:8443/openai/v1/chat/completions", AI_API_KEY="sk-never-logged-" + "x" * 20
        ),
        env_file=str(tmp_path / "none"),
    )
    log_startup(settings)
    assert [r.levelno for r in caplog.records] == [logging.INFO, logging.INFO], caplog.text
    assert caplog.records[0].getMessage().startswith("PRODUCTION mode")
    assert caplog.records[1].getMessage() == "upstream https://llm.example:8443/openai/v1 (from AI_API_URL)"
    assert "sk-never-logged" not in caplog.text


def test_the_default_upstream_is_flagged(caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    caplog.set_level(logging.INFO, logger="gateway")
    log_startup(load(environ=_production(), env_file=str(tmp_path / "none")))
    assert "upstream http://localhost:11434/v1 (from AI_API_URL)" in caplog.text
    assert any(
        r.levelno == logging.WARNING and "AI_API_URL is the default" in r.getMessage() and "container" in r.getMessage()
        for r in caplog.records
    )


# --------------------------------------------------------------------------- #
# Every variable the code reads is documented (.env.example, README table)
# --------------------------------------------------------------------------- #


def test_variable_names_come_from_the_settings() -> None:
    names = variable_names()
    assert "NODE_ENV" in names and "AI_PROXY_ENV_FILE" in names and "DATABASE_AUTO_UPGRADE" in names
    assert "GENERATED" not in names and len(names) == len(set(names))
    import dataclasses

    assert len(names) == len(dataclasses.fields(Settings))  # every field but `generated`, plus the file


def test_every_variable_is_in_env_example() -> None:
    text = (REPO_ROOT / ".env.example").read_text()
    listed = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]*)=", text, flags=re.MULTILINE))
    missing = [name for name in variable_names() if name not in listed]
    assert not missing, f".env.example lacks {missing}"


def test_every_variable_is_in_the_readme_configuration_table() -> None:
    readme = (REPO_ROOT / "README.md").read_text()
    section = readme.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    first_cells = [line.split("|")[1] for line in section.splitlines() if line.startswith("| `")]
    listed = {name for cell in first_cells for name in re.findall(r"`([A-Z][A-Z0-9_]*)`", cell)}
    missing = [name for name in variable_names() if name not in listed]
    assert not missing, f"the README's configuration table lacks {missing}"


def test_every_env_example_variable_has_a_comment_above_it() -> None:
    lines = (REPO_ROOT / ".env.example").read_text().splitlines()
    bare = []
    for index, line in enumerate(lines):
        match = re.match(r"^#?\s*([A-Z][A-Z0-9_]*)=", line)
        if not match:
            continue
        above = index - 1
        while above >= 0 and re.match(r"^#?\s*[A-Z][A-Z0-9_]*=", lines[above]):
            above -= 1  # a group of related variables may share one comment
        if above < 0 or not lines[above].startswith("# ") or re.match(r"^#\s*[A-Z][A-Z0-9_]*=", lines[above]):
            bare.append(match.group(1))
    assert not bare, f"variables without a comment line above them: {bare}"
