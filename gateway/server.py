"""gunicorn worker classes: the gateway's behaviour below the WSGI app.

Written against gunicorn 27.0.1 and gevent 26.9 (``tests/unit/test_server.py``
fails, naming gunicorn, when an upgrade changes what this module relies on).
``gunicorn.conf.py`` picks :class:`GeventWorker` or :class:`ThreadWorker` for
``GATEWAY_WORKER_CLASS``.

Both classes:

- **Rejections in the gateway's envelope.** gunicorn refuses malformed requests
  (invalid or duplicated headers, ``Content-Length`` with ``Transfer-Encoding``,
  obs-fold, bare LF, an unknown HTTP version or transfer coding, too many or too
  large headers, a long request line) before the app sees them, and answers in
  HTML. :meth:`EnvelopeErrors.handle_error` (gunicorn's documented override point
  for these) answers the same rejections with the JSON error envelope of
  :mod:`gateway.errors` and a 4xx (:data:`REJECTIONS`), then closes the connection.

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
  number of authenticated streams (:class:`UnauthenticatedConnections`). A burst
  of new connections from one address larger than the cap, opened before any of
  their requests has passed the hook, gets ``429`` (``Retry-After: 1``) for the
  excess. Off behind a trusted proxy (``TRUSTED_PROXY_COUNT`` > 0), where every
  connection comes from the proxy.
- **A drain that ends before the master's SIGKILL.** On SIGTERM (stop, or the old
  worker of a reload) idle kept-alive connections are closed at once, responses
  not yet begun say ``Connection: close``, and a connection that falls idle is
  closed unless a request is already waiting on it. At :func:`drain_seconds`
  (``GATEWAY_GRACEFUL_TIMEOUT`` less a margin) the requests still running are
  cut: a stream ends with the SSE error event (its log line and usage row are
  written as for any stream that ends early), another request gets its error
  response; the worker logs how many it cut and writes its queued usage rows
  while the master is still waiting.
"""

from __future__ import annotations

import errno
import logging
import socket
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import gevent
from gevent.monkey import get_original
from gunicorn import util as gunicorn_util
from gunicorn.http import errors as http_errors
from gunicorn.workers.ggevent import GeventWorker as _GunicornGeventWorker
from gunicorn.workers.gthread import ThreadWorker as _GunicornThreadWorker

from gateway import config, usage
from gateway.quotas import slots as inflight
from gateway.auth import AUTHENTICATED_ENVIRON_KEY
from gateway.errors import RequestBodyTimeout, envelope
from gateway.upstream.sse import error_event

log = logging.getLogger(__name__)

_select = get_original("select", "select")  # never yields to the hub

GUNICORN_VERSION = "27.0.1"

# gunicorn's exception -> (status, reason, error.code, message). The first match wins.
# RFC 9112 suggests 501 for an unknown transfer coding and 505 for an unsupported
# HTTP version: both are the client's doing, so the gateway answers 400 (a 5xx
# would count against the gateway's own error rate and page its operators).
REJECTIONS: tuple[tuple[type[BaseException], int, str, str, str], ...] = (
    (http_errors.LimitRequestLine, 414, "URI Too Long", "request_line_too_long",
     "The request line is too long."),
    (http_errors.LimitRequestHeaders, 431, "Request Header Fields Too Large", "headers_too_large",
     "The request has too many header fields, or one that is too large."),
    (http_errors.ExpectationFailed, 417, "Expectation Failed", "expectation_failed",
     "The Expect header is not supported."),
    (http_errors.ForbiddenProxyRequest, 403, "Forbidden", "forbidden", "Request forbidden."),
    (http_errors.InvalidHTTPVersion, 400, "Bad Request", "unsupported_http_version",
     "Only HTTP/1.0 and HTTP/1.1 are supported on this port."),
    (http_errors.UnsupportedTransferCoding, 400, "Bad Request", "unsupported_transfer_encoding",
     "The request's Transfer-Encoding is not supported; send Content-Length or chunked."),
    (http_errors.ObsoleteFolding, 400, "Bad Request", "invalid_header",
     "Header line folding (obs-fold) is not allowed."),
    (http_errors.InvalidHeaderName, 400, "Bad Request", "invalid_header", "A header name is invalid."),
    (http_errors.InvalidHeader, 400, "Bad Request", "invalid_header",
     "A header is invalid, duplicated or conflicts with another (Content-Length with Transfer-Encoding)."),
    (http_errors.InvalidRequestMethod, 400, "Bad Request", "invalid_request", "The request method is invalid."),
    (http_errors.InvalidRequestLine, 400, "Bad Request", "invalid_request",
     "The request line is invalid (lines must end with CRLF)."),
    (http_errors.ParseException, 400, "Bad Request", "invalid_request", "The request is malformed."),
)


