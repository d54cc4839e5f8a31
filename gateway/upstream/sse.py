"""Server-sent events framing. Pure code: bytes in, bytes out; no Flask, no requests.

The relay forwards whole events only, byte for byte as the upstream sent them. If
the upstream breaks off mid-event, the partial event is dropped and an error event
is sent instead, so a client never parses half a JSON chunk and never sees a
``[DONE]`` the upstream did not send.
"""

from __future__ import annotations

import json

_BOUNDARIES = (b"\n\n", b"\r\n\r\n", b"\r\r")


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
        parts.append(events[start:index + size])
        start = index + size
    return parts


class EventFramer:
    """Feed raw upstream bytes; get back the complete events among them."""

    def __init__(self) -> None:
        self._pending = b""

    def feed(self, data: bytes) -> bytes:
        buffer = self._pending + data if self._pending else data
        end = _last_boundary_end(buffer)
        self._pending = buffer[end:]
        return buffer[:end]

    def flush(self) -> bytes:
        """What remains at a clean end of stream (an upstream that omits the final blank line)."""
        rest, self._pending = self._pending, b""
        return rest

    @property
    def pending(self) -> int:
        return len(self._pending)


def error_event(message: str, error_type: str = "api_error", code: str = "upstream_stream_error") -> bytes:
    """An SSE event carrying the gateway's error envelope; OpenAI SDKs raise on it."""
    body = json.dumps({"error": {"message": message, "type": error_type, "code": code, "param": None}})
    return f"event: error\ndata: {body}\n\n".encode()
