"""The only user of ``requests.Session``.

One session per worker process (created lazily, so a fork never shares sockets),
its connection pool as large as the worker's concurrency, explicit connect/read
timeouts, no redirects, and ``trust_env`` off so ``HTTPS_PROXY`` or ``~/.netrc``
cannot reroute traffic or replace the upstream key.

The upstream URL is configuration only: callers pass an operation's fixed path.

Speed: everything ``Session.request`` works out per call (environment merging,
URL parsing, hooks, cookie jars, the choice of adapter and pool) is the same for
every call here, because the upstream is fixed. So it is worked out once per
process, through the session itself, and each call goes straight to the mounted
adapter's own connection pool with its retry policy. That halves the CPU cost of
a relayed call (see docs/benchmarks.md).

Each answer's header block is parsed by :mod:`gateway.upstream.head` rather than by
``http.client``'s detour through the ``email`` package (about 5 % of a relayed
request): the pool's connections use :class:`_QuickHeadResponse`, which is
``http.client``'s own response class and its own ``begin()``, with only the header
parser swapped.

Before reusing a kept-alive connection urllib3 asks whether the upstream has closed
it, with a zero-timeout poll. Under gevent that poll is gevent's cooperative one,
which sets up and tears down a watcher each time (about 4 % of a relayed request's
CPU); a zero-timeout poll never blocks, so the pool's connections ask the operating
system's poll directly (:class:`_QuickLivenessCheck`). Same answer, same rule.

``UPSTREAM_TOTAL_TIMEOUT`` bounds the wait for the answer's head too, not only its
body: a socket timeout bounds each read, and an upstream that sends its status line
one byte a second never lets one run out. So the response class reads the head
through :class:`_HeadDeadlineReader`, which gives each read only the time left before
the deadline; past it, the read times out like any other (a 504). A header block that
the upstream cuts off (the connection closes before its blank line) is a 502, not an
answer with the headers that happened to arrive (:func:`parse_head`).
"""

from __future__ import annotations

import contextvars
import functools
import http.client
import io
import logging
import os
import select
import threading
import time
import types
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import requests
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.exceptions import (
    ConnectTimeoutError,
    HTTPError,
    MaxRetryError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
)

from gateway.config import Settings
from gateway.errors import UpstreamError, UpstreamHeadCutOff, UpstreamTimeout, UpstreamUnavailable
from gateway.upstream import head

log = logging.getLogger(__name__)

# When the head of the answer now being awaited must be in (time.monotonic()); set by
# UpstreamClient.send around the pool call, read by the response class it creates.
# Context-local, so each thread (gthread) or greenlet (gevent) sees its own.
_HEAD_DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar("upstream_head_deadline",
                                                                               default=None)


@dataclass(frozen=True)
class UpstreamConfig:
    base_url: str
    api_key: str
    connect_timeout: float
    read_timeout: float
    pool_size: int
    trust_env: bool
    total_timeout: float = 600.0  # connect + head (+ the relay's body reads) of one call


class UpstreamResponse:
    """The upstream's answer: status, headers (case-insensitive) and the raw body stream."""

    __slots__ = ("raw", "status_code", "headers")

    def __init__(self, raw: urllib3.BaseHTTPResponse) -> None:
        self.raw = raw
        self.status_code = raw.status
        self.headers = raw.headers

    def close(self) -> None:
        """Give the connection back to the pool if the body was read to its end, else drop it."""
        if not self.raw.isclosed():
            self.raw.close()
        self.raw.release_conn()


@functools.cache
def _os_poll() -> Any:
    """``select.poll`` as the OS provides it, also where gevent has patched ``select``."""
    try:
        from gevent import monkey
    except ImportError:  # gevent is not installed: select is the OS's
        return select.poll
    return monkey.get_original("select", "poll") if monkey.is_module_patched("select") else select.poll


class _QuickLivenessCheck:
    """Mixed into the pool's connection class: urllib3's ``is_connected`` rule (a
    kept-alive connection is gone once its socket is readable: the upstream closed it
    or sent something unasked), checked with the OS's zero-timeout poll."""

    sock: Any

    @property
    def is_connected(self) -> bool:
        if self.sock is None:
            return False
        poller = _os_poll()()
        poller.register(self.sock.fileno(), select.POLLIN)
        return not poller.poll(0)


