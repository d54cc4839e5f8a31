"""The backends configuration as the gateway uses it: frozen records, no I/O.

Built by :mod:`gateway.backends.config` (from the YAML file named by ``GATEWAY_CONFIG``, or
from today's single-upstream settings) and never changed afterwards: a reload builds a
new one in new workers. Pure: imports neither flask nor requests.

Model routing (:meth:`GatewayConfig.route_for`): an exact public name wins; otherwise the
first glob (``fnmatch.fnmatchcase``: ``*``, ``?``, ``[...]``) in file order that matches.
A request without a model is matched as the empty name, which only ``*`` matches.
Prices (:meth:`GatewayConfig.price_for`) are matched the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from fnmatch import fnmatchcase

from gateway.backends.identity import IdentityMap

DIALECTS = ("openai", "azure")
GLOB_CHARACTERS = frozenset("*?[")
DEFAULT_RETRY_ON = frozenset({"connect", "timeout", "429", "500", "502", "503", "504"})


def is_glob(name: str) -> bool:
    return not GLOB_CHARACTERS.isdisjoint(name)


@dataclass(frozen=True, slots=True)
class Timeouts:
    connect: float  # seconds to connect
    first_byte: float  # until the answer's head (non-stream) / first event (stream)
    idle: float  # between stream events (and body reads)
    total: float  # whole request, all attempts included


@dataclass(frozen=True, slots=True)
class Backend:
    name: str
    url: str  # the /v1 base for dialect "openai"; the resource endpoint (https://x.openai.azure.com) for "azure"
    dialect: str  # "openai" | "azure"
    api_key: str = field(repr=False)  # resolved from api_key_env ("" when none); never printed
    api_key_env: str  # the variable's name (for messages)
    api_version: str  # azure only ("" otherwise)
    timeouts: Timeouts
    max_concurrent: int  # 0 = no cap
    weight: float  # default weight of its deployments
    headers: tuple[tuple[str, str], ...]  # extra static headers (values may come from ${VAR}, so not printed)

    def __repr__(self) -> str:
        # Header values may hold a secret from ${VAR}: names only.
        names = ", ".join(name for name, _ in self.headers)
        return (
            f"Backend(name={self.name!r}, url={self.url!r}, dialect={self.dialect!r}, api_key_env={self.api_key_env!r}, "
            f"api_version={self.api_version!r}, timeouts={self.timeouts!r}, max_concurrent={self.max_concurrent}, "
            f"weight={self.weight}, headers=[{names}])"
        )


@dataclass(frozen=True, slots=True)
class Deployment:
    backend: str  # a Backend.name
    model: str | None  # upstream model name; None = the public name the client sent (passthrough)
    weight: float  # default: the backend's weight
    priority: int  # 0 first; higher numbers are fallbacks used only when every lower one is unavailable or failed


@dataclass(frozen=True, slots=True)
class ModelRoute:
    name: str  # public name, or a glob such as "llama-*"; "*" matches all
    deployments: tuple[Deployment, ...]  # file order = fallback order inside a priority


@dataclass(frozen=True, slots=True)
class Routing:
    max_attempts: int = 3  # attempts per request, first included (1 = no retry)
    retry_on: frozenset[str] = DEFAULT_RETRY_ON  # "connect", "timeout" and status codes as strings
    backoff_base: float = 0.1  # seconds; full jitter: uniform(0, min(cap, base * 2**n))
    backoff_max: float = 2.0
    retry_after_max: float = 30.0  # cap on honoured Retry-After / retry-after-ms
    retry_budget_ratio: float = 0.2  # retries <= ratio * requests over the window (+ min_retries)
    retry_budget_window: float = 10.0  # seconds
    retry_budget_min: int = 3  # retries always allowed per window (little traffic)
    breaker_failures: int = 5  # consecutive failures that open a deployment's circuit; 0 = no circuit breaker at all
    breaker_failure_ratio: float = 0.5  # or this failure ratio over the window ...
    breaker_window: float = 10.0  # ... seconds ...
    breaker_min_requests: int = 10  # ... once it saw at least this many requests
    breaker_cooldown: float = 5.0  # seconds open, then one trial request (half-open)
    expose_backend_header: bool = False  # X-Gateway-Backend on answers


CURRENCY = "USD"
PER_TOKENS = 1_000_000  # prices are per million tokens


@dataclass(frozen=True, slots=True)
class Price:
    """What a public model's tokens cost, in USD per million tokens (exact decimals)."""

    model: str  # public name, or a glob such as "llama-*"
    input: Decimal  # prompt tokens not read from the upstream's cache
    cached_input: Decimal  # prompt tokens the upstream read from its cache (default: input)
    output: Decimal  # completion tokens, reasoning tokens included

    def as_dict(self) -> dict[str, object]:
        """As ``GET /admin/prices`` shows it (JSON numbers)."""
        return {
            "model": self.model,
            "input": float(self.input),
            "cached_input": float(self.cached_input),
            "output": float(self.output),
            "currency": CURRENCY,
            "per_tokens": PER_TOKENS,
        }


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    source: str | None  # the file's path; None when the routes come from the environment (no file, or prices only)
    backends: tuple[Backend, ...]
    models: tuple[ModelRoute, ...]
    routing: Routing
    prices: tuple[Price, ...] = ()  # file order; empty: no price table (every cost is null)
    identity: IdentityMap = field(default_factory=IdentityMap)  # identity: callers from the identity provider -> policies
    # Lookups worked out once (route_for runs on every request).
    _by_backend: Mapping[str, Backend] = field(init=False, repr=False, compare=False)
    _exact: Mapping[str, ModelRoute] = field(init=False, repr=False, compare=False)
    _globs: tuple[ModelRoute, ...] = field(init=False, repr=False, compare=False)
    _exact_prices: Mapping[str, Price] = field(init=False, repr=False, compare=False)
    _glob_prices: tuple[Price, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_backend", {backend.name: backend for backend in self.backends})
        object.__setattr__(self, "_exact", {route.name: route for route in self.models if not is_glob(route.name)})
        object.__setattr__(self, "_globs", tuple(route for route in self.models if is_glob(route.name)))
        object.__setattr__(self, "_exact_prices", {price.model: price for price in self.prices if not is_glob(price.model)})
        object.__setattr__(self, "_glob_prices", tuple(price for price in self.prices if is_glob(price.model)))

    def backend(self, name: str) -> Backend:
        """:raises KeyError: no backend has that name."""
        return self._by_backend[name]

    def route_for(self, model: str | None) -> ModelRoute | None:
        """The route of a requested model: its exact name first, then the globs in file order."""
        name = model or ""
        route = self._exact.get(name)
        if route is not None:
            return route
        for glob in self._globs:
            if fnmatchcase(name, glob.name):
                return glob
        return None

    def price_for(self, model: str | None) -> Price | None:
        """The price of a public model name, matched as :meth:`route_for` matches routes."""
        name = model or ""
        price = self._exact_prices.get(name)
        if price is not None:
            return price
        for glob in self._glob_prices:
            if fnmatchcase(name, glob.model):
                return glob
        return None

    def public_models(self) -> tuple[str, ...]:
        """The exact (non-glob) public names, in file order: what ``GET /v1/models`` lists."""
        return tuple(self._exact)

    @property
    def from_file(self) -> bool:
        return self.source is not None
