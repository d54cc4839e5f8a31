"""Quotas, in one package: who may send how much, and what happens when the store fails.

- :mod:`~gateway.quotas.windows`: request quotas per caller (``RATE_LIMIT_GENERAL`` on
  every endpoint but those :func:`gateway.auth.endpoints.is_quota_exempt` names and CORS
  preflights; ``RATE_LIMIT_AI`` on the AI endpoints, counting only requests sent
  upstream), on flask-limiter's storage and strategy (``RATE_LIMIT_STORAGE_URI``:
  ``memory://`` for one process, Redis for every worker of every instance).
- :mod:`~gateway.quotas.headers`: the ``X-RateLimit-*``/``RateLimit`` response headers.
- :mod:`~gateway.quotas.policy`: per-key policy (allowed models, ``max_tokens`` cap,
  the key's own request limits).
- :mod:`~gateway.quotas.tokens`: token quotas and budgets, reserved before the call.
- :mod:`~gateway.quotas.spend`: budgets in USD per day, week or month (calendar or
  rolling windows, :mod:`~gateway.quotas.periods`), held before the call at its most cost.
- :mod:`~gateway.quotas.slots`: concurrent AI requests per caller (``RATE_LIMIT_CONCURRENT``).
- :mod:`~gateway.quotas.outage`: the store-outage policy (``RATE_LIMIT_ON_STORAGE_ERROR``).
- :mod:`~gateway.quotas.redis_script`: every request quota in one Redis round trip.

Which endpoint pays which quota is data, in :mod:`gateway.auth.endpoints`. This module
wires them: :func:`init_app` sets up flask-limiter, and the ``before_request`` hook
counts each request against the general quota. The AI relay view counts its own
requests (:meth:`~gateway.quotas.windows.RequestWindows.hold`), once it knows whether the
request goes upstream: with the AI quota just before the upstream call, or the general
quota only when refused before it (malformed, not allowed, over a token quota, ...).

flask-limiter builds the store and the strategies from the settings, keeps the
per-process fallback, and checks the auth-failure limit (``RATE_LIMIT_AUTH_FAILURES``:
failed ``POST /auth/token`` attempts per client address, its ``deduct_when``). Its own
request hooks run only for the auth blueprint (:func:`_scope_hooks_to_blueprint`):
working out which limits apply on every request costs more than the counting itself
(measured in bench/results/profile.md). The counters, their keys and the strategies
are the same either way.
"""

from __future__ import annotations

from typing import Any, cast

from flask import Flask, Response, current_app, request
from flask_limiter import Limiter

from gateway import auth, extensions
from gateway.auth.endpoints import AI_BLUEPRINT, AUTH_FAILURE_BLUEPRINT, is_quota_exempt
from gateway.auth.views import blueprint as auth_blueprint
from gateway.config import Settings
from gateway.quotas.headers import rate_limit_headers
from gateway.quotas.policy import caller_policy
from gateway.quotas.slots import InFlight
from gateway.quotas.spend import SpendLedger
from gateway.quotas.tokens import TokenLedger
from gateway.quotas.windows import AUTH_FAILURE_QUOTA, RequestWindows, app_windows, remaining_requests, storage_options

AI_ENDPOINT_PREFIX = f"{AI_BLUEPRINT}."


def _failed_attempt(response: Response) -> bool:
    return response.status_code == 401


def _hold_to_quotas() -> None:
    """``before_request``: count the request against the caller's general quota. AI
    endpoints are left to their view, which calls :meth:`RequestWindows.hold` once it knows
    whether the request goes upstream."""
    endpoint = request.endpoint
    if not endpoint or auth.is_preflight() or endpoint.startswith(AI_ENDPOINT_PREFIX):
        return
    if is_quota_exempt(endpoint):
        return
    app_windows().hold(ai=False)