def parse_head(fp: Any, _class: type[http.client.HTTPMessage] = http.client.HTTPMessage) -> http.client.HTTPMessage:
    """``http.client.parse_headers``, with :func:`gateway.upstream.head.parse_fields` in
    place of the ``email`` parser; same limits, same errors, same message class.

    One difference: the end of the connection before the blank line that ends the
    block raises :class:`~gateway.errors.UpstreamHeadCutOff` (an
    ``http.client.HTTPException``, so urllib3 reports it as a ``ProtocolError``),
    where ``http.client`` would take the fields read so far for the whole head.
    """
    lines: list[bytes] = []
    while True:
        line = fp.readline(head.MAX_LINE + 1)
        if len(line) > head.MAX_LINE:
            raise http.client.LineTooLong("header line")
        if line in (b"\r\n", b"\n"):
            break
        if not line:  # the connection closed inside the header block
            raise UpstreamHeadCutOff("the upstream closed the connection before the end of its header block")
        lines.append(line)
        if len(lines) > head.MAX_FIELDS:
            raise http.client.HTTPException(f"got more than {head.MAX_FIELDS} headers")
    message = _class()
    for name, value in head.parse_fields(lines):
        message.set_raw(name, value)
    return message


class _HeadDeadlineReader(io.RawIOBase):
    """The raw reader under an answer's buffered ``fp``: the socket's own
    (``makefile("rb", buffering=0)``), with each read given no more time than is
    left before ``deadline`` while the head is read. Once the head is in,
    :meth:`head_done` puts the socket's timeout back, and reads go straight through."""

    def __init__(self, sock: Any, deadline: float) -> None:
        super().__init__()
        self._sock = sock
        self._raw = sock.makefile("rb", buffering=0)  # holds a reference on the socket, as makefile("rb") would
        self._read_timeout = sock.gettimeout()
        self._deadline: float | None = deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int | None:
        if self._deadline is not None:
            left = self._deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("the upstream's answer did not begin before UPSTREAM_TOTAL_TIMEOUT")
            self._sock.settimeout(left if self._read_timeout is None else min(left, self._read_timeout))
        return self._raw.readinto(buffer)

    def head_done(self) -> None:
        if self._deadline is not None:
            self._deadline = None
            self._sock.settimeout(self._read_timeout)

    def fileno(self) -> int:
        return self._raw.fileno()

    def close(self) -> None:
        if not self.closed:
            self._raw.close()
        super().close()


class _HeadDeadlineSocket:
    """What ``http.client.HTTPResponse`` is given as its socket: it only calls
    ``makefile("rb")``, and gets a buffered :class:`_HeadDeadlineReader`."""

    __slots__ = ("sock", "deadline", "reader")

    def __init__(self, sock: Any, deadline: float) -> None:
        self.sock = sock
        self.deadline = deadline
        self.reader: _HeadDeadlineReader | None = None

    def makefile(self, mode: str) -> io.BufferedReader:
        self.reader = _HeadDeadlineReader(self.sock, self.deadline)
        return io.BufferedReader(self.reader)


_stdlib_begin = types.FunctionType(
    http.client.HTTPResponse.begin.__code__,
    {**vars(http.client), "parse_headers": parse_head},
    "begin",
)


class _QuickHeadResponse(http.client.HTTPResponse):
    """``http.client.HTTPResponse`` whose ``begin()`` (status line, 1xx answers, framing,
    keep-alive) is the standard library's own code, run with :func:`parse_head` as its
    ``parse_headers``: a copy of the function with that one global replaced, rather than
    a copy of its source or a change to ``http.client`` for everyone.

    Made inside :meth:`UpstreamClient.send`, it reads the head within that call's
    deadline (:class:`_HeadDeadlineReader`)."""

    def __init__(self, sock: Any, *args: Any, **kwargs: Any) -> None:
        deadline = _HEAD_DEADLINE.get()
        self.head_reader: _HeadDeadlineSocket | None = None
        if deadline is not None and sock is not None:
            sock = self.head_reader = _HeadDeadlineSocket(sock, deadline)
        super().__init__(sock, *args, **kwargs)

    def begin(self) -> None:
        try:
            _stdlib_begin(self)
        finally:
            if self.head_reader is not None and self.head_reader.reader is not None:
                self.head_reader.reader.head_done()


def _pool_connection_class(connection_class: type) -> type:
    return type(connection_class.__name__, (_QuickLivenessCheck, connection_class),
                {"response_class": _QuickHeadResponse})


@dataclass(frozen=True)
class _Route:
    """What ``Session.request`` would work out for every call to the fixed upstream."""

    session: requests.Session
    pool: Any  # urllib3 HTTPConnectionPool / HTTPSConnectionPool
    url_prefix: str  # path prefix, or the absolute URL when an HTTP proxy is in use
    retries: Any


