"""The rate-limit response headers: the tightest request window the request was held to.

``X-RateLimit-Limit``/``-Remaining``/``-Reset``, the IETF draft's ``RateLimit`` and
``RateLimit-Policy`` (every quota counted), and ``Retry-After`` on a 429. The counters
come from the request's record (:attr:`gateway.exchange.Exchange.quotas_counted`), plus
flask-limiter's auth-failure limit on the auth blueprint.
"""

from __future__ import annotations

import time

from flask import Response, request
from limits.errors import StorageError
from limits.strategies import RateLimiter

from gateway import compat, response_headers
from gateway.auth.endpoints import AUTH_FAILURE_BLUEPRINT
from gateway.exchange import current
from gateway.quotas.windows import AUTH_FAILURE_QUOTA, Counted, app_windows

# The headers a browser client may read (CORS), see gateway.edge.
EXPOSED_HEADERS = ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset", "Retry-After", "RateLimit", "RateLimit-Policy")


def _window(strategy: RateLimiter, each: Counted) -> tuple[int, int]:
    """(remaining, reset_at) of a counter."""
    if each.window is not None:
        return each.window.remaining, each.window.reset_at
    reset, remaining = strategy.get_window_stats(each.item, *each.args)
    return (0 if each.breached else remaining), int(reset + 1)


def rate_limit_headers(response: Response) -> Response:
    """``after_request``: the headers of the tightest window (see the module); also notes an
    outage or recovery flask-limiter saw, and the auth-failure limit when it refused."""
    state = app_windows()
    limiter = state.limiter
    # flask-limiter switches to its in-memory fallback (open policy) by setting this flag.
    if compat.limiter_storage_dead(limiter):
        state.health.failed()
    elif state.health.down_since is not None and response.status_code != 503:
        state.health.recovered()
    exchange = current()
    counted: list[Counted] = list(exchange.quotas_counted or ())
    if request.blueprint == AUTH_FAILURE_BLUEPRINT:  # the auth-failure limit, checked by flask-limiter there
        for limit in limiter.current_limits:
            counted.append(Counted(AUTH_FAILURE_QUOTA, limit.limit, tuple(limit.request_args), limit.breached))
            if limit.breached:
                exchange.quota_refused = AUTH_FAILURE_QUOTA
    if not counted:
        return response
    strategy = state.strategy
    try:
        windows = [_window(strategy, each) for each in counted]
    except StorageError:
        return response
    # The counter closest to running out (a breached one first).
    index = min(range(len(counted)), key=lambda i: (not counted[i].breached, windows[i][0]))
    tightest = counted[index]
    remaining, reset_at = windows[index]
    window = tightest.item.get_expiry()
    seconds_left = max(0, min(window, reset_at - int(time.time())))
    headers = response.headers
    fields = [
        ("X-RateLimit-Limit", str(tightest.item.amount)),
        ("X-RateLimit-Remaining", str(remaining)),
        ("X-RateLimit-Reset", str(reset_at)),
        ("RateLimit-Policy", ", ".join(f'"{each.policy}";q={each.item.amount};w={each.item.get_expiry()}' for each in counted)),
        ("RateLimit", f'"{tightest.policy}";r={remaining};t={seconds_left}'),
    ]
    if response.status_code == 429 and "Retry-After" not in headers:
        fields.append(("Retry-After", str(max(1, seconds_left))))
    response_headers.put(headers, fields)
    return response
