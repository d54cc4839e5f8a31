"""`.env.example` read the way the deployments read it (issue 12, item 1).

``docker run --env-file`` and systemd's ``EnvironmentFile=`` both override the image's
or unit's ``NODE_ENV=production``, and neither strips an inline ``# comment``: the
file must select production, keep comments on their own lines, and mean the same to
Docker, systemd and python-dotenv.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from dotenv import dotenv_values

from gateway.config import ConfigError, load

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = REPO_ROOT / ".env.example"
STRONG = {"MASTER_API_KEY": "m" * 40, "JWT_SECRET": "j" * 40}


def docker_env_file(text: str) -> dict[str, str]:
    """Docker's rules (opts/envfile.go): a line's leading whitespace is dropped, a line
    starting with '#' and an empty line are skipped, the rest is KEY=VALUE split at the
    first '=' with the value kept verbatim: no quote, comment or whitespace stripping."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        line = line.lstrip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep, f"Docker would read {key!r} from the host's environment"
        assert key == key.strip() and " " not in key, f"Docker refuses the name {key!r}"
        values[key] = value
    return values


def systemd_environment_file(text: str) -> dict[str, str]:
    """systemd's rules (systemd.exec, EnvironmentFile=): lines starting with '#' or ';'
    are comments (only at the start of a line), whitespace around the value is
    stripped, one pair of quotes is removed, a trailing backslash continues the line."""
    values: dict[str, str] = {}
    pending = ""
    for raw in text.splitlines():
        line = pending + raw.strip()
        pending = ""
        if line.endswith("\\"):
            pending = line[:-1]
            continue
        if not line or line[0] in "#;":
            continue
        key, _, value = line.partition("=")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        values[key.strip()] = value
    return values


def _assignments(text: str, commented: bool) -> list[tuple[str, str]]:
    pattern = r"^#\s?([A-Z][A-Z0-9_]*)=(.*)$" if commented else r"^([A-Z][A-Z0-9_]*)=(.*)$"
    return re.findall(pattern, text, flags=re.MULTILINE)


def test_docker_systemd_and_dotenv_read_the_same_values() -> None:
    text = EXAMPLE.read_text()
    docker = docker_env_file(text)
    assert docker == systemd_environment_file(text)
    assert docker == {k: v for k, v in dotenv_values(EXAMPLE).items() if v is not None}


def test_it_selects_production_for_docker_and_systemd() -> None:
    text = EXAMPLE.read_text()
    for parsed in (docker_env_file(text), systemd_environment_file(text)):
        assert parsed.get("NODE_ENV", "production") == "production"
        assert parsed.get("APP_ENV", "production") == "production"


@pytest.mark.parametrize("commented", [False, True], ids=["set", "commented-out"])
def test_no_value_carries_a_comment_quotes_or_expansion(commented: bool) -> None:
    # A commented-out line is meant to be uncommented as it stands: it follows the same rules.
    assignments = _assignments(EXAMPLE.read_text(), commented)
    assert assignments
    for name, value in assignments:
        assert "#" not in value, f"{name}: an inline comment would become part of the value"
        assert value == value.strip(), f"{name}: whitespace around the value"
        assert not value.startswith(("'", '"')), f"{name}: Docker keeps quotes as part of the value"
        assert "$" not in value and "\\" not in value, f"{name}: Docker and systemd do not expand"


def test_copied_as_is_it_refuses_to_start_until_the_secrets_are_set(tmp_path: Path) -> None:
    environ = docker_env_file(EXAMPLE.read_text())
    with pytest.raises(ConfigError, match="^MASTER_API_KEY is required in production$"):
        load(environ=environ, env_file=str(tmp_path / "none"))
    settings = load(environ={**environ, **STRONG}, env_file=str(tmp_path / "none"))
    assert settings.production


def test_every_value_shown_is_valid_in_production(tmp_path: Path) -> None:
    text = EXAMPLE.read_text()
    environ = {name: value for name, value in _assignments(text, commented=True) if value}
    environ.update(docker_env_file(text))
    environ.update(STRONG)
    environ.pop("AI_PROXY_ENV_FILE")  # read by load() from the process environment only
    settings = load(environ=environ, env_file=str(tmp_path / "none"))
    assert settings.production and settings.database_url.startswith("postgresql://")


def test_the_image_and_the_unit_say_production_too() -> None:
    assert re.search(r"^\s+NODE_ENV=production\s*$", (REPO_ROOT / "Dockerfile").read_text(), re.MULTILINE)
    unit = (REPO_ROOT / "deploy" / "ai-proxy.service").read_text()
    assert re.search(r"^Environment=.*\bNODE_ENV=production\b", unit, re.MULTILINE)
