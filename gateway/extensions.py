"""Typed access to the components :func:`gateway.create_app` keeps in ``app.extensions``.

Each component is stored once, by the ``init_app`` that builds it, under the key named
here, and read back through the accessor of the same name, which says its type.
Accessors take the app, or use the current one (inside a request or app context).
The keys keep their historical ``gateway.*`` spelling so code still reading
``app.extensions["gateway.*"]`` directly keeps working.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from flask import Flask, current_app

if TYPE_CHECKING:
    from flask_limiter import Limiter

    from gateway.auth.keys import KeyRing
    from gateway.auth.management import KeyAdmin
    from gateway.auth.tokens import TokenConfig
    from gateway.backends.config import GatewayConfig
    from gateway.backends.router import Router
    from gateway.metrics import Instruments
    from gateway.quotas.slots import InFlight
    from gateway.quotas.spend import SpendLedger
    from gateway.quotas.tokens import TokenLedger
    from gateway.quotas.windows import RequestWindows
    from gateway.store import Store
    from gateway.usage.writer import UsageWriter

STORE = "gateway.store"
KEYS = "gateway.keys"
KEY_ADMIN = "gateway.key_admin"
TOKENS = "gateway.tokens"
METRICS_TOKEN = "gateway.metrics_token"  # the token's digest, or None
LIMITER = "gateway.limiter"
REQUEST_WINDOWS = "gateway.quotas"
SLOTS = "gateway.inflight"
TOKEN_LEDGER = "gateway.tokens_ledger"
SPEND_LEDGER = "gateway.spend_ledger"
ROUTER = "gateway.upstream"  # the backends' routing table and clients
USAGE = "gateway.usage"
INSTRUMENTS = "gateway.metrics"
METRICS_DIRECTORY = "gateway.metrics.directory"
BACKENDS_CONFIG = "gateway.backends_config"


def _get(key: str, app: Flask | None) -> Any:
    return (app if app is not None else current_app).extensions[key]


def store(app: Flask | None = None) -> Store:
    found: Store = _get(STORE, app)
    return found


def keys(app: Flask | None = None) -> KeyRing:
    found: KeyRing = _get(KEYS, app)
    return found


def key_admin(app: Flask | None = None) -> KeyAdmin:
    found: KeyAdmin = _get(KEY_ADMIN, app)
    return found


def tokens(app: Flask | None = None) -> TokenConfig:
    found: TokenConfig = _get(TOKENS, app)
    return found


def metrics_token(app: Flask | None = None) -> bytes | None:
    found: bytes | None = _get(METRICS_TOKEN, app)
    return found


def limiter(app: Flask | None = None) -> Limiter:
    found: Limiter = _get(LIMITER, app)
    return found


def request_windows(app: Flask | None = None) -> RequestWindows:
    found: RequestWindows = _get(REQUEST_WINDOWS, app)
    return found


def slots(app: Flask | None = None) -> InFlight:
    found: InFlight = _get(SLOTS, app)
    return found


def token_ledger(app: Flask | None = None) -> TokenLedger:
    found: TokenLedger = _get(TOKEN_LEDGER, app)
    return found


def spend_ledger(app: Flask | None = None) -> SpendLedger:
    found: SpendLedger = _get(SPEND_LEDGER, app)
    return found


def router(app: Flask | None = None) -> Router:
    found: Router = _get(ROUTER, app)
    return found


def usage_writer(app: Flask | None = None) -> UsageWriter:
    found: UsageWriter = _get(USAGE, app)
    return found


def instruments(app: Flask | None = None) -> Instruments:
    found: Instruments = _get(INSTRUMENTS, app)
    return found


def metrics_directory(app: Flask | None = None) -> str:
    found: str = _get(METRICS_DIRECTORY, app)
    return found


def backends_config(app: Flask | None = None) -> GatewayConfig:
    found: GatewayConfig = _get(BACKENDS_CONFIG, app)
    return found