def raw_error(status: int, reason: str, code: str, message: str, error_type: str = "invalid_request_error",
              headers: Iterable[tuple[str, str]] = ()) -> bytes:
    """A whole HTTP/1.1 error response in the gateway's envelope, closing the connection:
    for answers made below the WSGI app, where Flask's handlers cannot run."""
    from flask import json  # the same encoder as the app's error handlers

    body = json.dumps(envelope(message, error_type, code)).encode()
    head = [f"HTTP/1.1 {status} {reason}", "Connection: close", "Content-Type: application/json",
            f"Content-Length: {len(body)}", "Cache-Control: no-store", "X-Content-Type-Options: nosniff",
            *(f"{name}: {value}" for name, value in headers)]
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


def rejection(exc: BaseException) -> tuple[int, str, str, str] | None:
    """How gunicorn's refusal ``exc`` is answered; ``None``: not the client's fault."""
    if isinstance(exc, (http_errors.InvalidResponseHeader, http_errors.InvalidResponseHeaderName)):
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
            data = raw_error(500, "Internal Server Error", "internal_error",
                             "The gateway failed to handle the request.", "api_error")
        else:
            status, reason, code, message = answer
            ip = addr[0] if isinstance(addr, tuple) and addr else ""
            self.log.warning("Invalid request from ip=%s: %s (%s)", ip, type(exc).__name__, status)
            data = raw_error(status, reason, code, message)
        try:
            gunicorn_util.write_nonblock(client, data)  # as gunicorn does: never wait on this client
        except OSError:
            self.log.debug("Failed to send error message.")


class ThreadWorker(EnvelopeErrors, _GunicornThreadWorker):
    """gunicorn's gthread worker, answering its refusals in the gateway's envelope."""


def drain_seconds(graceful_timeout: float) -> float:
    """How long a stopping worker lets requests run before it cuts them: the
    graceful timeout less a margin (20 %, at least 2 s) in which it ends the cut
    streams, writes their usage rows and exits before the master's SIGKILL."""
    return max(0.0, graceful_timeout - max(2.0, graceful_timeout * 0.2))


class RequestCut(ConnectionResetError):
    """Thrown into a request still running at the drain deadline.

    A ``ConnectionResetError``: wherever it lands (waiting on the upstream, on the
    client, on a body) the code there already handles a connection that broke: the
    relay ends a stream with its error event, a blocked write closes the client."""

    def __init__(self) -> None:
        super().__init__(errno.ECONNRESET, "the worker is stopping")


SHUTDOWN_EVENT = error_event("The gateway is stopping or restarting; this stream was cut before its end. Retry the request.",
                             code="server_shutting_down")


class CuttableStream:
    """An event stream's response body that the drain can end with an error event.

    When the drain cuts the stream, the relay sees its upstream read fail and ends
    the stream its usual way (its own error event, then its end callback: log line,
    usage row, concurrency slot). This wrapper swaps that event for
    :data:`SHUTDOWN_EVENT`, which names the real reason, and marks the stream's
    outcome (:data:`gateway.inflight.stream_cut`) for the log line.
    """

    def __init__(self, inner: Iterable[bytes], live: set[CuttableStream]) -> None:
        self._inner = iter(inner)
        self._source = inner
        self._live = live
        self.greenlet: Any = None
        self.cut = False
        self._ended = False

    def __iter__(self) -> CuttableStream:
        return self

    def __next__(self) -> bytes:
        if self._ended:
            raise StopIteration
        if self.greenlet is None:
            self.greenlet = gevent.getcurrent()
            self._live.add(self)
        try:
            item = next(self._inner)
        except StopIteration:
            if not self.cut:
                self._end()
                raise
            item = b""
        if not self.cut:
            return item
        # Cut: let the relay finish (its end callback runs), without its own error event.
        marked = inflight.stream_cut.set(True)
        try:
            for _ in self._inner:
                pass
        finally:
            inflight.stream_cut.reset(marked)
            self._end()
        return SHUTDOWN_EVENT

    def _end(self) -> None:
        self._ended = True
        self._live.discard(self)

    def close(self) -> None:
        self._live.discard(self)
        close = getattr(self._source, "close", None)
        if close is not None:
            close()


