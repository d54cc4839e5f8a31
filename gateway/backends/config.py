"""The backends configuration: the YAML file named by ``GATEWAY_CONFIG``, or today's single upstream.

:func:`load_config` is the one entry point. Without a file it is :func:`from_environment`:
one backend ``default`` from ``AI_API_URL`` / ``AI_API_BASE_URL`` and ``AI_API_KEY``, every
model routed to it, no retry and no circuit breaker (the behaviour before several backends).

With a file, every key is checked (:mod:`gateway.backends.config_checks`); the first fault
raises :class:`ConfigFileError`, one line: ``<file>: <key.path[1].x>: <what is wrong>``.
Never a value in it: a value may be a secret. Secrets never sit in the file: a key comes
from the variable named by ``api_key_env`` (or ``api_key: ${VAR}``), and ``${VAR}`` in a
``url`` or a header value is replaced by that variable; an unset variable is an error.
Variables are read from the process environment, then the ``.env`` file, as every setting.

``prices:`` (optional) maps public model names or globs to USD per million tokens:
``input``, ``cached_input`` (default: ``input``), ``output``, ``currency`` (``USD`` only).
A file with ``prices:`` alone (no ``backends``, ``models`` or ``routing``) keeps today's
single upstream and adds the prices.

``identity:`` (optional) maps callers from the identity provider (``OIDC_ISSUER``) to a
policy: :mod:`gateway.backends.identity`. Like ``prices:``, it may stand alone or beside them.

The records themselves live in :mod:`gateway.backends.model` (re-exported here).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from gateway.backends import config_checks as check
from gateway.backends.config_checks import Invalid
from gateway.backends.identity import IdentityMap, parse_identity
from gateway.backends.model import (
    CURRENCY,
    DIALECTS,
    Backend,
    Deployment,
    GatewayConfig,
    ModelRoute,
    Price,
    Routing,
    Timeouts,
)
from gateway.config import ConfigError, Settings, environment

__all__ = [
    "MAX_FILE_BYTES",
    "Backend",
    "ConfigFileError",
    "Deployment",
    "GatewayConfig",
    "ModelRoute",
    "Price",
    "Routing",
    "Timeouts",
    "from_environment",
    "load_config",
    "read_config_text",
]

# The accepted text travels from the gunicorn master to its workers in an environment
# variable (gateway.backends.snapshot); Linux refuses to exec with one over 128 KiB.
MAX_FILE_BYTES = 100_000


class ConfigFileError(ConfigError):
    """An invalid backends file. ``str()`` is one line: ``<file>: <key path>: <what is wrong>``."""


def from_environment(settings: Settings) -> GatewayConfig:
    """Today's behaviour: one backend ``default`` and one route ``*`` to it, no retry, no circuit breaker."""
    backend = Backend(
        name="default",
        url=settings.upstream_base_url,
        dialect="openai",
        api_key=settings.ai_api_key,
        api_key_env="AI_API_KEY",
        api_version="",
        timeouts=_default_timeouts(settings),
        max_concurrent=0,
        weight=1.0,
        headers=(),
    )
    route = ModelRoute("*", (Deployment("default", None, 1.0, 0),))
    return GatewayConfig(None, (backend,), (route,), Routing(max_attempts=1, breaker_failures=0))


def read_config_text(path: str) -> str:
    """The file's text. :raises ConfigFileError: unreadable, too large or not UTF-8."""
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_FILE_BYTES + 1)
    except OSError as error:
        raise ConfigFileError(f"{path}: cannot be read ({error.strerror or type(error).__name__})") from None
    if len(raw) > MAX_FILE_BYTES:
        raise ConfigFileError(f"{path}: larger than {MAX_FILE_BYTES} bytes")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ConfigFileError(f"{path}: not UTF-8 text (byte {error.start})") from None


def load_config(settings: Settings, text: str | None = None, *, environ: Mapping[str, str] | None = None) -> GatewayConfig:
    """The backends configuration: :func:`from_environment` when ``GATEWAY_CONFIG`` is empty,
    else the file (or ``text``, its contents already read and accepted by the gunicorn master).

    :param environ: where ``api_key_env`` and ``${VAR}`` are looked up; the process
        environment over the ``.env`` file when ``None``.
    :raises ConfigFileError: the first fault, in one line naming the file and the key path.
    """
    path = settings.gateway_config
    if not path:
        return from_environment(settings)
    if text is None:
        text = read_config_text(path)
    variables = environment() if environ is None else environ
    try:
        return _parse(path, text, settings, variables)
    except Invalid as fault:
        raise ConfigFileError(f"{path}: {fault}" if fault.path else f"{path}: {fault.what}") from None


