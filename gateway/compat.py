"""Every reach into another library's private names, one function each, with the library version it was written against.

The rest of gateway/ uses its libraries through their public API only (a test,
``tests/unit/test_compat.py``, reads gateway/ for private names used anywhere else).
A reach stays here only where it is needed for correctness, or where dropping it
costs more than the 3 % threshold, in instructions per relayed request (``python -m
bench.instructions``; each reach kept or dropped, with its measured cost, is listed in
bench/results/profile.md, "Library internals"). Each one has a test in
``tests/unit/test_compat.py`` that fails, naming the library, when an upgrade changes
what it relies on: re-check the function against the new version, then update the
version it names.
"""

from __future__ import annotations

import http.client
import os
import types
from collections.abc import Callable
from typing import Any

from flask import Flask, Response, request
from flask_limiter import Limiter
from flask_talisman import Talisman
from prometheus_client import values
from requests import PreparedRequest
from requests.adapters import HTTPAdapter
from werkzeug.datastructures import Headers

from gateway import response_headers

# --- http.client (the standard library) -----------------------------------------------

HTTP_CLIENT_WRITTEN_AGAINST = "3.11 (CPython's standard library)"


def http_response_begin(parse_headers: Callable[..., http.client.HTTPMessage]) -> Callable[[http.client.HTTPResponse], None]:
    """``http.client.HTTPResponse.begin`` (status line, 1xx answers, framing, keep-alive),
    the standard library's own code, run with ``parse_headers`` in place of the module's
    ``http.client.parse_headers``. Written against CPython 3.11 (also 3.12, 3.13).

    Needed for correctness: ``begin()`` calls the module-global ``parse_headers``, and
    the gateway's parser refuses a header block the upstream cut off (a 502) where
    ``http.client``'s takes the fields read so far for the whole head. This copies the
    function with that one global replaced (its code object, re-bound), rather than
    copying its source or changing ``http.client`` for every user of the process.
    """
    begin = http.client.HTTPResponse.begin
    return types.FunctionType(begin.__code__, {**vars(http.client), "parse_headers": parse_headers}, "begin")


# --- requests ---------------------------------------------------------------------------

REQUESTS_WRITTEN_AGAINST = "2.34.2"


def adapter_pool(adapter: HTTPAdapter, request: PreparedRequest, verify: bool | str | None, proxies: Any, cert: Any) -> Any:
    """The urllib3 connection pool ``adapter`` would send ``request`` through, with the
    TLS settings ``Session.request`` would give it. Written against requests 2.34.2
    (the method appeared in 2.32.2; its documentation says it is for subclasses).

    Kept for speed: the upstream is fixed, so what ``Session.request`` works out on
    every call is worked out once and each call goes straight to this pool; going
    through ``Session.request`` costs more than the 3 % threshold (bench/results/profile.md).
    """
    # Session.merge_environment_settings never leaves verify unset; None would mean requests' default, True.
    return adapter.get_connection_with_tls_context(request, True if verify is None else verify, proxies, cert)


# --- prometheus-client ------------------------------------------------------------------

PROMETHEUS_CLIENT_WRITTEN_AGAINST = "0.26.0"


def use_multiprocess_values(process_identifier: Callable[[], int]) -> None:
    """Make every metric created from now on keep its value in prometheus-client's
    multiprocess files (``PROMETHEUS_MULTIPROC_DIR``, already set), with
    ``process_identifier`` naming the process. Written against prometheus-client 0.26.0.

    Needed for correctness: prometheus-client picks its value class (``values.ValueClass``)
    from the environment once, when it is first imported, and the gunicorn master imports
    it while reading gunicorn.conf.py, before the directory is known. Without this the
    workers' values would stay in memory, and ``/metrics`` would show only the answering
    worker's. Done once: a value class already multiprocess is left as it is.
    """
    if not getattr(values.ValueClass, "_multiprocess", False):
        values.ValueClass = values.MultiProcessValue(process_identifier=process_identifier)  # type: ignore[no-untyped-call]  # unannotated


