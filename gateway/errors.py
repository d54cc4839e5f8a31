"""The one place error bodies are built.

Every non-2xx response the gateway makes itself has OpenAI's shape::

    {"error": {"message": ..., "type": ..., "code": ..., "param": ...}}

Views raise :class:`GatewayError` subclasses (or Werkzeug's HTTP exceptions); the
handlers here render them. Headers of the original exception response
(``Retry-After``, ``Allow``, ``WWW-Authenticate``) are kept.
"""

from __future__ import annotations

import http.client
import logging
from typing import Any

from flask import Flask, Response, current_app, json, request
from limits.errors import StorageError
from werkzeug.exceptions import HTTPException

from gateway import extensions
from gateway.exchange import current_or_none

log = logging.getLogger(__name__)


class GatewayError(HTTPException):
    """An error the gateway reports to the client: status, OpenAI error type and code."""

    code = 500
    error_type = "api_error"
    error_code: str | None = "internal_error"
    description = "The gateway failed to handle the request."

    def __init__(
        self,
        message: str | None = None,
        *,
        error_code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message or self.description)
        if error_code is not None:
            self.error_code = error_code
        self.param = param
        self.extra_headers = headers or {}

    def get_headers(self, environ: Any = None, scope: Any = None) -> list[tuple[str, str]]:
        return [*super().get_headers(environ, scope), *self.extra_headers.items()]


class BadRequest(GatewayError):
    code = 400
    error_type = "invalid_request_error"
    error_code = "invalid_request"
    description = "The request is invalid."


class MalformedBody(BadRequest):
    """The request body could not be read: its framing is broken (e.g. a bad chunk), or it ended early."""

    error_code = "malformed_body"
    description = "The request body is malformed (bad chunked framing, or it ended early)."


class Unauthorized(GatewayError):
    code = 401
    error_type = "authentication_error"
    error_code = "invalid_api_key"
    description = "Missing or invalid credentials. Send X-API-Key: <key> or Authorization: Bearer <token>."

    def get_headers(self, environ: Any = None, scope: Any = None) -> list[tuple[str, str]]:
        return [*super().get_headers(environ, scope), ("WWW-Authenticate", 'Bearer realm="ai-proxy"')]


class TokenExpired(Unauthorized):
    """A JWT that was valid and has expired: the message says when, so the caller knows to get a new one."""

    error_code = "token_expired"
    description = "The token has expired. Get a new one from POST /auth/token."


class Forbidden(GatewayError):
    """Authenticated, but this caller may not do this (e.g. a managed key on ``/admin``)."""

    code = 403
    error_type = "permission_error"
    error_code = "forbidden"
    description = "These credentials are not allowed to do this."


class NotFound(GatewayError):
    code = 404
    error_type = "invalid_request_error"
    error_code = "not_found"
    description = "Not found."


class Conflict(GatewayError):
    code = 409
    error_type = "invalid_request_error"
    error_code = "conflict"
    description = "The request conflicts with the current state of the resource."


class ServiceUnavailable(GatewayError):
    """A store the gateway needs (the key database) does not answer; retry later."""

    code = 503
    error_type = "api_error"
    error_code = "store_unavailable"
    description = "The gateway cannot check credentials right now; retry shortly."


class UnsupportedMediaType(GatewayError):
    code = 415
    error_type = "invalid_request_error"
    error_code = "unsupported_media_type"
    description = "The request body must be JSON (Content-Type: application/json)."


class RequestBodyTimeout(GatewayError):
    """The request body did not arrive within ``REQUEST_BODY_TIMEOUT``; the connection is closed."""

    code = 408
    error_type = "invalid_request_error"
    error_code = "request_timeout"
    description = "The request body did not arrive in time."


class ConcurrencyLimited(GatewayError):
    code = 429
    error_type = "rate_limit_error"
    error_code = "concurrency_limit_exceeded"
    description = "Too many requests in flight for this key; retry when one has finished."


class LimitStorageUnavailable(GatewayError):
    code = 503
    error_type = "api_error"
    error_code = "rate_limit_storage_unavailable"
    description = "The gateway cannot check quotas right now; retry shortly."


class UpstreamError(GatewayError):
    """The upstream failed in a way that is not the client's fault."""

    code = 502
    error_type = "api_error"
    error_code = "upstream_error"
    description = "The AI backend returned an invalid response."


class UpstreamUnavailable(UpstreamError):
    error_code = "upstream_unavailable"
    description = "The AI backend could not be reached."


class UpstreamTimeout(UpstreamError):
    code = 504
    error_code = "upstream_timeout"
    description = "The AI backend did not answer in time."


class BackendsUnavailable(GatewayError):
    """No deployment of the model can take a request now: their circuits are open (the
    backends failed) or they are all at their concurrency cap (:mod:`gateway.backends`)."""

    code = 503
    error_type = "api_error"
    error_code = "backend_unavailable"
    description = "No backend of this model is available now; retry later."


