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
"""

from __future__ import annotations

import functools
import http.client
import logging
import os
import select
import threading
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
from gateway.errors import UpstreamError, UpstreamTimeout, UpstreamUnavailable
from gateway.upstream import head

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class UpstreamConfig:
    base_url: str
    api_key: str
    connect_timeout: float
    read_timeout: float
    pool_size: int
    trust_env: bool


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
    place of the ``email`` parser; same limits, same errors, same message class."""
    lines: list[bytes] = []
    while True:
        line = fp.readline(head.MAX_LINE + 1)
        if len(line) > head.MAX_LINE:
            raise http.client.LineTooLong("header line")
        if line in (b"\r\n", b"\n", b""):
            break
        lines.append(line)
        if len(lines) > head.MAX_FIELDS:
            raise http.client.HTTPException(f"got more than {head.MAX_FIELDS} headers")
    message = _class()
    for name, value in head.parse_fields(lines):
        message.set_raw(name, value)
    return message


class _QuickHeadResponse(http.client.HTTPResponse):
    """``http.client.HTTPResponse`` whose ``begin()`` (status line, 1xx answers, framing,
    keep-alive) is the standard library's own code, run with :func:`parse_head` as its
    ``parse_headers``: a copy of the function with that one global replaced, rather than
    a copy of its source or a change to ``http.client`` for everyone."""

    begin = types.FunctionType(
        http.client.HTTPResponse.begin.__code__,
        {**vars(http.client), "parse_headers": parse_head},
        "begin",
    )


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
        self._timeout = urllib3.Timeout(connect=config.connect_timeout, read=config.read_timeout)
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

    def send(self, method: str, path: str, body: bytes | None, request_id: str, stream: bool) -> UpstreamResponse:
        """Send one request upstream; the body is read later by :mod:`gateway.upstream.relay`.

        :raises UpstreamUnavailable: connection refused or reset before an answer (502).
        :raises UpstreamTimeout: no connection or no answer within the timeouts (504).
        """
        route = self._current_route()
        headers = dict(self._static_headers)
        headers["X-Request-ID"] = request_id
        headers["Accept"] = "text/event-stream" if stream else "application/json"
        if body is not None:
            headers["Content-Type"] = "application/json"
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
        except (ProtocolError, OSError):
            raise self._unreachable(request_id) from None
        except HTTPError:
            raise UpstreamError() from None
        return UpstreamResponse(raw)

    def _unreachable(self, request_id: str) -> UpstreamUnavailable:
        log.warning("upstream %s unreachable: check AI_API_URL (or AI_API_BASE_URL)", self._address,
                    extra={"fields": {"request_id": request_id}})
        return UpstreamUnavailable(self._unreachable_message)

    def close(self) -> None:
        if self._route is not None:
            self._route.session.close()