def describe(endpoint: str) -> list[str]:
    """The quotas that apply to an endpoint, for ``GET /``."""
    settings = current_app.config["GATEWAY"]
    if is_quota_exempt(endpoint):
        return []
    described = [f"{settings.rate_limit_general} per caller (all endpoints; a key may have its own)"]
    if endpoint.startswith(AI_ENDPOINT_PREFIX):
        described.append(
            f"{settings.rate_limit_ai} per caller (all AI endpoints; requests sent upstream only; a key may have its own)"
        )
        if settings.rate_limit_concurrent:
            described.append(f"{settings.rate_limit_concurrent} concurrent requests per caller")
    if endpoint.startswith(f"{AUTH_FAILURE_BLUEPRINT}."):
        described.append(f"{settings.rate_limit_auth_failures} failed attempts per client address")
    return described


def remaining_for_caller() -> dict[str, Any]:
    """What the caller has left: request quotas and token counters (for ``GET /api/usage``).

    ``requests``: per quota (``general``, ``ai``) the limit, remaining requests and
    seconds until the window frees one; ``tokens``: per set token counter the limit,
    remaining tokens and seconds until it resets; ``budget``: the budget in USD
    (:meth:`SpendLedger.status`), ``None`` without one.
    """
    policy = caller_policy()
    ledger = extensions.token_ledger()
    budget = extensions.spend_ledger().status(policy)
    return {"requests": remaining_requests(policy), "tokens": ledger.remaining(policy), "budget": budget}


def _scope_hooks_to_blueprint(app: Flask, limiter: Limiter, blueprint: str) -> None:
    """Run the request hooks ``limiter.init_app`` registered for the whole app only for
    ``blueprint``'s requests: the only limit flask-limiter checks is there, and its
    hooks would still cost every other request something with nothing to check.
    Flask keeps hooks per blueprint in these public registries (``None``: the app)."""

    def registered_by_limiter(hook: Any) -> bool:
        return getattr(hook, "__self__", None) is limiter or limiter in getattr(hook, "args", ())

    for funcs in (app.before_request_funcs, app.after_request_funcs, app.teardown_request_funcs):
        registry = cast("dict[str | None, list[Any]]", funcs)  # hooks of its own type, only moved here
        app_hooks = registry.get(None, [])
        ours = [hook for hook in app_hooks if registered_by_limiter(hook)]
        for hook in ours:
            app_hooks.remove(hook)
        registry.setdefault(blueprint, []).extend(ours)


def init_app(app: Flask) -> None:
    settings: Settings = app.config["GATEWAY"]
    limiter = Limiter(
        key_func=auth.caller_key,
        storage_uri=settings.rate_limit_storage_uri,
        storage_options=storage_options(settings),
        strategy=settings.rate_limit_strategy,
        headers_enabled=False,  # rate_limit_headers names the tightest limit instead
        key_prefix=settings.rate_limit_key_prefix,
        in_memory_fallback_enabled=settings.rate_limit_on_storage_error == "open",
        swallow_errors=False,
    )
    limiter.init_app(app)
    # flask-limiter checks only the auth-failure limit; _hold_to_quotas does the rest.
    _scope_hooks_to_blueprint(app, limiter, AUTH_FAILURE_BLUEPRINT)
    limiter.request_filter(auth.is_preflight)
    app.extensions[extensions.LIMITER] = limiter
    app.extensions[extensions.REQUEST_WINDOWS] = RequestWindows(limiter, settings)
    app.before_request(_hold_to_quotas)
    # Shared: one counter per address (key parts: prefix, address, AUTH_FAILURE_QUOTA) whatever the
    # endpoint, so the console's sign-in (gateway.console.sign_in) counts its failures on it too.
    limiter.shared_limit(
        settings.rate_limit_auth_failures,
        AUTH_FAILURE_QUOTA,
        key_func=auth.client_address,
        deduct_when=_failed_attempt,
        override_defaults=False,
    )(auth_blueprint)
    app.after_request(rate_limit_headers)
    app.extensions[extensions.SLOTS] = InFlight.from_settings(settings, limiter.storage)
    app.extensions[extensions.TOKEN_LEDGER] = TokenLedger.from_settings(settings, limiter.storage)
    app.extensions[extensions.SPEND_LEDGER] = SpendLedger.from_settings(settings, limiter.storage)