class _BodyWithDeadline:
    """``wsgi.input`` whose reads fail with ``408`` once the body's deadline has passed."""

    def __init__(self, body: Any, deadline: float, expired: Callable[[], None]) -> None:
        self._body = body
        self._deadline = deadline
        self._expired = expired

    def _within_deadline(self, read: Callable[..., Any], *args: Any) -> Any:
        remaining = self._deadline - time.monotonic()
        if remaining > 0:
            timer = gevent.Timeout.start_new(remaining)
            try:
                return read(*args)
            except gevent.Timeout as error:
                if error is not timer:
                    raise
            finally:
                timer.close()
        self._expired()
        raise RequestBodyTimeout()

    def read(self, size: int | None = None) -> bytes:
        return self._within_deadline(self._body.read, size)

    def readline(self, size: int | None = None) -> bytes:
        return self._within_deadline(self._body.readline, size)

    def readlines(self, hint: int | None = None) -> list[bytes]:
        return self._within_deadline(self._body.readlines, hint)

    def __iter__(self) -> Iterator[bytes]:
        while line := self.readline():
            yield line


def _linger(client: Any) -> None:
    """End a connection whose answer is sent but whose request was not read whole: stop
    writing, then read (and drop) what the client still sends for up to a second, so
    closing with unread bytes does not reset the connection before the client has read
    the answer."""
    try:
        client.shutdown(socket.SHUT_WR)
        with gevent.Timeout(1.0, False):
            while client.recv(65536):
                pass
    except OSError:
        pass


class _KeepAliveWait:
    """The wait for a kept-alive connection's next request (gunicorn's keep-alive
    timeout), registered so a draining worker can end it."""

    __slots__ = ("_idle", "timeout", "greenlet")

    def __init__(self, idle: dict[Any, _KeepAliveWait], seconds: float) -> None:
        self._idle = idle
        self.timeout = gevent.Timeout(seconds, False)  # on expiry: no request, the connection closes
        self.greenlet: Any = None

    def __enter__(self) -> _KeepAliveWait:
        self.greenlet = gevent.getcurrent()
        self._idle[self.greenlet] = self
        self.timeout.start()
        return self

    def __exit__(self, typ: Any, value: Any, tb: Any) -> bool | None:
        self._idle.pop(self.greenlet, None)
        return self.timeout.__exit__(typ, value, tb)


class Connection:
    """One client connection counted by :class:`UnauthenticatedConnections`: its
    address and the WSGI environ of its current (latest) request."""

    __slots__ = ("address", "environ", "counted")

    def __init__(self, address: str) -> None:
        self.address = address
        self.environ: dict[str, Any] | None = None
        self.counted = True

    def admitted(self) -> bool:
        """Whether its current request passed the authentication hook."""
        environ = self.environ
        return environ is not None and environ.get(AUTHENTICATED_ENVIRON_KEY) is True


