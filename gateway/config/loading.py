"""Reading the settings: defaults <- ``.env`` file <- process environment <- overrides.

The only code that reads the environment. Development mode creates its missing
secrets once per instance folder (:func:`_with_development_secrets`); every value is
then validated (:mod:`gateway.config.checks`). :func:`log_startup` says at start which
mode this is and where AI requests go.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import secrets
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from dotenv import dotenv_values

from gateway.config.checks import validate
from gateway.config.settings import DEFAULT_AI_API_URL, ConfigError, Settings, env_name

log = logging.getLogger("gateway.config")

# Variables whose env name differs from the field name.
_ALIASES: dict[str, tuple[str, ...]] = {
    "node_env": ("NODE_ENV", "APP_ENV"),
}
# Read by load() itself, not a Settings field: which .env file to read.
ENV_FILE_VARIABLE = "AI_PROXY_ENV_FILE"


def variable_names() -> tuple[str, ...]:
    """Every environment variable the gateway reads, in Settings order (the first
    name where a field has aliases). .env.example and the README list them all."""
    names = [_ALIASES.get(f.name, (env_name(f.name),))[0] for f in dataclasses.fields(Settings) if f.name != "generated"]
    return (*names, ENV_FILE_VARIABLE)


def _convert(name: str, raw: str, target: Any) -> Any:
    raw = raw.strip()
    try:
        if target is bool:
            lowered = raw.lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off", ""):
                return False
            raise ValueError
        if target is int:
            return int(raw)
        if target is float:
            return float(raw)
        if target == tuple[str, ...]:
            return tuple(part.strip() for part in raw.split(",") if part.strip())
    except ValueError:
        raise ConfigError(f"{env_name(name)} is not a valid {target.__name__}") from None
    return raw


def environment(environ: Mapping[str, str] | None = None, env_file: str | None = None) -> dict[str, str]:
    """Every variable as the gateway sees it: the ``.env`` file, overridden by the process
    environment. Settings are read from it, and so are the variables a backends file names
    (``api_key_env``, ``${VAR}``: see gateway.backends.config).

    :param environ: the environment; ``os.environ`` when ``None``.
    :param env_file: path of the ``.env`` file; ``AI_PROXY_ENV_FILE`` or ``./.env``.
    """
    environ = os.environ if environ is None else environ
    env_file = env_file or environ.get(ENV_FILE_VARIABLE) or ".env"
    source: dict[str, str] = {}
    if env_file and os.path.isfile(env_file):
        source.update({k: v for k, v in dotenv_values(env_file).items() if v is not None})
    source.update(environ)
    return source


def load(
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    env_file: str | None = None,
) -> Settings:
    """Read settings from the environment (and a ``.env`` file), then validate them.

    :param environ: the environment; ``os.environ`` when ``None``.
    :param overrides: field values that win over everything (used by tests).
    :param env_file: path of the ``.env`` file; ``AI_PROXY_ENV_FILE`` or ``./.env``.
    :raises ConfigError: on any invalid value, naming the variable.
    """
    source = environment(environ, env_file)

    values: dict[str, Any] = {}
    hints = {f.name: f.type for f in dataclasses.fields(Settings)}
    types = {"int": int, "float": float, "bool": bool, "str": str, "tuple[str, ...]": tuple[str, ...]}
    for f in dataclasses.fields(Settings):
        if f.name == "generated":
            continue
        for variable in _ALIASES.get(f.name, (env_name(f.name),)):
            if variable in source:
                values[f.name] = _convert(f.name, source[variable], types[str(hints[f.name])])
                break
    values.update(overrides or {})
    settings = Settings(**values)
    settings = _with_development_secrets(settings)
    validate(settings)
    return settings


def _with_development_secrets(settings: Settings) -> Settings:
    """In development, create strong secrets once and share them with every worker.

    They live in ``<instance_path>/secrets.json`` (git-ignored). The file is written
    to a temporary name and linked into place, so concurrent workers either create it
    or read the complete file another worker created.
    """
    if settings.production:
        return settings
    missing = [name for name in ("master_api_key", "jwt_secret") if not getattr(settings, name)]
    if not missing:
        return settings
    path = Path(settings.instance_path) / "secrets.json"
    stored = _read_or_create_secrets(path)
    chosen: dict[str, Any] = {name: stored[name] for name in missing}
    return dataclasses.replace(settings, generated=tuple(missing), **chosen)


def _read_or_create_secrets(path: Path) -> dict[str, str]:
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fresh = {name: secrets.token_urlsafe(32) for name in ("master_api_key", "jwt_secret")}
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".secrets-")
        try:
            with os.fdopen(fd, "w") as handle:
                json.dump(fresh, handle)
            os.chmod(tmp, 0o600)
            try:
                os.link(tmp, path)
            except FileExistsError:
                pass  # another worker won the race; read its file below
        finally:
            os.unlink(tmp)
    try:
        stored: dict[str, str] = json.loads(path.read_text())
        if not all(isinstance(stored.get(k), str) and stored[k] for k in ("master_api_key", "jwt_secret")):
            raise ValueError
    except (OSError, ValueError):
        raise ConfigError(f"{path} is unreadable; delete it to generate new development secrets") from None
    return stored


def describe_upstream(settings: Settings) -> str:
    """The upstream as scheme://host:port/path, safe to log (URLs never carry
    credentials: validate() refuses them; the key is AI_API_KEY, never shown)."""
    parts = urlsplit(settings.upstream_base_url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{parts.scheme}://{parts.hostname}:{port}{parts.path or '/'}"


def log_startup(settings: Settings) -> None:
    """Say once, at start, which mode this is and where AI requests go.

    Development is a WARNING on purpose: a deployment that lost ``NODE_ENV=production``
    (an env file that overrides it) runs with generated secrets and without the
    production checks, and this line is the one place that says so.
    """
    if settings.production:
        log.info("PRODUCTION mode (NODE_ENV=production): secrets required, production checks on")
    else:
        where = (
            f"generated {', '.join(env_name(name) for name in settings.generated)} kept in "
            f"{Path(settings.instance_path) / 'secrets.json'}"
            if settings.generated
            else "secrets from the environment"
        )
        log.warning(
            "DEVELOPMENT mode (NODE_ENV=%s): %s, production checks off; set NODE_ENV=production for any deployment",
            settings.node_env or "unset",
            where,
        )
    if settings.gateway_config:
        return  # the backends come from the file (gateway.backends.snapshot logs them)
    variable = "AI_API_BASE_URL" if settings.ai_api_base_url else "AI_API_URL"
    log.info("upstream %s (from %s)", describe_upstream(settings), variable)
    if not settings.ai_api_base_url and settings.ai_api_url == DEFAULT_AI_API_URL:
        log.warning(
            "AI_API_URL is the default %s: a local Ollama on this host (inside a container, the container itself)", DEFAULT_AI_API_URL
        )
