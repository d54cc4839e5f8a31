"""Request ids, ``Server-Timing`` and one structured log line per request.

A log line carries the request id, method, path, status, durations, the caller's
key id and the model: never a key, a token, a header value or prompt text.
Streamed responses are logged when the stream ends, with how it ended
(``server_shutdown``: cut by a stopping worker, see :mod:`gateway.server`).
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
from collections.abc import Callable
from typing import Any

from flask import Flask, Response, g, request

from gateway import auth, inflight, response_headers
from gateway.upstream.accounting import Usage

log = logging.getLogger("gateway.access")

_SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


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


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is at the time of the record."""

    @property  # type: ignore[override]
    def stream(self):  # noqa: ANN201
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:  # noqa: ANN001
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


def _start() -> None:
    ctx = g._get_current_object()  # one context lookup rather than one per attribute
    ctx.started = time.perf_counter()
    presented = request.headers.get("X-Request-ID", "")
    ctx.request_id = presented if _SAFE_REQUEST_ID.match(presented) else os.urandom(16).hex()


def _fields(status: int) -> dict[str, Any]:
    ctx = g._get_current_object()
    req = request._get_current_object()  # type: ignore[attr-defined]
    caller = auth.current_caller()
    upstream_ms = ctx.get("upstream_ms")
    return {
        "request_id": ctx.get("request_id"),
        "method": req.method,
        "path": req.path,
        "status": status,
        "duration_ms": round((time.perf_counter() - ctx.started) * 1000, 2),
        "upstream_ms": round(upstream_ms, 2) if upstream_ms is not None else None,
        "caller": caller.id if caller else None,
        "model": ctx.get("model"),
        "error": ctx.get("error_code"),
        **_usage_fields(ctx.get("usage")),
    }


def _usage_fields(usage: Usage | None) -> dict[str, Any]:
    if usage is None:
        return {}
    return {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
            "tokens_estimated": usage.estimated}


def _finish(response: Response) -> Response:
    fields = _fields(response.status_code)
    timing = f"gateway;dur={fields['duration_ms']}"
    if fields["upstream_ms"] is not None:
        timing += f", upstream;dur={fields['upstream_ms']}"
    headers = response.headers
    added = [("Server-Timing", timing)]
    if fields["request_id"] is not None:
        added.append(("X-Request-ID", fields["request_id"]))
    if "Cache-Control" not in headers:
        added.append(("Cache-Control", "no-store"))
    response_headers.put(headers, added)
    pending = g.get("stream_fields")
    if response.is_streamed and pending is not None:
        pending.update(fields)  # logged when the stream ends
    else:
        log.info("request", extra={"fields": fields})
    return response


def stream_logger() -> Callable[[str, Usage | None], None]:
    """A callback for the relay: logs the request when its stream ends."""
    fields: dict[str, Any] = {}
    started = g.started
    g.stream_fields = fields

    def finished(outcome: str, usage: Usage | None = None) -> None:
        if inflight.stream_cut.get():
            outcome = "server_shutdown"  # the relay saw its upstream read fail; the worker cut it
        fields["duration_ms"] = round((time.perf_counter() - started) * 1000, 2)
        fields["stream"] = outcome
        fields.update(_usage_fields(usage))
        log.info("request", extra={"fields": fields})

    return finished


def init_app(app: Flask) -> None:
    configure_logging(app.config["GATEWAY"].log_level)
    app.before_request(_start)
    app.after_request(_finish)