class UnauthenticatedConnections:
    """Per client address, the open connections no request has yet been admitted on,
    capped at ``cap`` (one worker's; greenlets only, so no lock).

    The authentication hook only marks its request's environ. Here that mark is read
    lazily: when the next request begins on the connection (:meth:`begin`), and when
    a new connection would exceed the cap (:meth:`open` re-checks the address's
    counted connections). A connection found admitted stops counting for good.
    """

    def __init__(self, cap: int) -> None:
        if cap < 1:
            raise ValueError("cap must be at least 1")
        self.cap = cap
        self._by_address: dict[str, set[Connection]] = {}

    def held(self, address: str) -> int:
        """How many connections ``address`` holds that count against the cap."""
        return len(self._by_address.get(address, ()))

    def open(self, address: str) -> Connection | None:
        """Count a new connection from ``address``; ``None``: over the cap, refuse it."""
        held = self._by_address.get(address)
        if held is not None and len(held) >= self.cap:
            for connection in [connection for connection in held if connection.admitted()]:
                self._settle(connection)
            if self.held(address) >= self.cap:
                return None
        connection = Connection(address)
        self._by_address.setdefault(address, set()).add(connection)
        return connection

    def begin(self, connection: Connection, environ: dict[str, Any]) -> None:
        """A request begins on ``connection`` (after the previous one, if any)."""
        if connection.counted:
            if connection.admitted():
                self._settle(connection)
            else:
                connection.environ = environ

    def close(self, connection: Connection) -> None:
        if connection.counted:
            self._settle(connection)

    def _settle(self, connection: Connection) -> None:
        """Stop counting ``connection`` (admitted, or closed)."""
        connection.counted = False
        connection.environ = None
        held = self._by_address.get(connection.address)
        if held is not None:
            held.discard(connection)
            if not held:
                del self._by_address[connection.address]