class BackendsRateLimited(GatewayError):
    """Every deployment of the model asked for a pause (``Retry-After``) that ends after
    the request's deadline (:mod:`gateway.backends`)."""

    code = 429
    error_type = "rate_limit_error"
    error_code = "upstream_rate_limited"
    description = "Every backend of this model is rate limited; retry later."


class UpstreamHeadCutOff(http.client.HTTPException):
    """Raised while the upstream client reads an answer's head, when the connection ends
    before the blank line that closes the header block. An ``http.client`` exception
    (urllib3 reports it as a ``ProtocolError``); the client turns it into a 502
    :class:`UpstreamError` with ``error_code="upstream_incomplete"``."""


# How Werkzeug's own HTTP errors (routing, size limits, ...) map onto OpenAI's types.
_HTTP_TYPES: dict[int, tuple[str, str]] = {
    400: ("invalid_request_error", "invalid_request"),
    401: ("authentication_error", "invalid_api_key"),
    403: ("permission_error", "forbidden"),
    404: ("invalid_request_error", "not_found"),
    405: ("invalid_request_error", "method_not_allowed"),
    408: ("invalid_request_error", "request_timeout"),
    413: ("invalid_request_error", "request_too_large"),
    415: ("invalid_request_error", "unsupported_media_type"),
    429: ("rate_limit_error", "gateway_rate_limited"),
    503: ("api_error", "service_unavailable"),
    431: ("invalid_request_error", "headers_too_large"),
}


class RateLimited(GatewayError):
    """A request quota is full (see :mod:`gateway.quotas.windows`)."""

    code = 429
    error_type = "rate_limit_error"
    error_code = "gateway_rate_limited"
    description = "Rate limit exceeded. Retry after the time in Retry-After."


class InsufficientQuota(GatewayError):
    """A token quota or budget of the key is used up (see :mod:`gateway.quotas.tokens`)."""

    code = 429
    error_type = "insufficient_quota"
    error_code = "insufficient_quota"
    description = "This key's token quota is used up."


def envelope(message: str, error_type: str, code: str | None, param: str | None = None) -> dict[str, Any]:
    """The gateway's one error body, OpenAI's shape: ``{"error": {"message", "type", "code", "param"}}``.

    Pure: the JSON error handler (:func:`error_response`), the SSE error event
    (:func:`gateway.upstream.sse.error_event`) and the relay's answer for an upstream
    rejection without a usable body (:mod:`gateway.upstream.relay`) all build it here.
    """
    return {"error": {"message": message, "type": error_type, "code": code, "param": param}}


def error_response(
    status: int,
    message: str,
    error_type: str,
    code: str | None,
    *,
    param: str | None = None,
    headers: Any = None,
) -> Response:
    """Build an error response in the gateway's one envelope (noting its code on the request's record)."""
    exchange = current_or_none()
    if exchange is not None:
        exchange.error_code = code
    response = current_app.response_class(
        json.dumps(envelope(message, error_type, code, param)),
        status=status,
        mimetype="application/json",
    )
    if headers is not None:
        for name, value in headers.items() if hasattr(headers, "items") else headers:
            if name.lower() not in ("content-type", "content-length"):
                response.headers[name] = value
    return response


def _explained(status: int) -> str | None:
    """Werkzeug's own messages for routing and size errors, said in the gateway's terms."""
    if status == 404:
        return f"No endpoint at {request.path[:200]}. GET / lists every endpoint with its method."
    if status == 405:
        return f"{request.method} is not allowed on {request.path[:200]}. GET / lists every endpoint with its method."
    if status == 413:
        limit = current_app.config.get("MAX_CONTENT_LENGTH")
        if limit:
            return f"The request body is larger than {limit} bytes, the gateway's limit (MAX_REQUEST_BYTES)."
    return None


def render_http_exception(error: HTTPException) -> Response:
    """The JSON answer for an HTTP exception: the app's handler, and the console's for every
    client but a browser (:mod:`gateway.console`)."""
    status = error.code or 500
    if isinstance(error, GatewayError):
        error_type, code = error.error_type, error.error_code
        param = error.param
        message = error.description
    else:
        error_type, code = _HTTP_TYPES.get(status, ("api_error" if status >= 500 else "invalid_request_error", None))
        param = None
        message = _explained(status) or error.description or error.name
    return error_response(status, message, error_type, code, param=param, headers=error.get_response().headers)


def _render_storage_error(error: StorageError) -> Response:
    # The quota store failed and the outage policy is "closed" (with "open",
    # gateway.quotas.windows falls back to per-process counting and never gets here).
    extensions.request_windows().health.failed()
    return render_http_exception(LimitStorageUnavailable(headers={"Retry-After": "1"}))


def _render_unexpected(error: Exception) -> Response:
    exchange = current_or_none()
    log.exception("unhandled error request_id=%s", exchange.request_id if exchange is not None else None)
    return error_response(500, "The gateway failed to handle the request.", "api_error", "internal_error")


def init_app(app: Flask) -> None:
    app.register_error_handler(HTTPException, render_http_exception)
    app.register_error_handler(StorageError, _render_storage_error)
    app.register_error_handler(Exception, _render_unexpected)
