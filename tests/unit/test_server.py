"""gateway.server: what it relies on in gunicorn, and its pure parts.

The first test fails, naming gunicorn, when an upgrade changes a method or attribute
the worker subclasses override or use; the behaviour itself is covered under real
gunicorn by tests/e2e/test_e2e_gunicorn_rejections.py, test_e2e_slow_clients.py and
test_e2e_drain.py.
"""

from __future__ import annotations

import inspect
import json
import time

import gevent
import gunicorn
import pytest
from gunicorn.http import errors as http_errors
from gunicorn.http import message, wsgi
from gunicorn.workers import base, base_async, ggevent

from gateway import server
from gateway.errors import RequestBodyTimeout


def _params(func: object) -> list[str]:
    return list(inspect.signature(func).parameters)  # type: ignore[arg-type]


def test_gunicorn_still_offers_what_the_worker_subclasses_use() -> None:
    found = gunicorn.__version__
    hint = (f"gunicorn {found}: gateway/server.py was written against gunicorn {server.GUNICORN_VERSION}; "
            "re-check its overrides against this version")
    expected = {
        base.Worker.handle_error: ["self", "req", "client", "addr", "exc"],
        base.Worker.handle_exit: ["self", "sig", "frame"],
        base.Worker.load_wsgi: ["self"],
        ggevent.GeventWorker.handle: ["self", "listener", "client", "addr"],
        ggevent.GeventWorker.handle_request: ["self", "listener_name", "req", "sock", "addr"],
        ggevent.GeventWorker.timeout_ctx: ["self"],
    }
    for method, params in expected.items():
        assert _params(method) == params, f"{hint}: {method.__qualname__} takes {_params(method)}"
    # The keep-alive wait is the only use of timeout_ctx, around reading the next request.
    handle = inspect.getsource(base_async.AsyncWorker.handle)
    assert "with self.timeout_ctx():\n" in handle and "req = next(parser)" in handle, hint
    # A request's must_close makes its response say "Connection: close" and end the connection.
    assert "self.must_close" in inspect.getsource(message.Request.should_close), hint
    assert "self.req.should_close()" in inspect.getsource(wsgi.Response.should_close), hint
    # The drain relies on the gevent worker polling its connection pool until it is empty.
    assert "free_count()" in inspect.getsource(ggevent.GeventWorker.run), hint
    for kind, *_ in server.REJECTIONS:
        assert issubclass(kind, http_errors.ParseException), f"{hint}: {kind.__name__}"


@pytest.mark.parametrize(("exc", "status", "code"), [
    (http_errors.LimitRequestLine(9000, 4094), 414, "request_line_too_long"),
    (http_errors.LimitRequestHeaders("limit request headers fields"), 431, "headers_too_large"),
    (http_errors.InvalidHTTPVersion((2, 0)), 400, "unsupported_http_version"),
    (http_errors.UnsupportedTransferCoding("xchunked"), 400, "unsupported_transfer_encoding"),
    (http_errors.InvalidHeader("CONTENT-LENGTH"), 400, "invalid_header"),
    (http_errors.InvalidRequestLine("bare LF"), 400, "invalid_request"),
])
def test_refusals_map_to_a_4xx(exc: BaseException, status: int, code: str) -> None:
    answer = server.rejection(exc)
    assert answer is not None and answer[0] == status and answer[2] == code


def test_a_bad_header_from_the_app_stays_a_500() -> None:
    assert server.rejection(http_errors.InvalidResponseHeader("X")) is None
    assert server.rejection(RuntimeError("bug")) is None


def test_raw_error_is_a_whole_response_in_the_envelope() -> None:
    data = server.raw_error(429, "Too Many Requests", "too_many_connections", "Slow down.", "rate_limit_error",
                            headers=[("Retry-After", "1")])
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    assert lines[0] == "HTTP/1.1 429 Too Many Requests"
    assert "Connection: close" in lines and "Retry-After: 1" in lines
    assert f"Content-Length: {len(body)}" in lines
    assert json.loads(body) == {"error": {"message": "Slow down.", "type": "rate_limit_error",
                                          "code": "too_many_connections", "param": None}}


@pytest.mark.parametrize(("graceful", "drain"), [(30, 24.0), (6, 4.0), (10, 8.0), (1, 0.0), (0, 0.0)])
def test_the_drain_ends_before_the_graceful_timeout_by_a_margin(graceful: int, drain: float) -> None:
    assert server.drain_seconds(graceful) == drain


class _TrickledBody:
    def __init__(self, pause: float) -> None:
        self.pause = pause

    def read(self, size: int | None = None) -> bytes:
        gevent.sleep(self.pause)
        return b"{}"


def test_a_body_read_past_its_deadline_is_a_408() -> None:
    expired = []
    body = server._BodyWithDeadline(_TrickledBody(5.0), time.monotonic() + 0.1, lambda: expired.append(True))
    with pytest.raises(RequestBodyTimeout):
        gevent.spawn(body.read).get(timeout=3)
    assert expired == [True]


def test_a_body_read_within_its_deadline_is_untouched() -> None:
    body = server._BodyWithDeadline(_TrickledBody(0.01), time.monotonic() + 5, lambda: pytest.fail("expired"))
    assert gevent.spawn(body.read, 2).get(timeout=3) == b"{}"
