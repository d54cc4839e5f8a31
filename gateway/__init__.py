"""AI Proxy Gateway: an authenticated, rate-limited gateway to an OpenAI-compatible LLM.

:func:`create_app` is the spine; read it top to bottom to follow a request.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flask import Flask

from gateway import auth, cli, config, edge, errors, limits, metrics, observability, routes, store, upstream, usage


def create_app(overrides: Mapping[str, Any] | None = None) -> Flask:
    """Build the WSGI app.

    :param overrides: :class:`gateway.config.Settings` field values that win over
        the environment (tests use them).
    :raises gateway.config.ConfigError: on invalid configuration.
    :raises gateway.store.SchemaError: the database schema is not current (see :mod:`gateway.store`).
    """
    settings = config.load(overrides=overrides)
    app = Flask(__name__)
    app.config["GATEWAY"] = settings
    app.config["MAX_CONTENT_LENGTH"] = settings.max_request_bytes
    app.config["RATELIMIT_ENABLED"] = True
    app.json.sort_keys = False
    app.debug = False  # never the Werkzeug debugger, whatever FLASK_DEBUG says

    errors.init_app(app)
    observability.init_app(app)
    edge.init_app(app)
    store.init_app(app)
    auth.init_app(app)
    limits.init_app(app)
    routes.init_app(app)
    upstream.init_app(app)
    usage.init_app(app)
    cli.init_app(app)
    metrics.init_app(app)
    return app
