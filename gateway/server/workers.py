"""The worker classes ``gunicorn.conf.py`` names: :class:`ThreadWorker` (gthread) and
:class:`GeventWorker` (the default), with the gevent worker's body deadline,
per-address cap and drain (see :mod:`gateway.server`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import gevent
from gevent.monkey import get_original
from gunicorn.workers.ggevent import GeventWorker as _GunicornGeventWorker
from gunicorn.workers.gthread import ThreadWorker as _GunicornThreadWorker

from gateway import config, usage
from gateway.server.bodies import BodyWithDeadline, CuttableStream, RequestCut
from gateway.server.connections import Connection, KeepAliveWait, UnauthenticatedConnections, linger
from gateway.server.rejections import EnvelopeErrors, raw_error

log = logging.getLogger(__name__)

_select = get_original("select", "select")  # never yields to the hub


class ThreadWorker(EnvelopeErrors, _GunicornThreadWorker):
    """gunicorn's gthread worker, answering its refusals in the gateway's envelope."""


def drain_seconds(graceful_timeout: float) -> float:
    """How long a stopping worker lets requests run before it cuts them: the
    graceful timeout less a margin (20 %, at least 2 s) in which it ends the cut
    streams, writes their usage rows and exits before the master's SIGKILL."""
    return max(0.0, graceful_timeout - max(2.0, graceful_timeout * 0.2))


class GeventWorker(EnvelopeErrors, _GunicornGeventWorker):
    """gunicorn's gevent worker with a body deadline, a per-address cap on unauthenticated
    connections and a drain that ends before the master's SIGKILL (see the module docstring)."""

    wsgi: Callable[..., Any]  # set by gunicorn's load_wsgi

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._unauthenticated: UnauthenticatedConnections | None = None  # None: no cap
        self._connections: dict[Any, Connection] = {}  # greenlet -> its counted connection
        self._sockets: dict[Any, Any] = {}  # greenlet -> its client socket
        self._requests: dict[Any, Any] = {}  # greenlet -> the gunicorn request it is serving
        self._idle: dict[Any, KeepAliveWait] = {}
        self._served: set[Any] = set()  # greenlets whose connection has served a request
        self._streams: set[CuttableStream] = set()
        self._lingering: set[Any] = set()  # requests whose unread body is dropped after the answer
        self._draining = False
        self._body_timeout = 30.0

    # --- the app, wrapped ---------------------------------------------------------------
    def load_wsgi(self) -> None:
        super().load_wsgi()
        app: Callable[..., Any] = self.wsgi
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
            environ["wsgi.input"] = BodyWithDeadline(environ["wsgi.input"], time.monotonic() + self._body_timeout, self._body_expired)
            streamed = False

            def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
                nonlocal streamed
                streamed = any(name.lower() == "content-type" and value.startswith("text/event-stream") for name, value in headers)
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
            client.sendall(
                raw_error(
                    429,
                    "Too Many Requests",
                    "too_many_connections",
                    "Too many open connections from this address; close some and retry.",
                    "rate_limit_error",
                    headers=[("Retry-After", "1")],
                )
            )
            linger(client)
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
                linger(sock)

    def timeout_ctx(self) -> KeepAliveWait:  # type: ignore[override]  # gunicorn uses it as a context manager; its stubs say None
        # Draining, on a kept-alive connection: serve a request already waiting on it, else
        # close it now. A new connection's first request is awaited as usual: its client has
        # just connected to send one (during a reload the old worker may have accepted it).
        idle = self._draining and gevent.getcurrent() in self._served
        return KeepAliveWait(self._idle, 0 if idle else self.cfg.keepalive)

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

    def _end_wait(self, greenlet: Any, wait: KeepAliveWait) -> None:
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
            log.warning(
                "graceful stop: requests still running at the drain deadline were cut",
                extra={
                    "fields": {
                        "streams_cut": cut_streams,
                        "requests_cut": len(running) - cut_streams,
                        "drain_s": round(deadline - signalled, 1),
                    }
                },
            )
        self._close_idle()
        # Write the usage rows now, while the master still waits (worker_exit would be later).
        usage.stop_all(timeout=max(0.1, signalled + graceful - time.monotonic() - 1.0))
