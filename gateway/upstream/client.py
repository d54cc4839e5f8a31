"""The only user of ``requests.Session``.

One session per worker process (created lazily, so a fork never shares sockets),
its connection pool as large as the worker's concurrency, explicit connect/read
timeouts, no redirects, and ``trust_env`` off so ``HTTPS_PROXY`` or ``~/.netrc``
cannot reroute traffic or replace the upstream key.

The upstream URL is configuration only: callers pass an operation's fixed path.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass

import requests
from requests.adapters import HTTPAdapter

from gateway.config import Settings
from gateway.errors import UpstreamError, UpstreamTimeout, UpstreamUnavailable


@dataclass(frozen=True)
class UpstreamConfig:
    base_url: str
    api_key: str
    connect_timeout: float
    read_timeout: float
    pool_size: int
    trust_env: bool


class UpstreamClient:
    def __init__(self, config: UpstreamConfig) -> None:
        self.config = config
        self._session: requests.Session | None = None
        self._pid = 0
        self._lock = threading.Lock()
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
            )
        )

    @property
    def session(self) -> requests.Session:
        if self._session is None or self._pid != os.getpid():
            with self._lock:
                if self._session is None or self._pid != os.getpid():
                    self._session = self._new_session()
                    self._pid = os.getpid()
        return self._session

    def _new_session(self) -> requests.Session:
        session = requests.Session()
        session.trust_env = self.config.trust_env
        adapter = HTTPAdapter(pool_connections=1, pool_maxsize=self.config.pool_size, max_retries=0)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        return session

    def send(self, method: str, path: str, body: bytes | None, request_id: str, stream: bool) -> requests.Response:
        """Send one request upstream; the body is read later by :mod:`gateway.upstream.relay`.

        :raises UpstreamUnavailable: connection refused or reset before an answer (502).
        :raises UpstreamTimeout: no connection or no answer within the timeouts (504).
        """
        headers = dict(self._static_headers)
        headers["X-Request-ID"] = request_id
        headers["Accept"] = "text/event-stream" if stream else "application/json"
        if body is not None:
            headers["Content-Type"] = "application/json"
        try:
            return self.session.request(
                method,
                self.config.base_url + path,
                data=body,
                headers=headers,
                timeout=(self.config.connect_timeout, self.config.read_timeout),
                allow_redirects=False,
                stream=True,
            )
        except (requests.ConnectTimeout, requests.ReadTimeout):
            raise UpstreamTimeout() from None
        except requests.ConnectionError:
            raise UpstreamUnavailable() from None
        except requests.RequestException:
            raise UpstreamError() from None

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
