"""Routes: meta (``/``, ``/health``) and the AI relay views (one per operation)."""

from __future__ import annotations

from flask import Flask

from gateway.routes import ai, meta


def init_app(app: Flask) -> None:
    app.register_blueprint(meta.blueprint)
    app.register_blueprint(ai.blueprint)