def _default_timeouts(settings: Settings) -> Timeouts:
    return Timeouts(
        connect=settings.upstream_connect_timeout,
        first_byte=settings.upstream_read_timeout,
        idle=settings.upstream_read_timeout,
        total=settings.upstream_total_timeout,
    )


def _parse(path: str, text: str, settings: Settings, environ: Mapping[str, str]) -> GatewayConfig:
    document = check.parse_yaml(text)
    if document is None:
        raise Invalid("", "the file is empty; it needs backends and models (or prices alone)")
    top = check.mapping(document, "", ("backends", "models", "routing", "prices", "identity"))
    prices = _prices(top["prices"], "prices") if "prices" in top else ()
    identity = parse_identity(top["identity"]) if "identity" in top else IdentityMap()
    if top and top.keys() <= {"prices", "identity"}:  # prices and identities for today's single upstream
        return dataclasses.replace(from_environment(settings), prices=prices, identity=identity)
    for key in ("backends", "models"):
        if key not in top:
            raise Invalid(key, "required (or write prices alone, for the single upstream of AI_API_URL)")
    backends = tuple(
        _backend(item, f"backends[{index}]", settings, environ)
        for index, item in enumerate(check.sequence(top["backends"], "backends"))
    )
    check.unique([backend.name for backend in backends], "backends[{}].name")
    by_name = {backend.name: backend for backend in backends}
    models = tuple(_route(item, f"models[{index}]", by_name) for index, item in enumerate(check.sequence(top["models"], "models")))
    check.unique([route.name for route in models], "models[{}].name")
    routing = _routing(top.get("routing", {}), "routing")
    return GatewayConfig(path, backends, models, routing, prices, identity)


_BACKEND_KEYS = (
    "name",
    "url",
    "dialect",
    "api_key",
    "api_key_env",
    "api_version",
    "timeouts",
    "max_concurrent",
    "weight",
    "headers",
)
_TIMEOUT_KEYS = ("connect", "first_byte", "idle", "total")


def _backend(item: Any, path: str, settings: Settings, environ: Mapping[str, str]) -> Backend:
    spec = check.mapping(item, path, _BACKEND_KEYS, required=("name", "url"))
    name = check.name(spec["name"], f"{path}.name")
    dialect = check.choice(spec.get("dialect", "openai"), f"{path}.dialect", DIALECTS)
    url = check.url(check.interpolate(check.text(spec["url"], f"{path}.url"), f"{path}.url", environ), f"{path}.url", dialect)
    api_version = ""
    if "api_version" in spec:
        if dialect != "azure":
            raise Invalid(f"{path}.api_version", "only for dialect azure")
        api_version = check.text(spec["api_version"], f"{path}.api_version")
    elif dialect == "azure":
        raise Invalid(f"{path}.api_version", "required for dialect azure (e.g. api_version: '2024-10-21')")
    api_key_env, api_key = check.api_key(spec, path, environ)
    defaults = _default_timeouts(settings)
    given = check.mapping(spec.get("timeouts", {}), f"{path}.timeouts", _TIMEOUT_KEYS)
    timeouts = Timeouts(
        **{
            key: check.positive(given[key], f"{path}.timeouts.{key}") if key in given else getattr(defaults, key)
            for key in _TIMEOUT_KEYS
        }
    )
    headers = check.headers(spec.get("headers", {}), f"{path}.headers", environ, dialect, has_key=bool(api_key_env))
    return Backend(
        name=name,
        url=url,
        dialect=dialect,
        api_key=api_key,
        api_key_env=api_key_env,
        api_version=api_version,
        timeouts=timeouts,
        max_concurrent=check.count(spec.get("max_concurrent", 0), f"{path}.max_concurrent", 0),
        weight=check.positive(spec.get("weight", 1), f"{path}.weight"),
        headers=headers,
    )


