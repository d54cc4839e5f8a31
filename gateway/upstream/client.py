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
adapter's own connection pool with its retry policy (:func:`gateway.compat.adapter_pool`;
its measured cost: bench/results/profile.md).

The pool's connections are :mod:`gateway.upstream.connection`'s: their answer's head
is parsed without the ``email`` package, must arrive whole and within the call's
deadline (``UPSTREAM_TOTAL_TIMEOUT``), and a kept-alive connection's liveness is
checked with the operating system's poll.
"""

from __future__ import annotations

import logging
import os
import threading
import time
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

from gateway import compat
from gateway.config import Settings
from gateway.errors import UpstreamError, UpstreamHeadCutOff, UpstreamTimeout, UpstreamUnavailable
from gateway.upstream.connection import HEAD_DEADLINE, pool_connection_class

log = logging.getLogger(__name__)


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

    def __init__(self, raw: urllib3.HTTPResponse) -> None:
        self.raw = raw
        self.status_code = raw.status
        self.headers = raw.headers

    def close(self) -> None:
        """Give the connection back to the pool if the body was read to its end, else drop it."""
        if not self.raw.isclosed():
            self.raw.close()
        self.raw.release_conn()


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
        self._unreachable_message = (
            "The AI backend could not be reached: check the gateway's AI_API_URL (a hint shown in development only)."
            if explain_unreachable
            else None
        )
        self._route: _Route | None = None
        self._pid = 0
        self._lock = threading.Lock()
        self._timeout = urllib3.Timeout(connect=min(config.connect_timeout, config.total_timeout), read=config.read_timeout)
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
        url = probe.url or ""  # prepare_request always sets it
        env = session.merge_environment_settings(url, {}, None, session.verify, None)
        mounted = session.get_adapter(url)
        if not isinstance(mounted, HTTPAdapter):  # the one mounted above, for both schemes
            raise TypeError(f"unexpected requests adapter {type(mounted).__name__}")
        pool = compat.adapter_pool(mounted, probe, env["verify"], env["proxies"], env["cert"])
        pool.ConnectionCls = pool_connection_class(pool.ConnectionCls)
        url_prefix = mounted.request_url(probe, env["proxies"])[: -len("/_")]
        return _Route(session=session, pool=pool, url_prefix=url_prefix, retries=mounted.max_retries)

    def send(
        self, method: str, path: str, body: bytes | None, request_id: str, stream: bool, deadline: float | None = None
    ) -> UpstreamResponse:
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
        token = HEAD_DEADLINE.set(time.monotonic() + self.config.total_timeout if deadline is None else deadline)
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
            HEAD_DEADLINE.reset(token)
        return UpstreamResponse(raw)

    def _unreachable(self, request_id: str) -> UpstreamUnavailable:
        log.warning(
            "upstream %s unreachable: check AI_API_URL (or AI_API_BASE_URL)",
            self._address,
            extra={"fields": {"request_id": request_id}},
        )
        return UpstreamUnavailable(self._unreachable_message)

    def close(self) -> None:
        if self._route is not None:
            self._route.session.close()
