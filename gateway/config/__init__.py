"""Settings: defaults <- .env file <- process environment <- overrides.

This is the only package that reads the environment. Everything else receives a
:class:`Settings` (the app keeps it in ``app.config["GATEWAY"]``).

A bad value stops the process with one line naming the variable, never its value
(:class:`ConfigError`).

- :mod:`gateway.config.settings`: the frozen :class:`Settings` record and its defaults;
- :mod:`gateway.config.loading`: :func:`load` (environment, ``.env``, development secrets)
  and the start-up log line;
- :mod:`gateway.config.checks`: :func:`validate` and :func:`parse_rate_limit`.
"""

from __future__ import annotations

from gateway.config.checks import RATE_LIMIT_BOUNDS, SECRET_FIELDS, parse_rate_limit, validate
from gateway.config.loading import ENV_FILE_VARIABLE, describe_upstream, environment, load, log_startup, variable_names
from gateway.config.settings import (
    DEFAULT_AI_API_URL,
    MIN_SECRET_LENGTH,
    PROJECT_ROOT,
    RATE_LIMIT_MAX_AMOUNT,
    RATE_LIMIT_MAX_WINDOW_SECONDS,
    STORAGE_SCHEMES,
    STRATEGIES,
    ConfigError,
    Settings,
    usable_cores,
)

__all__ = [
    "DEFAULT_AI_API_URL",
    "ENV_FILE_VARIABLE",
    "MIN_SECRET_LENGTH",
    "PROJECT_ROOT",
    "RATE_LIMIT_BOUNDS",
    "RATE_LIMIT_MAX_AMOUNT",
    "RATE_LIMIT_MAX_WINDOW_SECONDS",
    "SECRET_FIELDS",
    "STORAGE_SCHEMES",
    "STRATEGIES",
    "ConfigError",
    "Settings",
    "describe_upstream",
    "environment",
    "load",
    "log_startup",
    "parse_rate_limit",
    "usable_cores",
    "validate",
    "variable_names",
]
