"""What the gevent worker wraps around a request's body and a stream's answer.

- :class:`BodyWithDeadline`: ``wsgi.input`` whose reads fail with ``408`` once the
  body's deadline (``REQUEST_BODY_TIMEOUT``) has passed.
- :class:`CuttableStream`: an event stream the drain can end with :data:`SHUTDOWN_EVENT`,
  and :class:`RequestCut`, the exception the drain throws into a running request.
"""

from __future__ import annotations

import errno
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import gevent

from gateway.errors import RequestBodyTimeout
from gateway.quotas import slots as inflight
from gateway.upstream.sse import error_event


class RequestCut(ConnectionResetError):
    """Thrown into a request still running at the drain deadline.

    A ``ConnectionResetError``: wherever it lands (waiting on the upstream, on the
    client, on a body) the code there already handles a connection that broke: the
    relay ends a stream with its error event, a blocked write closes the client."""

    def __init__(self) -> None:
        super().__init__(errno.ECONNRESET, "the worker is stopping")


SHUTDOWN_EVENT = error_event(
    "The gateway is stopping or restarting; this stream was cut before its end. Retry the request.", code="server_shutting_down"
)


class CuttableStream:
    """An event stream's response body that the drain can end with an error event.

    When the drain cuts the stream, the relay sees its upstream read fail and ends
    the stream its usual way (its own error event, then its end callback: log line,
    usage row, concurrency slot). This wrapper swaps that event for
    :data:`SHUTDOWN_EVENT`, which names the real reason, and marks the stream's
    outcome (:data:`gateway.quotas.slots.stream_cut`) for the log line.
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


class BodyWithDeadline:
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
        data: bytes = self._within_deadline(self._body.read, size)
        return data

    def readline(self, size: int | None = None) -> bytes:
        data: bytes = self._within_deadline(self._body.readline, size)
        return data

    def readlines(self, hint: int | None = None) -> list[bytes]:
        data: list[bytes] = self._within_deadline(self._body.readlines, hint)
        return data

    def __iter__(self) -> Iterator[bytes]:
        while line := self.readline():
            yield line
