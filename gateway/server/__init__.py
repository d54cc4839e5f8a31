"""gunicorn worker classes: the gateway's behaviour below the WSGI app.

Written against gunicorn 27.0.1 and gevent 26.9 (``tests/unit/test_server.py``
fails, naming gunicorn, when an upgrade changes what this package relies on).
``gunicorn.conf.py`` picks :class:`GeventWorker` or :class:`ThreadWorker` for
``GATEWAY_WORKER_CLASS``.

Both classes:

- **Rejections in the gateway's envelope.** gunicorn refuses malformed requests
  (invalid or duplicated headers, ``Content-Length`` with ``Transfer-Encoding``,
  obs-fold, bare LF, an unknown HTTP version or transfer coding, too many or too
  large headers, a long request line) before the app sees them, and answers in
  HTML. :meth:`~gateway.server.rejections.EnvelopeErrors.handle_error` (gunicorn's documented override point
  for these) answers the same rejections with the JSON error envelope of
  :mod:`gateway.errors` and a 4xx (:data:`~gateway.server.rejections.REJECTIONS`), then closes the connection.

:class:`GeventWorker` only (the default; gthread has no per-connection greenlet to
time out or interrupt):

- **A deadline on the request body** (``REQUEST_BODY_TIMEOUT``): a body still
  arriving that long after the request's headers is answered ``408`` and the
  connection closed, so a client trickling a body cannot hold a connection for
  ever (gunicorn's keep-alive timeout only covers the request line and headers).
- **Unauthenticated connections per client address** (``MAX_CONNECTIONS_PER_ADDRESS``):
  a connection counts from accept until a request on it is admitted by the
  authentication hook (which sets ``environ["gateway.authenticated"]``, see
  :mod:`gateway.auth`); from then on it no longer counts, for the rest of its life
  (keep-alive included). Public endpoints (``/health``) and refused credentials do
  not admit a connection. A new connection from an address that already holds the
  cap of unauthenticated ones is answered ``429`` and closed before its request is
  read, so slow or idle clients without credentials cannot take the worker's
  connections, while an application server or an office behind NAT may hold any
  number of authenticated streams (:class:`~gateway.server.connections.UnauthenticatedConnections`). A burst
  of new connections from one address larger than the cap, opened before any of
  their requests has passed the hook, gets ``429`` (``Retry-After: 1``) for the
  excess. Off behind a trusted proxy (``TRUSTED_PROXY_COUNT`` > 0), where every
  connection comes from the proxy.
- **A drain that ends before the master's SIGKILL.** On SIGTERM (stop, or the old
  worker of a reload) idle kept-alive connections are closed at once, responses
  not yet begun say ``Connection: close``, and a connection that falls idle is
  closed unless a request is already waiting on it. At :func:`~gateway.server.workers.drain_seconds`
  (``GATEWAY_GRACEFUL_TIMEOUT`` less a margin) the requests still running are
  cut: a stream ends with the SSE error event (its log line and usage row are
  written as for any stream that ends early), another request gets its error
  response; the worker logs how many it cut and writes its queued usage rows
  while the master is still waiting.

The package's modules:

- :mod:`gateway.server.rejections`: gunicorn's refusals answered in the envelope;
- :mod:`gateway.server.bodies`: the request body's deadline and the cuttable stream;
- :mod:`gateway.server.connections`: keep-alive waits and the per-address count;
- :mod:`gateway.server.workers`: the two worker classes, and the drain.
"""

from __future__ import annotations

from gateway.server.workers import GeventWorker, ThreadWorker

GUNICORN_VERSION = "27.0.1"

__all__ = ["GUNICORN_VERSION", "GeventWorker", "ThreadWorker"]