class UpstreamClient:
    def __init__(self, config: UpstreamConfig, *, explain_unreachable: bool = False) -> None:
        """:param explain_unreachable: (development) the 502 for an unreachable upstream
            names the variable to check. Its address is only ever logged, never sent to clients."""
        self.config = config
        parts = urlsplit(config.base_url)
        self._address = f"{parts.scheme}://{parts.hostname}:{parts.port or (443 if parts.scheme == 'https' else 80)}"
        self._unreachable_message = ("The AI backend could not be reached: check the gateway's AI_API_URL "
                                     "(a hint shown in development only)." if explain_unreachable else None)
        self._route: _Route | None = None
        self._pid = 0
        self._lock = threading.Lock()
        self._timeout = urllib3.Timeout(connect=min(config.connect_timeout, config.total_timeout),
                                        read=config.read_timeout)
        self._static_headers = {
            "User-Agent": "ai-proxy-gateway",
            "Accept-Encoding": "identity",
        }
        if config.api_key:
            self._static_headers["Authorization"] = f"Bearer {config.api_key}"

    @classmethod
    def from_settings(cls, settings: Settings) -> UpstreamClient:
        return cls(
            UpstreamConfig(
                base_url=settings.upstream_base_url,
                api_key=settings.ai_api_key,
                connect_timeout=settings.upstream_connect_timeout,
                read_timeout=settings.upstream_read_timeout,
                pool_size=settings.upstream_pool_size or max(10, settings.worker_concurrency),
                trust_env=settings.upstream_trust_env,
                total_timeout=settings.upstream_total_timeout,
            ),
            explain_unreachable=not settings.production,
        )

    @property
    def session(self) -> requests.Session:
        return self._current_route().session

    def _current_route(self) -> _Route:
        route = self._route
        if route is None or self._pid != os.getpid():
            with self._lock:
                if self._route is None or self._pid != os.getpid():
                    self._route = self._new_route()
                    self._pid = os.getpid()
                route = self._route
        return route

    def _new_route(self) -> _Route:
        session = requests.Session()
        session.trust_env = self.config.trust_env
        adapter = HTTPAdapter(pool_connections=1, pool_maxsize=self.config.pool_size, max_retries=0)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        # Resolve once, through the session, what every call would resolve the same way.
        probe = session.prepare_request(requests.Request("POST", self.config.base_url + "/_"))
        env = session.merge_environment_settings(probe.url, {}, None, session.verify, None)
        mounted: HTTPAdapter = session.get_adapter(probe.url)  # type: ignore[assignment]
        pool = mounted.get_connection_with_tls_context(probe, env["verify"], env["proxies"], env["cert"])
        pool.ConnectionCls = _pool_connection_class(pool.ConnectionCls)
        url_prefix = mounted.request_url(probe, env["proxies"])[: -len("/_")]
        return _Route(session=session, pool=pool, url_prefix=url_prefix, retries=mounted.max_retries)

    def send(self, method: str, path: str, body: bytes | None, request_id: str, stream: bool,
             deadline: float | None = None) -> UpstreamResponse:
        """Send one request upstream; the body is read later by :mod:`gateway.upstream.relay`.

        :param deadline: ``time.monotonic()`` by which the answer's head must be in;
            default: ``total_timeout`` from now.
        :raises UpstreamUnavailable: connection refused or reset before an answer (502).
        :raises UpstreamError: the upstream closed the connection inside its header block (502).
        :raises UpstreamTimeout: no connection or no answer within the timeouts, or no
            whole head by the deadline (504).
        """
        route = self._current_route()
        headers = dict(self._static_headers)
        headers["X-Request-ID"] = request_id
        headers["Accept"] = "text/event-stream" if stream else "application/json"
        if body is not None:
            headers["Content-Type"] = "application/json"
        token = _HEAD_DEADLINE.set(time.monotonic() + self.config.total_timeout if deadline is None else deadline)
        try:
            raw = route.pool.urlopen(
                method,
                route.url_prefix + path,
                body=body,
                headers=headers,
                redirect=False,
                assert_same_host=False,
                preload_content=False,
                decode_content=False,
                retries=route.retries,
                timeout=self._timeout,
            )
        except MaxRetryError as error:
            if isinstance(error.reason, ConnectTimeoutError) and not isinstance(error.reason, NewConnectionError):
                raise UpstreamTimeout() from None
            if isinstance(error.reason, ReadTimeoutError):
                raise UpstreamTimeout() from None
            raise self._unreachable(request_id) from None
        except ReadTimeoutError:
            raise UpstreamTimeout() from None
        except (ProtocolError, OSError) as error:
            if any(isinstance(arg, UpstreamHeadCutOff) for arg in error.args):
                log.warning("upstream answer cut off inside its header block request_id=%s", request_id)
                raise UpstreamError("The AI backend's answer was cut off.", error_code="upstream_incomplete") from None
            raise self._unreachable(request_id) from None
        except HTTPError:
            raise UpstreamError() from None
        finally:
            _HEAD_DEADLINE.reset(token)
        return UpstreamResponse(raw)

    def _unreachable(self, request_id: str) -> UpstreamUnavailable:
        log.warning("upstream %s unreachable: check AI_API_URL (or AI_API_BASE_URL)", self._address,
                    extra={"fields": {"request_id": request_id}})
        return UpstreamUnavailable(self._unreachable_message)

    def close(self) -> None:
        if self._route is not None:
            self._route.session.close()
