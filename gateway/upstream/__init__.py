"""The seam to the AI backend: :mod:`.client` owns the HTTP session, :mod:`.relay`
turns upstream answers into gateway responses, :mod:`.sse` is pure framing code."""

from __future__ import annotations

from flask import Flask

from gateway import extensions
from gateway.upstream.client import UpstreamClient


def init_app(app: Flask) -> None:
    app.extensions[extensions.UPSTREAM] = UpstreamClient.from_settings(app.config["GATEWAY"])
