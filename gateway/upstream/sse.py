"""Server-sent events framing. Pure code: bytes in, bytes out; no I/O, no request context.

The relay forwards whole events only, byte for byte as the upstream sent them. If
the upstream breaks off mid-event, the partial event is dropped and an error event
is sent instead, so a client never parses half a JSON chunk and never sees a
``[DONE]`` the upstream did not send. Its body is the gateway's one error envelope
(:func:`gateway.errors.envelope`).
"""

from __future__ import annotations

import json

from gateway.errors import envelope

_BOUNDARIES = (b"\n\n", b"\r\n\r\n", b"\r\r")
# Bytes of the previous read that a boundary ending in the next read can start in.
_OVERLAP = max(len(boundary) for boundary in _BOUNDARIES) - 1


def _last_boundary_end(buffer: bytes) -> int:
    """Index just past the last event boundary in ``buffer``, or 0 if none."""
    end = 0
    for boundary in _BOUNDARIES:
        index = buffer.rfind(boundary)
        if index >= 0:
            end = max(end, index + len(boundary))
    return end


def split_events(events: bytes) -> list[bytes]:
    """Split complete events (as :class:`EventFramer` returns them) into single events,
    each with its own terminating blank line, bytes unchanged."""
    parts: list[bytes] = []
    start = 0
    length = len(events)
    while start < length:
        ends = [(i, len(b)) for b in _BOUNDARIES if (i := events.find(b, start)) >= 0]
        if not ends:
            parts.append(events[start:])
            break
        index, size = min(ends)
        parts.append(events[start : index + size])
        start = index + size
    return parts


class EventFramer:
    """Feed raw upstream bytes; get back the complete events among them.

    Linear in the bytes fed: each call searches only its own bytes, plus the last
    :data:`_OVERLAP` bytes of the pending (incomplete) event for a boundary split
    across two reads, and the pending event is kept as a list of pieces, joined once
    when its boundary arrives. So an upstream that never ends an event costs one pass
    over its bytes, not one pass over all of them per read. The framer does not bound
    the pending event itself: the caller reads :attr:`pending` after each call and
    gives up past its own limit (:func:`gateway.upstream.streams.stream_events`).

    The usual read (whole events, nothing pending) is returned as it is, not copied,
    after one test of its last bytes.
    """

    __slots__ = ("_first", "_more", "pending")

    def __init__(self) -> None:
        self._first = b""  # the pending (incomplete) event's first piece ...
        self._more: list[bytes] = []  # ... and the pieces after it, if it spans reads
        self.pending = 0  # bytes of the incomplete event held back so far

    def feed(self, data: bytes) -> bytes:
        size = self.pending
        if not size and data.endswith(_BOUNDARIES):  # whole events only: the last boundary ends it
            return data
        end = _last_boundary_end(data)
        if not size:
            if end == len(data):  # the usual read: whole events only
                return data
            self._first = data[end:] if end else data
            self.pending = len(data) - end
            return data[:end]
        more = self._more
        if end <= _OVERLAP:  # else no boundary split across the reads can end later than ``end``
            if not data:
                return b""
            if (more[-1] if more else self._first)[-1] in b"\r\n":
                # A boundary may start in the pending bytes and end in these.
                tail = b"".join([self._first, *more][-_OVERLAP:])[-_OVERLAP:]
                split = _last_boundary_end(tail + data[:_OVERLAP]) - len(tail)
                if split > end:
                    end = split
            if not end:
                more.append(data)
                self.pending = size + len(data)
                return b""
        if more:
            complete = b"".join([self._first, *more, data[:end]])
            more.clear()
        else:
            complete = self._first + data[:end]
        self._first = data[end:]
        self.pending = len(data) - end
        return complete

    def flush(self) -> bytes:
        """What remains at a clean end of stream (an upstream that omits the final blank line)."""
        rest = b"".join([self._first, *self._more])
        self._first = b""
        self._more.clear()
        self.pending = 0
        return rest


def error_event(message: str, error_type: str = "api_error", code: str = "upstream_stream_error") -> bytes:
    """An SSE event carrying the gateway's error envelope; OpenAI SDKs raise on it."""
    body = json.dumps(envelope(message, error_type, code))
    return f"event: error\ndata: {body}\n\n".encode()
