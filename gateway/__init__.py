"""AI Proxy Gateway: an authenticated, rate-limited gateway to an OpenAI-compatible LLM.

:func:`create_app` is the spine; read it top to bottom to follow a request:
configuration, the request record (:mod:`gateway.exchange`), the edge (proxies, CORS,
security headers), storage, auth, quotas (:mod:`gateway.quotas`), the routes, the
upstream client, and the sinks every finished record is handed to (access log, usage
rows, metrics). Adding a sink is one module and one :func:`gateway.exchange.add_sink` line.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from flask import Flask
from flask.json.provider import DefaultJSONProvider

from gateway import (
    auth,
    backends,
    cli,
    config,
    console,
    edge,
    errors,
    exchange,
    metrics,
    observability,
    quotas,
    request_metrics,
    routes,
    store,
    tracing,
    upstream,
    usage,
)


class GatewayFlask(Flask):
    """Flask, remembering which hooks and views need an async wrapper.

    Flask asks ``inspect.iscoroutinefunction`` of every hook and view on every request
    (one per hook); the answer never changes, so it is worked out once.
    """

    def ensure_sync(self, func: Callable[..., Any]) -> Callable[..., Any]:
        cache: dict[Any, Callable[..., Any]] = self.__dict__.setdefault("_sync_callables", {})
        try:
            return cache[func]
        except KeyError:
            wrapped = cache[func] = super().ensure_sync(func)
            return wrapped
        except TypeError:  # an unhashable callable: ask every time, as Flask does
            return super().ensure_sync(func)


def create_app(overrides: Mapping[str, Any] | None = None) -> Flask:
    """Build the WSGI app.

    :param overrides: :class:`gateway.config.Settings` field values that win over
        the environment (tests use them).
    :raises gateway.config.ConfigError: on invalid configuration.
    :raises gateway.store.SchemaError: the database schema is not current (see :mod:`gateway.store`).
    """
    settings = config.load(overrides=overrides)
    app = GatewayFlask(__name__)
    app.config["GATEWAY"] = settings
    app.config["MAX_CONTENT_LENGTH"] = settings.max_request_bytes
    app.config["RATELIMIT_ENABLED"] = True
    if isinstance(app.json, DefaultJSONProvider):
        app.json.sort_keys = False
    app.debug = False  # never the Werkzeug debugger, whatever FLASK_DEBUG says

    errors.init_app(app)
    observability.init_app(app)
    exchange.init_app(app)  # every request's record: made first, finished at its response or stream's end
    tracing.init_app(app)  # off unless OTEL_TRACES_EXPORTER: the record's spans, ended by their own sink
    edge.init_app(app)
    store.init_app(app)
    auth.init_app(app)
    quotas.init_app(app)
    routes.init_app(app)
    console.init_app(app)  # the operator's console in the browser (ADMIN_UI), under ADMIN_UI_PREFIX
    backends.init_app(app)  # the backends configuration (GATEWAY_CONFIG), read by the upstream client
    upstream.init_app(app)
    usage.init_app(app)
    cli.init_app(app)
    metrics.init_app(app)
    # Where every finished request record goes, in order (see gateway.exchange).
    exchange.add_sink(app, observability.access_log)
    exchange.add_sink(app, usage.usage_rows(app))
    exchange.add_sink(app, request_metrics.request_metrics(app))
    return app
