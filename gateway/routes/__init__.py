"""Routes: meta (``/``, ``/health``), the AI relay views (one per operation), ``/api/usage`` and ``/admin``."""

from __future__ import annotations

from flask import Flask

from gateway.routes import admin, ai, meta, usage


def init_app(app: Flask) -> None:
    """Register every blueprint of the public API on ``app``."""
    app.register_blueprint(meta.blueprint)
    app.register_blueprint(ai.blueprint)
    app.register_blueprint(usage.blueprint)
    app.register_blueprint(admin.blueprint)
