"""OpenTelemetry traces of the gateway's requests: off unless ``OTEL_TRACES_EXPORTER`` says where.

Configured by the standard ``OTEL_*`` variables (README, "Tracing"). Off by default, and
then free: :func:`init_app` registers nothing and the OpenTelemetry SDK's tracing is not
even imported; what the request path does for tracing is one ``is None`` test per hook
(the record's :attr:`~gateway.exchange.Exchange.trace`). On (``otlp`` or ``console``),
:mod:`gateway.tracing.spans` makes, per request:

- one ``SERVER`` span, from the request record's start to its finish (a stream's end),
  continuing the caller's W3C ``traceparent`` when one came in;
- one ``CLIENT`` span per attempt at a backend (retries and fallbacks each get theirs),
  whose context is sent upstream as ``traceparent``;
- attributes after the GenAI semantic conventions (``gen_ai.operation.name``,
  ``gen_ai.request.model``, ``gen_ai.response.model``, ``gen_ai.usage.input_tokens``,
  ``gen_ai.usage.output_tokens``, ``gen_ai.provider.name``) and the backend
  (``server.address``, ``server.port``, ``gateway.backend.name``). Never a prompt, a
  completion, a header value or a credential.

The request id and the trace: with tracing on, a request that brings no valid
``X-Request-ID`` gets ``<trace id>-<span id>`` of its server span as its request id (in
``X-Request-ID``, the logs, the usage row and the id sent upstream): the trace id to
find the trace, the span id to tell apart requests that continue one caller's trace.
A request that brings its own keeps it, and its access log line carries ``trace_id``
and ``span_id`` beside it.

Trust: an incoming ``traceparent`` is always continued (the gateway's spans join the
caller's trace), and whether the caller's sampled flag counts is the sampler's choice,
``OTEL_TRACES_SAMPLER``: the default ``parentbased_always_on`` records every request
anyway; with ``parentbased_traceidratio`` a caller's flag can ask for more than the
ratio, so ``traceidratio`` is the choice that leaves callers no say. Only W3C trace
context is read and sent (``traceparent``, ``tracestate``), never ``baggage``: a caller's
baggage is not forwarded to a backend.

Processes: the tracer provider and its batch span processor (a background thread) are
made in :func:`init_app`, that is in each gunicorn worker after the fork (the app is
created there); gunicorn's ``worker_exit`` calls :func:`stop_all`, which exports the
spans still queued before the worker exits.
"""

from __future__ import annotations

import logging
import weakref
from typing import TYPE_CHECKING

from flask import Flask

from gateway.config import Settings

if TYPE_CHECKING:
    from gateway.tracing.spans import Tracing

log = logging.getLogger(__name__)

_TRACING_KEY = "gateway.tracing"

# Every tracer set-up of this process, for stop_all() (gunicorn worker_exit).
_started: weakref.WeakSet[Tracing] = weakref.WeakSet()


def enabled(settings: Settings) -> bool:
    """Whether the settings turn tracing on."""
    return settings.otel_traces_exporter != "none" and not settings.otel_sdk_disabled


def init_app(app: Flask) -> None:
    """Trace the app's requests when the settings say so (see the module); else do nothing."""
    settings: Settings = app.config["GATEWAY"]
    if not enabled(settings):
        return
    from gateway.tracing import spans  # the SDK is imported here, only when tracing is on

    tracing = spans.Tracing.from_settings(settings)
    spans.install(app, tracing)
    app.extensions[_TRACING_KEY] = tracing
    _started.add(tracing)
    log.info("tracing: on, spans exported with %s", settings.otel_traces_exporter)


def tracing_of(app: Flask) -> Tracing | None:
    """The app's tracer set-up, or ``None`` when tracing is off."""
    found: Tracing | None = app.extensions.get(_TRACING_KEY)
    return found


def stop_all(timeout_seconds: float = 5.0) -> None:
    """Export the spans still queued and stop every tracer set-up of this process
    (gunicorn ``worker_exit``; also at interpreter exit, through the SDK's own hook)."""
    for tracing in list(_started):
        tracing.stop(timeout_seconds)
        _started.discard(tracing)