def _route(item: Any, path: str, backends: Mapping[str, Backend]) -> ModelRoute:
    spec = check.mapping(item, path, ("name", "deployments"), required=("name", "deployments"))
    name = check.text(spec["name"], f"{path}.name")
    deployments = []
    for index, entry in enumerate(check.sequence(spec["deployments"], f"{path}.deployments")):
        where = f"{path}.deployments[{index}]"
        given = check.mapping(entry, where, ("backend", "model", "weight", "priority"), required=("backend",))
        backend_name = check.text(given["backend"], f"{where}.backend")
        backend = backends.get(backend_name)
        if backend is None:
            raise Invalid(f"{where}.backend", f"names no backend in backends (known: {', '.join(backends)})")
        model = check.text(given["model"], f"{where}.model") if "model" in given else None
        weight = check.positive(given["weight"], f"{where}.weight") if "weight" in given else backend.weight
        priority = check.count(given.get("priority", 0), f"{where}.priority", 0)
        deployments.append(Deployment(backend_name, model, weight, priority))
    check.unique([(d.backend, d.model) for d in deployments], f"{path}.deployments[{{}}]", "the same backend and model as")
    return ModelRoute(name, tuple(deployments))


_PRICE_KEYS = ("input", "cached_input", "output", "currency")


def _prices(item: Any, path: str) -> tuple[Price, ...]:
    """``prices:``: public model name (or glob) -> its price. Empty (``prices:`` alone): none."""
    given = {} if item is None else item
    if not isinstance(given, dict):
        raise Invalid(path, "must be a mapping of public model names (or globs) to prices")
    prices: list[Price] = []
    for name, entry in given.items():
        where = check.at(path, name)
        model = check.text(name, where)
        if any(price.model == model for price in prices):
            raise Invalid(where, "the same model as another entry (names are compared without surrounding spaces)")
        spec = check.mapping(entry, where, _PRICE_KEYS, required=("input", "output"))
        check.choice(spec.get("currency", CURRENCY), f"{where}.currency", (CURRENCY,))
        input_price = check.price(spec["input"], f"{where}.input")
        cached = check.price(spec["cached_input"], f"{where}.cached_input") if "cached_input" in spec else input_price
        prices.append(Price(model, input_price, cached, check.price(spec["output"], f"{where}.output")))
    return tuple(prices)


# routing: file key -> (Routing field, check), or a group of them (backoff, retry_budget, circuit_breaker).
_ROUTING: dict[str, Any] = {
    "max_attempts": ("max_attempts", check.count_between(1, 10)),
    "retry_on": ("retry_on", check.retry_on),
    "retry_after_max": ("retry_after_max", check.non_negative),
    "expose_backend_header": ("expose_backend_header", check.boolean),
    "backoff": {"base": ("backoff_base", check.non_negative), "max": ("backoff_max", check.non_negative)},
    "retry_budget": {
        "ratio": ("retry_budget_ratio", check.ratio),
        "window": ("retry_budget_window", check.positive),
        "min_retries": ("retry_budget_min", check.count_between(0)),
    },
    "circuit_breaker": {
        "failures": ("breaker_failures", check.count_between(0)),
        "failure_ratio": ("breaker_failure_ratio", check.ratio),
        "window": ("breaker_window", check.positive),
        "min_requests": ("breaker_min_requests", check.count_between(1)),
        "cooldown": ("breaker_cooldown", check.positive),
    },
}


def _routing(item: Any, path: str) -> Routing:
    values: dict[str, Any] = {}

    def walk(given: Any, where: str, table: dict[str, Any]) -> None:
        for key, value in check.mapping(given, where, tuple(table)).items():
            entry, at = table[key], f"{where}.{key}"
            if isinstance(entry, dict):
                walk(value, at, entry)
            else:
                field_name, reader = entry
                values[field_name] = reader(value, at)

    walk(item, path, _ROUTING)
    routing = Routing(**values)
    if routing.backoff_max < routing.backoff_base:
        raise Invalid(f"{path}.backoff.max", "must not be less than backoff.base")
    return routing


def describe(config: GatewayConfig) -> str:
    """One line for the start-up and reload logs: counts only (names are internal, URLs may carry ${VAR} values)."""
    prices = f", {len(config.prices)} prices" if config.prices else ""
    identity = config.identity
    default = " and a default" if identity.default is not None else ""
    mapped = "" if identity.empty else f", identity: {len(identity.callers)} callers, {len(identity.groups)} groups{default}"
    return f"{len(config.backends)} backends, {len(config.models)} model routes{prices}{mapped}"
