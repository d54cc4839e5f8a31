"""The only user of ``requests.Session``.

One session per worker process (created lazily, so a fork never shares sockets),
its connection pool as large as the worker's concurrency, explicit connect/read
timeouts, no redirects, and ``trust_env`` off so ``HTTPS_PROXY`` or ``~/.netrc``
cannot reroute traffic or replace the upstream key.

The upstream URL is configuration only: callers pass an operation's fixed path (and,
for an Azure OpenAI backend, the deployment, which comes from the config file and is
checked to be one path segment). One client per backend (:mod:`gateway.backends`).

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
import re
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

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
from gateway.errors import BadRequest, UpstreamError, UpstreamHeadCutOff, UpstreamTimeout, UpstreamUnavailable
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
    name: str = "default"  # the backend's name (logs, metrics); never sent to clients unless the operator says so
    dialect: str = "openai"  # "openai" (OpenAI-compatible) or "azure" (Azure OpenAI)
    api_version: str = ""  # Azure OpenAI's api-version query parameter
    headers: tuple[tuple[str, str], ...] = ()  # the operator's extra static headers
    idle_timeout: float | None = None  # between a stream's events after the first; None: read_timeout
    where: str = "AI_API_URL (or AI_API_BASE_URL)"  # what the operator should check when it is unreachable


# An Azure deployment name is one path segment of the operator's choosing.
_AZURE_DEPLOYMENT = re.compile(r"^(?!\.{1,2}$)[A-Za-z0-9._-]{1,128}$")


class UpstreamResponse:
    """The upstream's answer: status, headers (case-insensitive) and the raw body stream."""

    __slots__ = ("raw", "status_code", "headers")

    def __init__(self, raw: urllib3.HTTPResponse) -> None:
        self.raw = raw
        self.status_code = raw.status
        self.headers = raw.headers

    def set_read_timeout(self, seconds: float) -> None:
        """From now on each read of the body waits at most ``seconds`` (a stream's idle timeout)."""
        connection = self.raw.connection
        sock = getattr(connection, "sock", None) if connection is not None else None
        if sock is not None:
            sock.settimeout(seconds)

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
            f"The AI backend could not be reached: check the gateway's {config.where} (a hint shown in development only)."
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
        self._static_headers.update(config.headers)
        if config.api_key:
            if config.dialect == "azure":
                self._static_headers["api-key"] = config.api_key
            else:
                self._static_headers["Authorization"] = f"Bearer {config.api_key}"
        self._azure = config.dialect == "azure"
        self._query = f"?api-version={quote(config.api_version, safe='')}"

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

    def url_path(self, path: str, model: str | None) -> str:
        """The request target for an operation's path: the path itself for an OpenAI-compatible
        backend; ``/openai/deployments/<model><path>?api-version=...`` for Azure OpenAI.

        :raises BadRequest: (Azure) the model is not a plain deployment name.
        """
        if not self._azure:
            return path
        if model is None or not _AZURE_DEPLOYMENT.match(model):
            raise BadRequest("The model name is not one this backend can serve.", param="model", error_code="model_not_found")
        return f"/openai/deployments/{model}{path}{self._query}"

    def send(
        self,
        method: str,
        path: str,
        body: bytes | None,
        request_id: str,
        stream: bool,
        deadline: float | None = None,
        model: str | None = None,
        trace_headers: Mapping[str, str] | None = None,
    ) -> UpstreamResponse:
        """Send one request upstream; the body is read later by :mod:`gateway.upstream.relay`.

        :param deadline: ``time.monotonic()`` by which the answer's head must be in;
            default: ``total_timeout`` from now.
        :param model: the upstream model (an Azure backend's deployment).
        :param trace_headers: ``traceparent`` (and ``tracestate``) of the attempt's client
            span, when tracing is on (:mod:`gateway.tracing`).
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
        if trace_headers is not None:
            headers.update(trace_headers)
        token = HEAD_DEADLINE.set(time.monotonic() + self.config.total_timeout if deadline is None else deadline)
        try:
            raw = route.pool.urlopen(
                method,
                route.url_prefix + (self.url_path(path, model) if self._azure else path),
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
            "upstream %s unreachable: check %s",
            self._address,
            self.config.where,
            extra={"fields": {"request_id": request_id, "backend": self.config.name}},
        )
        return UpstreamUnavailable(self._unreachable_message)

    def close(self) -> None:
        if self._route is not None:
            self._route.session.close()
