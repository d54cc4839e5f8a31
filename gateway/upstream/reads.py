"""Reading an upstream answer's body: what has arrived, at most :data:`READ_SIZE` bytes a read.

:func:`read_chunk` for a whole (non-streamed) answer, :func:`stream_reader` for a stream's
events (:mod:`gateway.upstream.streams`), and :data:`READ_ERRORS`, what a read raises when
the upstream breaks off or stalls.
"""

from __future__ import annotations

import functools
import http.client
from collections.abc import Callable
from dataclasses import dataclass

import urllib3.exceptions

from gateway.upstream.client import UpstreamResponse

READ_SIZE = 64 * 1024
READ_ERRORS = (urllib3.exceptions.HTTPError, http.client.HTTPException, OSError)


def read_chunk(upstream: UpstreamResponse) -> bytes:
    # read1 returns what has arrived (one recv), so a trickling upstream cannot
    # hold us past the deadline, and a connection-delimited stream is not buffered.
    return upstream.raw.read1(READ_SIZE, decode_content=True)


def _nothing() -> None:
    return None


@dataclass(frozen=True)
class StreamReader:
    """How one stream's body is read: ``read()`` returns what has arrived (at most
    :data:`READ_SIZE` bytes; ``b""`` at the end), ``close()`` lets go of the reading."""

    read: Callable[[], bytes]
    close: Callable[[], None]


def stream_reader(upstream: UpstreamResponse) -> StreamReader:
    """The reads of a stream's body, the cheapest urllib3 offers for its framing.

    A chunked body (what streaming servers send) is read with urllib3's ``read_chunked``:
    one HTTP chunk (at most :data:`READ_SIZE` bytes) per read, from one generator whose
    error handling is set up once for the whole stream, not once per read as ``read1``'s
    is (bench/results/profile.md). Another body is read with ``read1``: what has arrived.
    A body with no content coding skips urllib3's decoding step, which would pass every
    read through a buffer and copy it.
    """
    raw = upstream.raw
    decode = _content_coded(upstream)
    if getattr(raw, "chunked", False) and raw.supports_chunked_reads():
        chunks = raw.read_chunked(READ_SIZE, decode_content=decode)
        return StreamReader(functools.partial(next, chunks, b""), chunks.close)
    return StreamReader(functools.partial(raw.read1, READ_SIZE, decode_content=decode), _nothing)


def _content_coded(upstream: UpstreamResponse) -> bool:
    """Whether the answer's body has a content coding (gzip, ...) that reads must undo."""
    coding = upstream.headers.get("Content-Encoding")
    return coding is not None and coding.strip().lower() not in ("", "identity")
