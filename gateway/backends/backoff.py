"""How long to wait before a retry: exponential backoff with full jitter, and the backend's
own ``Retry-After``. Pure functions.

:func:`backoff` draws uniformly in ``[0, min(cap, base * 2**attempt)]`` (AWS's "full
jitter"): retries of many clients spread out instead of arriving together.

:func:`retry_after_seconds` reads ``retry-after-ms`` (milliseconds, possibly fractional, as
OpenAI and Azure send it) first, then ``Retry-After`` (RFC 9110: whole seconds or an HTTP
date; a decimal is accepted too). A date already past is ``0.0``; anything else (a negative
number, a word, an impossible date) is ``None``: no hint. Callers cap the result
(``retry_after_max``) and decide what to do when it exceeds the request's deadline.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Mapping
from datetime import UTC
from email.utils import parsedate_to_datetime

_NUMBER = re.compile(r"\d+(?:\.\d+)?")
_MAX_DOUBLINGS = 64  # beyond this the cap has long applied; keeps 2**attempt a small float


def backoff(attempt: int, base: float, cap: float, rng: random.Random) -> float:
    """Seconds to wait before retry number ``attempt`` (0 for the first retry)."""
    if attempt < 0:
        raise ValueError("attempt must be >= 0")
    ceiling = min(cap, base * 2.0 ** min(attempt, _MAX_DOUBLINGS))
    return rng.uniform(0.0, ceiling) if ceiling > 0 else 0.0


def retry_after_seconds(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """The wait an answer's headers ask for, in seconds, or ``None`` (see the module).

    :param headers: the answer's headers, names in any case.
    :param now: wall-clock time (``time.time()``) an HTTP date is measured from.
    """
    millis = seconds = None
    for name, value in headers.items():
        lowered = name.lower()
        if lowered == "retry-after-ms":
            millis = value
        elif lowered == "retry-after":
            seconds = value
    if millis is not None and _NUMBER.fullmatch(millis.strip()):
        return float(millis) / 1000.0
    if seconds is None:
        return None
    seconds = seconds.strip()
    if _NUMBER.fullmatch(seconds):
        return float(seconds)
    return _seconds_until(seconds, time.time() if now is None else now)


def _seconds_until(http_date: str, now: float) -> float | None:
    try:
        when = parsedate_to_datetime(http_date)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:  # "-0000": UTC by RFC 5322
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - now)
