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
from gateway.auth import AUTHENTICATED_ENVIRON_KEY
from gateway.errors import RequestBodyTimeout
from gateway.server import bodies, connections, rejections, workers
from tests.conftest import CANARY_MASTER_KEY


def _params(func: object) -> list[str]:
    return list(inspect.signature(func).parameters)  # type: ignore[arg-type]


def test_gunicorn_still_offers_what_the_worker_subclasses_use() -> None:
    found = gunicorn.__version__
    hint = (
        f"gunicorn {found}: gateway/server/ was written against gunicorn {server.GUNICORN_VERSION}; "
        "re-check its overrides against this version"
    )
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
    for kind, *_ in rejections.REJECTIONS:
        assert issubclass(kind, http_errors.ParseException), f"{hint}: {kind.__name__}"


@pytest.mark.parametrize(
    ("exc", "status", "code"),
    [
        (http_errors.LimitRequestLine(9000, 4094), 414, "request_line_too_long"),
        (http_errors.LimitRequestHeaders("limit request headers fields"), 431, "headers_too_large"),
        (http_errors.InvalidHTTPVersion((2, 0)), 400, "unsupported_http_version"),
        (http_errors.UnsupportedTransferCoding("xchunked"), 400, "unsupported_transfer_encoding"),
        (http_errors.InvalidHeader("CONTENT-LENGTH"), 400, "invalid_header"),
        (http_errors.InvalidRequestLine("bare LF"), 400, "invalid_request"),
    ],
)
def test_refusals_map_to_a_4xx(exc: BaseException, status: int, code: str) -> None:
    answer = rejections.rejection(exc)
    assert answer is not None and answer[0] == status and answer[2] == code


def test_a_bad_header_from_the_app_stays_a_500() -> None:
    assert rejections.rejection(http_errors.InvalidResponseHeader("X")) is None
    assert rejections.rejection(RuntimeError("bug")) is None


def test_raw_error_is_a_whole_response_in_the_envelope() -> None:
    data = rejections.raw_error(
        429, "Too Many Requests", "too_many_connections", "Slow down.", "rate_limit_error", headers=[("Retry-After", "1")]
    )
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    assert lines[0] == "HTTP/1.1 429 Too Many Requests"
    assert "Connection: close" in lines and "Retry-After: 1" in lines
    assert f"Content-Length: {len(body)}" in lines
    assert json.loads(body) == {
        "error": {"message": "Slow down.", "type": "rate_limit_error", "code": "too_many_connections", "param": None}
    }


@pytest.mark.parametrize(("graceful", "drain"), [(30, 24.0), (6, 4.0), (10, 8.0), (1, 0.0), (0, 0.0)])
def test_the_drain_ends_before_the_graceful_timeout_by_a_margin(graceful: int, drain: float) -> None:
    assert workers.drain_seconds(graceful) == drain


class _TrickledBody:
    def __init__(self, pause: float) -> None:
        self.pause = pause

    def read(self, size: int | None = None) -> bytes:
        gevent.sleep(self.pause)
        return b"{}"


def test_a_body_read_past_its_deadline_is_a_408() -> None:
    expired = []
    body = bodies.BodyWithDeadline(_TrickledBody(5.0), time.monotonic() + 0.1, lambda: expired.append(True))
    with pytest.raises(RequestBodyTimeout):
        gevent.spawn(body.read).get(timeout=3)
    assert expired == [True]


def test_a_body_read_within_its_deadline_is_untouched() -> None:
    body = bodies.BodyWithDeadline(_TrickledBody(0.01), time.monotonic() + 5, lambda: pytest.fail("expired"))
    assert gevent.spawn(body.read, 2).get(timeout=3) == b"{}"


# --- the cap on unauthenticated connections per address -------------------------------------

ADMITTED = {"gateway.authenticated": True}


def test_the_auth_hook_and_the_worker_agree_on_the_environ_key() -> None:
    assert AUTHENTICATED_ENVIRON_KEY == "gateway.authenticated"


