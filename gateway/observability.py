"""Logging set-up and the access log: one structured line per request.

A log line carries the request id, method, path, status, durations, the caller's
key id and the model (and, with tracing on, the ``trace_id`` and ``span_id`` of the
request's server span: :mod:`gateway.tracing`): never a key, a token, a header value
or prompt text.
Streamed responses are logged when the stream ends, with how it ended
(``server_shutdown``: cut by a stopping worker, see :mod:`gateway.server`).
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any, TextIO

from flask import Flask

from gateway.exchange import Exchange
from gateway.quotas.slots import stream_cut
from gateway.upstream.accounting import TokenUsage

log = logging.getLogger("gateway.access")

# One encoder for every line: json.dumps(..., default=str) would build a new one per call.
_encode = json.JSONEncoder(default=str).encode


class JsonFormatter(logging.Formatter):
    """One JSON object per line; fields given as ``extra={"fields": {...}}``."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        line.update(getattr(record, "fields", {}))
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return _encode(line)


class _StderrHandler(logging.StreamHandler[TextIO]):
    """Writes to whatever ``sys.stderr`` is at the time of the record."""

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, _value: TextIO) -> None:
        pass


def configure_logging(level: str) -> None:
    """Send the ``gateway`` loggers to stderr as JSON lines (once per process)."""
    # Work logging does for every record that our JSON lines never show: the calling
    # function's file and line (a stack walk), multiprocessing's process name and the
    # thread's name, a greenlet lookup under gevent (see the logging HOWTO,
    # "Optimization"). gunicorn's own lines show neither; they keep their pid.
    logging._srcfile = None
    logging.logMultiprocessing = False
    logging.logThreads = False
    logger = logging.getLogger("gateway")
    logger.setLevel(level.upper())
    if not any(getattr(h, "_gateway", False) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(JsonFormatter())
        handler._gateway = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
    logger.propagate = False


def _usage_fields(usage: TokenUsage | None) -> dict[str, Any]:
    if usage is None:
        return {}
    return {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens, "tokens_estimated": usage.estimated}


def access_log(exchange: Exchange) -> None:
    """Sink: one ``request`` line per finished record.

    ``duration_ms`` runs to the record's finish (a stream's end); ``upstream_ms`` to the
    upstream's answer (its headers, for a stream). A stream's line says how it ended
    (``server_shutdown`` when a stopping worker cut it, see :data:`gateway.quotas.slots.stream_cut`).
    """
    upstream_ms = exchange.upstream_ms
    caller = exchange.caller
    fields: dict[str, Any] = {
        "request_id": exchange.request_id,
        "method": exchange.method,
        "path": exchange.path,
        "status": exchange.status,
        "duration_ms": round(exchange.duration_ms or 0.0, 2),
        "upstream_ms": round(upstream_ms, 2) if upstream_ms is not None else None,
        "caller": caller.id if caller else None,
        "model": exchange.model,
        "error": exchange.error_code,
        **_usage_fields(exchange.usage),
    }
    trace = exchange.trace
    if trace is not None:  # tracing is on: the line names its trace and server span
        fields["trace_id"] = trace.trace_id
        fields["span_id"] = trace.span_id
    attempts = exchange.attempts
    if attempts:
        last = attempts[-1]
        fields["backend"] = last.backend
        fields["upstream_model"] = last.model
        if len(attempts) > 1:  # each attempt's backend and outcome, in order
            fields["attempts"] = [f"{attempt.backend}:{attempt.outcome}" for attempt in attempts]
    if exchange.stream:
        fields["stream"] = "server_shutdown" if stream_cut.get() else exchange.outcome
    log.info("request", extra={"fields": fields})


def init_app(app: Flask) -> None:
    configure_logging(app.config["GATEWAY"].log_level)
