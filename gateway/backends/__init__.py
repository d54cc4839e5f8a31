"""Several backends behind one gateway: which backend serves a model, and how.

- :mod:`gateway.backends.config`: the backends configuration, from the YAML file named by
  ``GATEWAY_CONFIG`` or, without one, today's single upstream; validated, one-line errors;
- :mod:`gateway.backends.model`: its frozen records (backends, model routes, routing policy);
- :mod:`gateway.backends.snapshot`: the file's accepted text, checked by the gunicorn master
  at start and on reload (SIGHUP) and handed to the workers it forks;
- :mod:`gateway.backends.router`: the routing table of a worker (each route's deployments
  and their live state: :mod:`.state`, :mod:`.breaker`; the retry budget: :mod:`.budget`);
- :mod:`gateway.backends.dispatch`: one request through its route's deployments (choice:
  :mod:`.balance`; retries, fallbacks, ``Retry-After``: :mod:`.backoff`).

:func:`init_app` builds the configuration once per process and keeps it in
``app.extensions`` (read it with :func:`gateway.extensions.backends_config`).
"""

from __future__ import annotations

from flask import Flask

from gateway import extensions
from gateway.backends import snapshot
from gateway.config import Settings


def init_app(app: Flask) -> None:
    """:raises gateway.backends.config.ConfigFileError: the file is invalid (one line)."""
    settings: Settings = app.config["GATEWAY"]
    app.extensions[extensions.BACKENDS_CONFIG] = snapshot.build(settings)
