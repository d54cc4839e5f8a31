"""gunicorn's refusals of malformed requests, answered in the gateway's JSON envelope.

gunicorn rejects a malformed request before the app sees it and answers in HTML;
:class:`EnvelopeErrors` overrides ``handle_error`` (gunicorn's documented override
point) to answer with the envelope of :mod:`gateway.errors` and the status
:data:`REJECTIONS` gives, then the connection closes. :func:`raw_error` builds such
an answer for any code below the WSGI app.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from gunicorn import util as gunicorn_util
from gunicorn.http import errors as http_errors

from gateway.errors import envelope

# gunicorn's exception -> (status, reason, error.code, message). The first match wins.
# RFC 9112 suggests 501 for an unknown transfer coding and 505 for an unsupported
# HTTP version: both are the client's doing, so the gateway answers 400 (a 5xx
# would count against the gateway's own error rate and page its operators).
REJECTIONS: tuple[tuple[type[BaseException], int, str, str, str], ...] = (
    (http_errors.LimitRequestLine, 414, "URI Too Long", "request_line_too_long", "The request line is too long."),
    (
        http_errors.LimitRequestHeaders,
        431,
        "Request Header Fields Too Large",
        "headers_too_large",
        "The request has too many header fields, or one that is too large.",
    ),
    (http_errors.ExpectationFailed, 417, "Expectation Failed", "expectation_failed", "The Expect header is not supported."),
    (http_errors.ForbiddenProxyRequest, 403, "Forbidden", "forbidden", "Request forbidden."),
    (
        http_errors.InvalidHTTPVersion,
        400,
        "Bad Request",
        "unsupported_http_version",
        "Only HTTP/1.0 and HTTP/1.1 are supported on this port.",
    ),
    (
        http_errors.UnsupportedTransferCoding,
        400,
        "Bad Request",
        "unsupported_transfer_encoding",
        "The request's Transfer-Encoding is not supported; send Content-Length or chunked.",
    ),
    (http_errors.ObsoleteFolding, 400, "Bad Request", "invalid_header", "Header line folding (obs-fold) is not allowed."),
    (http_errors.InvalidHeaderName, 400, "Bad Request", "invalid_header", "A header name is invalid."),
    (
        http_errors.InvalidHeader,
        400,
        "Bad Request",
        "invalid_header",
        "A header is invalid, duplicated or conflicts with another (Content-Length with Transfer-Encoding).",
    ),
    (http_errors.InvalidRequestMethod, 400, "Bad Request", "invalid_request", "The request method is invalid."),
    (http_errors.InvalidRequestLine, 400, "Bad Request", "invalid_request", "The request line is invalid (lines must end with CRLF)."),
    (http_errors.ParseException, 400, "Bad Request", "invalid_request", "The request is malformed."),
)


def raw_error(
    status: int,
    reason: str,
    code: str,
    message: str,
    error_type: str = "invalid_request_error",
    headers: Iterable[tuple[str, str]] = (),
) -> bytes:
    """A whole HTTP/1.1 error response in the gateway's envelope, closing the connection:
    for answers made below the WSGI app, where Flask's handlers cannot run."""
    from flask import json  # the same encoder as the app's error handlers

    body = json.dumps(envelope(message, error_type, code)).encode()
    head = [
        f"HTTP/1.1 {status} {reason}",
        "Connection: close",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        "Cache-Control: no-store",
        "X-Content-Type-Options: nosniff",
        *(f"{name}: {value}" for name, value in headers),
    ]
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


def rejection(exc: BaseException) -> tuple[int, str, str, str] | None:
    """How gunicorn's refusal ``exc`` is answered; ``None``: not the client's fault."""
    # types-gunicorn lacks these two classes; gunicorn 27 has them (tests/unit/test_server.py checks).
    response_header_errors = (http_errors.InvalidResponseHeader, http_errors.InvalidResponseHeaderName)  # type: ignore[attr-defined]
    if isinstance(exc, response_header_errors):
        return None  # the app tried to send a bad header: gunicorn's 500
    for kind, status, reason, code, message in REJECTIONS:
        if isinstance(exc, kind):
            return status, reason, code, message
    return None


class EnvelopeErrors:
    """Mixin for a gunicorn worker: its own error answers in the gateway's envelope."""

    log: Any

    def handle_error(self, req: Any, client: Any, addr: Any, exc: BaseException) -> None:
        """Answer a request gunicorn refused (or failed) in the JSON envelope.

        gunicorn's own version writes an HTML page; this one keeps its statuses (400,
        414, 431, ...) except where :data:`REJECTIONS` says otherwise, and logs the
        refusal without the request's text (a request line can carry a credential).
        """
        answer = rejection(exc)
        if answer is None:
            self.log.exception("Error handling request")
            data = raw_error(500, "Internal Server Error", "internal_error", "The gateway failed to handle the request.", "api_error")
        else:
            status, reason, code, message = answer
            ip = addr[0] if isinstance(addr, tuple) and addr else ""
            self.log.warning("Invalid request from ip=%s: %s (%s)", ip, type(exc).__name__, status)
            data = raw_error(status, reason, code, message)
        try:
            gunicorn_util.write_nonblock(client, data)  # as gunicorn does: never wait on this client
        except OSError:
            self.log.debug("Failed to send error message.")
