"""The connection class of the upstream pool: liveness check, head deadline, head parser.

:func:`pool_connection_class` turns urllib3's connection class into the one the pool
of :mod:`gateway.upstream.client` uses, with three changes, each for a reason:

- **The answer's head is parsed by** :mod:`gateway.upstream.head` rather than by
  ``http.client``'s detour through the ``email`` package (a general MIME parser, a
  visible share of a relayed request's CPU: bench/results/profile.md). Its response
  class, :class:`QuickHeadResponse`, is ``http.client``'s own, running the standard
  library's own ``begin()`` with only the header parser swapped
  (:func:`gateway.compat.http_response_begin`).
- **A head cut off is an error**: a header block that the upstream cuts off (the
  connection closes before its blank line) is a 502, not an answer with the headers
  that happened to arrive (:func:`parse_head`).
- **The head has a deadline**: ``UPSTREAM_TOTAL_TIMEOUT`` bounds the wait for the
  answer's head too, not only its body. A socket timeout bounds each read, and an
  upstream that sends its status line one byte a second never lets one run out; so
  the response class reads the head through :class:`HeadDeadlineReader`, which gives
  each read only the time left before the deadline (:data:`HEAD_DEADLINE`); past it,
  the read times out like any other (a 504).
- **Liveness without gevent's watcher**: before reusing a kept-alive connection
  urllib3 asks whether the upstream has closed it, with a zero-timeout poll. Under
  gevent that poll is gevent's cooperative one, which sets up and tears down a
  watcher each time; a zero-timeout poll never blocks, so the pool's connections
  ask the operating system's poll directly (:class:`QuickLivenessCheck`). Same
  answer, same rule.
"""

from __future__ import annotations

import contextvars
import functools
import http.client
import io
import select
import time
from typing import Any

from gateway import compat
from gateway.errors import UpstreamHeadCutOff
from gateway.upstream import head

# When the head of the answer now being awaited must be in (time.monotonic()); set by
# UpstreamClient.send around the pool call, read by the response class it creates.
# Context-local, so each thread (gthread) or greenlet (gevent) sees its own.
HEAD_DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar("upstream_head_deadline", default=None)


@functools.cache
def _os_poll() -> Any:
    """``select.poll`` as the OS provides it, also where gevent has patched ``select``."""
    try:
        from gevent import monkey
    except ImportError:  # gevent is not installed: select is the OS's
        return select.poll
    return monkey.get_original("select", "poll") if monkey.is_module_patched("select") else select.poll


class QuickLivenessCheck:
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


class HeadDeadlineReader(io.RawIOBase):
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
        count: int | None = self._raw.readinto(buffer)
        return count

    def head_done(self) -> None:
        if self._deadline is not None:
            self._deadline = None
            self._sock.settimeout(self._read_timeout)

    def fileno(self) -> int:
        number: int = self._raw.fileno()
        return number

    def close(self) -> None:
        if not self.closed:
            self._raw.close()
        super().close()


class HeadDeadlineSocket:
    """What ``http.client.HTTPResponse`` is given as its socket: it only calls
    ``makefile("rb")``, and gets a buffered :class:`HeadDeadlineReader`."""

    __slots__ = ("sock", "deadline", "reader")

    def __init__(self, sock: Any, deadline: float) -> None:
        self.sock = sock
        self.deadline = deadline
        self.reader: HeadDeadlineReader | None = None

    def makefile(self, mode: str) -> io.BufferedReader:
        self.reader = HeadDeadlineReader(self.sock, self.deadline)
        return io.BufferedReader(self.reader)


_stdlib_begin = compat.http_response_begin(parse_head)


class QuickHeadResponse(http.client.HTTPResponse):
    """``http.client.HTTPResponse`` whose ``begin()`` (status line, 1xx answers, framing,
    keep-alive) is the standard library's own code, run with :func:`parse_head` as its
    ``parse_headers``: a copy of the function with that one global replaced, rather than
    a copy of its source or a change to ``http.client`` for everyone.

    Made inside :meth:`gateway.upstream.client.UpstreamClient.send`, it reads the head within that call's
    deadline (:class:`HeadDeadlineReader`)."""

    def __init__(self, sock: Any, *args: Any, **kwargs: Any) -> None:
        deadline = HEAD_DEADLINE.get()
        self.head_reader: HeadDeadlineSocket | None = None
        if deadline is not None and sock is not None:
            sock = self.head_reader = HeadDeadlineSocket(sock, deadline)
        super().__init__(sock, *args, **kwargs)

    def begin(self) -> None:
        try:
            _stdlib_begin(self)
        finally:
            if self.head_reader is not None and self.head_reader.reader is not None:
                self.head_reader.reader.head_done()


def pool_connection_class(connection_class: type) -> type:
    return type(connection_class.__name__, (QuickLivenessCheck, connection_class), {"response_class": QuickHeadResponse})