class GeventWorker(EnvelopeErrors, _GunicornGeventWorker):
    """gunicorn's gevent worker with a body deadline, a per-address cap on unauthenticated
    connections and
    a drain that ends before the master's SIGKILL (see the module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._unauthenticated: UnauthenticatedConnections | None = None  # None: no cap
        self._connections: dict[Any, Connection] = {}  # greenlet -> its counted connection
        self._sockets: dict[Any, Any] = {}  # greenlet -> its client socket
        self._requests: dict[Any, Any] = {}  # greenlet -> the gunicorn request it is serving
        self._idle: dict[Any, _KeepAliveWait] = {}
        self._served: set[Any] = set()  # greenlets whose connection has served a request
        self._streams: set[CuttableStream] = set()
        self._lingering: set[Any] = set()  # requests whose unread body is dropped after the answer
        self._draining = False
        self._body_timeout = 30.0

    # --- the app, wrapped ---------------------------------------------------------------
    def load_wsgi(self) -> None:
        super().load_wsgi()
        app = self.wsgi
        settings = getattr(app, "config", {}).get("GATEWAY") or config.load()
        self._body_timeout = settings.request_body_timeout
        cap = 0 if settings.trusted_proxy_count else settings.max_connections_per_address
        self._unauthenticated = UnauthenticatedConnections(cap) if cap else None
        self.wsgi = self._wrap(app)

    def _wrap(self, app: Callable[..., Any]) -> Callable[..., Any]:
        streams = self._streams
        unauthenticated = self._unauthenticated
        connections = self._connections

        def gateway_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
            if unauthenticated is not None:
                connection = connections.get(gevent.getcurrent())
                if connection is not None:
                    unauthenticated.begin(connection, environ)
            environ["wsgi.input"] = _BodyWithDeadline(environ["wsgi.input"],
                                                      time.monotonic() + self._body_timeout, self._body_expired)
            streamed = False

            def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
                nonlocal streamed
                streamed = any(name.lower() == "content-type" and value.startswith("text/event-stream")
                               for name, value in headers)
                return start_response(status, headers, exc_info)

            body = app(environ, start)
            return CuttableStream(body, streams) if streamed else body

        return gateway_app

    def _body_expired(self) -> None:
        """The current request's body ran out of time: its answer closes the connection."""
        req = self._requests.get(gevent.getcurrent())
        if req is not None:
            req.must_close = True  # gunicorn: "Connection: close", then close
            self._lingering.add(req)

    # --- connections ----------------------------------------------------------------------
    def handle(self, listener: Any, client: Any, addr: Any) -> None:
        address = addr[0] if isinstance(addr, tuple) and addr else ""
        me = gevent.getcurrent()
        unauthenticated = self._unauthenticated
        connection = None
        if unauthenticated is not None and address:
            connection = unauthenticated.open(address)
            if connection is None:
                self._refuse(client)
                return
            self._connections[me] = connection
        self._sockets[me] = client
        try:
            super().handle(listener, client, addr)
        finally:
            self._sockets.pop(me, None)
            self._served.discard(me)
            if unauthenticated is not None and connection is not None:
                self._connections.pop(me, None)
                unauthenticated.close(connection)

    def _refuse(self, client: Any) -> None:
        """Answer a connection over the per-address cap of unauthenticated connections
        with 429, then close it."""
        try:
            client.setblocking(1)
            client.sendall(raw_error(429, "Too Many Requests", "too_many_connections",
                                     "Too many open connections from this address; close some and retry.",
                                     "rate_limit_error", headers=[("Retry-After", "1")]))
            _linger(client)
        except OSError:
            pass
        finally:
            client.close()

    def handle_request(self, listener_name: Any, req: Any, sock: Any, addr: Any) -> Any:
        me = gevent.getcurrent()
        if self._draining:
            req.must_close = True
        self._requests[me] = req
        try:
            return super().handle_request(listener_name, req, sock, addr)
        finally:
            self._requests.pop(me, None)
            self._served.add(me)
            if req in self._lingering:
                self._lingering.discard(req)
                _linger(sock)

    def timeout_ctx(self) -> _KeepAliveWait:
        # Draining, on a kept-alive connection: serve a request already waiting on it, else
        # close it now. A new connection's first request is awaited as usual: its client has
        # just connected to send one (during a reload the old worker may have accepted it).
        idle = self._draining and gevent.getcurrent() in self._served
        return _KeepAliveWait(self._idle, 0 if idle else self.cfg.keepalive)

    # --- stopping --------------------------------------------------------------------------
    def handle_exit(self, sig: int, frame: Any) -> None:
        super().handle_exit(sig, frame)
        if not self._draining:
            self._draining = True
            gevent.spawn(self._drain, time.monotonic())

    def _close_idle(self) -> None:
        """End every wait for a next request on which no request has arrived."""
        loop = gevent.get_hub().loop
        for greenlet, wait in list(self._idle.items()):
            loop.run_callback(self._end_wait, greenlet, wait)

    def _end_wait(self, greenlet: Any, wait: _KeepAliveWait) -> None:
        # In the hub, as gevent.kill does: the greenlet is surely still in this wait.
        # A new connection still awaiting its first request is left to send it.
        if self._idle.get(greenlet) is not wait or greenlet not in self._served:
            return
        sock = self._sockets.get(greenlet)
        try:
            waiting = sock is not None and bool(_select([sock], [], [], 0)[0])
        except (OSError, ValueError):
            waiting = False
        if not waiting:
            greenlet.throw(wait.timeout)

    def _drain(self, signalled: float) -> None:
        for req in list(self._requests.values()):
            req.must_close = True  # responses not yet begun say "Connection: close"
        self._close_idle()
        graceful = float(self.cfg.graceful_timeout)
        deadline = signalled + drain_seconds(graceful)
        while self._requests and time.monotonic() < deadline:
            gevent.sleep(0.1)
        running = list(self._requests)
        if running:
            streams = {stream.greenlet: stream for stream in list(self._streams)}
            for greenlet in running:
                stream = streams.get(greenlet)
                if stream is not None:
                    stream.cut = True
                greenlet.kill(RequestCut(), block=False)
            settle = time.monotonic() + min(1.0, (signalled + graceful - deadline) / 4)
            while self._requests and time.monotonic() < settle:
                gevent.sleep(0.05)
            cut_streams = sum(1 for greenlet in running if greenlet in streams)
            log.warning("graceful stop: requests still running at the drain deadline were cut",
                        extra={"fields": {"streams_cut": cut_streams, "requests_cut": len(running) - cut_streams,
                                          "drain_s": round(deadline - signalled, 1)}})
        self._close_idle()
        # Write the usage rows now, while the master still waits (worker_exit would be later).
        usage.stop_all(timeout=max(0.1, signalled + graceful - time.monotonic() - 1.0))