# --- flask-talisman ---------------------------------------------------------------------

FLASK_TALISMAN_WRITTEN_AGAINST = "1.1.0"


class RememberingTalisman(Talisman):  # type: ignore[misc]  # flask-talisman has no type information
    """flask-talisman, with the same headers worked out once per endpoint and scheme.
    Written against flask-talisman 1.1.0: it overrides the three request hooks the
    extension registers on the app, ``_force_https``, ``_make_nonce`` and
    ``_set_response_headers``.

    Kept for speed (dropping it costs more than the 3 % threshold: bench/results/profile.md).
    Talisman rebuilds every header from its options on each response; here they only
    vary with the endpoint's own options and with whether HSTS applies (HTTPS, or
    ``X-Forwarded-Proto: https``), so its answer for each pair is remembered. No CSP
    nonce may be configured: that would vary per request, so this class refuses one.
    Its two request hooks do nothing unless ``force_https`` is on (views can only opt
    out of it here), so they are skipped then.
    """

    def __init__(self, app: Flask, **options: Any) -> None:
        if options.get("content_security_policy_nonce_in"):
            raise ValueError("a CSP nonce changes per request: headers cannot be remembered")
        self._remembered: dict[tuple[str | None, bool], list[tuple[str, str]]] = {}
        super().__init__(app, **options)

    def _force_https(self) -> Any:
        if self.force_https:
            return super()._force_https()
        return None

    def _make_nonce(self) -> None:
        return None

    def _set_response_headers(self, response: Response) -> Response:
        req = request._get_current_object()  # type: ignore[attr-defined]  # werkzeug's LocalProxy method: one context lookup
        secure = req.is_secure or req.headers.get("X-Forwarded-Proto", "http") == "https"
        key = (req.endpoint, secure)
        headers = self._remembered.get(key)
        if headers is None:
            scratch = Response()
            scratch.headers = Headers()
            super()._set_response_headers(scratch)
            headers = self._remembered[key] = list(scratch.headers.items())
        response_headers.put(response.headers, headers)
        return response


# --- flask-limiter ----------------------------------------------------------------------

FLASK_LIMITER_WRITTEN_AGAINST = "4.1.1"

# The request windows (gateway.quotas.windows) count on flask-limiter's strategy
# themselves, outside flask-limiter's own request check, so its switch to the
# per-process fallback strategy (its ``_storage_dead`` flag, which also makes
# ``limiter.limiter`` return the fallback) is the one flag both share: while the store is
# down, the auth-failure limit flask-limiter checks and the gateway's own quotas count in
# the same fallback, and move back to the store together. flask-limiter has no public
# API for reading or setting it. tests/unit/test_compat.py fails, naming flask-limiter,
# when an upgrade removes it.
LIMITER_STORAGE_DEAD = "_storage_dead"


def limiter_storage_dead(limiter: Limiter) -> bool:
    """Whether flask-limiter counts in its per-process fallback (the store failed)."""
    return bool(getattr(limiter, LIMITER_STORAGE_DEAD))


def set_limiter_storage_dead(limiter: Limiter, dead: bool) -> None:
    """Move flask-limiter's counting to its per-process fallback (``True``) or back to the store."""
    setattr(limiter, LIMITER_STORAGE_DEAD, dead)


# --- the process id use_multiprocess_values is given (moved from gateway.metrics) -----------
class _ProcessId:
    """``os.getpid()`` remembered, and looked up again in every forked child.

    prometheus-client asks for the process id on every metric update, to notice a
    fork; ``os.getpid`` is a system call each time (glibc caches nothing), about ten
    per request here. Fork is the only way the answer changes, so it is refreshed there.
    """

    def __init__(self) -> None:
        self.pid = os.getpid()
        os.register_at_fork(after_in_child=self._forked)

    def _forked(self) -> None:
        self.pid = os.getpid()

    def __call__(self) -> int:
        return self.pid


process_id = _ProcessId()