def test_connections_without_an_admitted_request_are_capped_per_address() -> None:
    counted = connections.UnauthenticatedConnections(2)
    first, second = counted.open("10.0.0.1"), counted.open("10.0.0.1")
    assert first is not None and second is not None
    counted.begin(first, {})  # a request that was not admitted (public, or refused)
    assert counted.open("10.0.0.1") is None
    assert counted.open("10.0.0.2") is not None  # another address has its own cap
    counted.close(second)
    assert counted.open("10.0.0.1") is not None
    assert counted.open("10.0.0.1") is None


def test_an_admitted_request_frees_its_connection_for_the_rest_of_its_life() -> None:
    counted = connections.UnauthenticatedConnections(2)
    streaming = [counted.open("10.0.0.1") for _ in range(2)]
    for connection in streaming:
        assert connection is not None
        counted.begin(connection, dict(ADMITTED))  # mid-request: read when the cap is reached
    admitted = [counted.open("10.0.0.1") for _ in range(10)]
    assert None not in admitted[:2] and admitted[2:] == [None] * 8
    assert counted.held("10.0.0.1") == 2
    # Its next requests on the same connection (kept alive) need no credential to stay free.
    for connection in streaming:
        assert connection is not None
        counted.begin(connection, {})
        counted.begin(connection, {})
        assert not connection.counted
    for connection in admitted[:2]:
        assert connection is not None
        counted.close(connection)
    assert counted.held("10.0.0.1") == 0
    for connection in streaming:
        assert connection is not None
        counted.close(connection)  # closing a connection that no longer counts changes nothing
    assert counted.held("10.0.0.1") == 0 and counted.open("10.0.0.1") is not None


def test_an_admitted_request_is_noticed_when_the_next_one_begins() -> None:
    counted = connections.UnauthenticatedConnections(1)
    connection = counted.open("10.0.0.1")
    assert connection is not None
    counted.begin(connection, dict(ADMITTED))
    counted.begin(connection, {})  # e.g. GET /health, kept alive after an admitted request
    assert counted.held("10.0.0.1") == 0 and not connection.counted
    assert counted.open("10.0.0.1") is not None


@pytest.mark.parametrize("mark", [None, False, "true", 1])
def test_only_the_hooks_own_mark_admits(mark: object) -> None:
    counted = connections.UnauthenticatedConnections(1)
    connection = counted.open("10.0.0.1")
    assert connection is not None
    counted.begin(connection, {} if mark is None else {"gateway.authenticated": mark})
    assert counted.open("10.0.0.1") is None and connection.counted


def test_the_cap_is_at_least_one() -> None:
    with pytest.raises(ValueError):
        connections.UnauthenticatedConnections(0)


@pytest.mark.parametrize(
    ("method", "path", "headers", "status", "admitted"),
    [
        ("GET", "/v1/models", {"X-API-Key": CANARY_MASTER_KEY}, 200, True),
        ("GET", "/v1/models", {"Authorization": f"Bearer {CANARY_MASTER_KEY}"}, 200, True),
        ("GET", "/v1/models", {"X-API-Key": "mk-wrong-" + "x" * 40}, 401, False),
        ("GET", "/v1/models", {}, 401, False),
        ("GET", "/health", {"X-API-Key": CANARY_MASTER_KEY}, 200, False),  # public: no admission
        ("POST", "/auth/token", {}, 401, False),
    ],
)
def test_the_auth_hook_marks_only_requests_it_admits(
    make_app, method: str, path: str, headers: dict[str, str], status: int, admitted: bool
) -> None:
    """The mark lands in the environ a WSGI wrapper (the worker's) passed to the app."""
    app = make_app()
    seen: list[dict] = []
    inner = app.wsgi_app

    def outer(environ: dict, start_response: object) -> object:
        seen.append(environ)
        return inner(environ, start_response)

    app.wsgi_app = outer  # type: ignore[method-assign]
    body = {"apiKey": "wrong"} if method == "POST" else None
    response = app.test_client().open(path, method=method, headers=headers, json=body)
    assert response.status_code == status, response.get_data(as_text=True)
    assert len(seen) == 1 and seen[0].get(AUTHENTICATED_ENVIRON_KEY, False) is admitted
