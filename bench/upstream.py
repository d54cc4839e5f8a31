"""A fast OpenAI-compatible upstream for load tests: standard library asyncio only.

The gateway's own test fake (tests/fakes/upstream.py) is a ThreadingHTTPServer with
fault modes: right for tests, far too slow to sit behind a load test. This server
parses HTTP/1.1 by hand on an ``asyncio.Protocol``, keeps connections alive and
answers with precomputed bytes, so it is never the bottleneck (``make bench``
measures it directly first to show that).

Routes::

    POST /v1/completions, /v1/chat/completions   fixed JSON body, or SSE when "stream": true
    POST /v1/embeddings                          fixed JSON body
    GET  /v1/models, /health                     fixed JSON body

Streams send ``--chunks`` events ``--gap-ms`` apart, the first one at once (each on its
own schedule: event i at i x gap from the first, so a slow moment does not stretch the
stream), then, one gap after the last, what OpenAI sends at the end: a chunk with an
empty ``delta`` and ``finish_reason: "stop"``, the usage chunk when asked, and
``data: [DONE]``, in one write. A request may override the shape with ``bench_chunks=N``,
``bench_gap_ms=M`` and ``bench_tokens=K`` (tokens of text per event, 1 by default)
anywhere in its body, e.g. in the prompt or a message's text: gateways pass prompts on
unchanged, while some (Portkey) drop request fields they do not know.

The chunks are shaped as OpenAI's (and vLLM's) are: ``id``, ``object``, ``created``,
``model``, ``system_fingerprint``, ``choices`` with ``logprobs: null``; and when the
request asks for usage (``stream_options.include_usage``) every chunk carries
``"usage": null`` and the usage comes in a last chunk with ``"choices": []``.

Each event's text starts with ``t=<ns> `` where ``<ns>`` is ``time.monotonic_ns()``
when the event was written: the client reads the same system-wide clock on arrival, so
delivery delay per event is measured exactly, through any gateway that passes the text
on (peers that re-serialise events keep it).

    python bench/upstream.py --port 9100 [--chunks 10] [--gap-ms 20]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import signal
import time

MODEL = "bench-model"

_CHAT_BODY = json.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 1700000000,
        "model": MODEL,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello from the bench upstream."},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 9, "completion_tokens": 7, "total_tokens": 16},
    },
    separators=(",", ":"),
).encode()

_COMPLETION_BODY = json.dumps(
    {
        "id": "cmpl-bench",
        "object": "text_completion",
        "created": 1700000000,
        "model": MODEL,
        "choices": [{"index": 0, "text": "Hello from the bench upstream.", "finish_reason": "stop", "logprobs": None}],
        "usage": {"prompt_tokens": 9, "completion_tokens": 7, "total_tokens": 16},
    },
    separators=(",", ":"),
).encode()

_EMBEDDINGS_BODY = json.dumps(
    {
        "object": "list",
        "data": [{"object": "embedding", "index": 0, "embedding": [0.0] * 8}],
        "model": MODEL,
        "usage": {"prompt_tokens": 3, "total_tokens": 3},
    },
    separators=(",", ":"),
).encode()

_MODELS_BODY = json.dumps(
    {"object": "list", "data": [{"id": MODEL, "object": "model", "created": 0, "owned_by": "bench"}]},
    separators=(",", ":"),
).encode()

_CHUNKS = re.compile(rb"bench_chunks=(\d+)")
_GAP_MS = re.compile(rb"bench_gap_ms=(\d+(?:\.\d+)?)")
_TOKENS = re.compile(rb"bench_tokens=(\d+)")

_NOT_FOUND_BODY = b'{"error":{"message":"not found","type":"invalid_request_error","code":"not_found","param":null}}'


def _response(status: str, body: bytes, close: bool = False) -> bytes:
    head = (
        f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        f"{'Connection: close' if close else 'Connection: keep-alive'}\r\n\r\n"
    )
    return head.encode() + body


_FIXED = {
    ("POST", "/v1/chat/completions"): _response("200 OK", _CHAT_BODY),
    ("POST", "/v1/completions"): _response("200 OK", _COMPLETION_BODY),
    ("POST", "/v1/embeddings"): _response("200 OK", _EMBEDDINGS_BODY),
    ("GET", "/v1/models"): _response("200 OK", _MODELS_BODY),
    ("GET", "/health"): _response("200 OK", b'{"status":"ok"}'),
}
_STREAMING_PATHS = frozenset({"/v1/chat/completions", "/v1/completions"})
_STREAM_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
    b"Transfer-Encoding: chunked\r\nConnection: keep-alive\r\n\r\n"
)


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


class StreamShape:
    """The bytes of one stream's events, built once per request; only the stamp varies."""

    def __init__(self, path: str, tokens: int, usage: bool, events: int) -> None:
        chat = path == "/v1/chat/completions"
        self.usage = usage
        kind = ("chatcmpl-bench", "chat.completion.chunk") if chat else ("cmpl-bench", "text_completion")
        head: dict = {"id": kind[0], "object": kind[1]}
        head.update({"created": 1700000000, "model": MODEL, "system_fingerprint": "fp_bench"})
        tail = ',"usage":null}' if usage else "}"
        words = " tok" * max(0, tokens - 1)
        self._parts = []  # (before the stamp, after it), first event and the others
        for first in (True, False):
            if chat:
                delta = {"role": "assistant", "content": "@"} if first else {"content": "@"}
                choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}
            else:
                choice = {"index": 0, "text": "@", "logprobs": None, "finish_reason": None}
            body = json.dumps({**head, "choices": [choice]}, separators=(",", ":"))[:-1] + tail
            before, after = body.split('"@"')
            self._parts.append((f'data: {before}"t='.encode(), f'{words} "{after}\n\n'.encode()))
        finish = {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}
        if not chat:
            finish = {"index": 0, "text": "", "logprobs": None, "finish_reason": "stop"}
        end = b"data: " + (json.dumps({**head, "choices": [finish]}, separators=(",", ":"))[:-1] + tail).encode() + b"\n\n"
        if usage:
            figures = {
                "prompt_tokens": 9,
                "completion_tokens": events * tokens,
                "total_tokens": 9 + events * tokens,
                "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
                "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
            }
            end += b"data: " + json.dumps({**head, "choices": [], "usage": figures}, separators=(",", ":")).encode() + b"\n\n"
        self.end = end + b"data: [DONE]\n\n"

    def event(self, index: int) -> bytes:
        before, after = self._parts[0 if index == 0 else 1]
        return b"%s%d%s" % (before, time.monotonic_ns(), after)


class _Request:
    __slots__ = ("method", "path", "keep_alive", "body")

    def __init__(self, method: str, path: str, keep_alive: bool, body: bytes) -> None:
        self.method = method
        self.path = path
        self.keep_alive = keep_alive
        self.body = body


class HttpProtocol(asyncio.Protocol):
    """One connection: parse requests as they arrive, answer them in order."""

    def __init__(self, server: UpstreamServer) -> None:
        self.server = server
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.streaming = False
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.streaming:
            self._process()

    def _process(self) -> None:
        while not self.closed and not self.streaming:
            request = self._parse_one()
            if request is None:
                return
            self._answer(request)

    def _parse_one(self) -> _Request | None:
        buf = self.buffer
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            return None
        head = bytes(buf[:end]).decode("latin-1")
        lines = head.split("\r\n")
        try:
            method, target, version = lines[0].split(" ", 2)
        except ValueError:
            self._fail()
            return None
        length = 0
        chunked = False
        keep_alive = version == "HTTP/1.1"
        for line in lines[1:]:
            name, _, value = line.partition(":")
            name = name.strip().lower()
            if name == "content-length":
                length = int(value.strip())
            elif name == "transfer-encoding" and "chunked" in value.lower():
                chunked = True
            elif name == "connection":
                token = value.strip().lower()
                if token == "close":
                    keep_alive = False
                elif token == "keep-alive":
                    keep_alive = True
        start = end + 4
        if chunked:
            body, consumed = _dechunk(buf, start)
            if body is None:
                return None
            del buf[:consumed]
        else:
            if len(buf) < start + length:
                return None
            body = bytes(buf[start : start + length])
            del buf[: start + length]
        path = target.split("?", 1)[0]
        return _Request(method, path, keep_alive, body)

    def _fail(self) -> None:
        assert self.transport is not None
        self.transport.write(_response("400 Bad Request", b'{"error":"bad request"}', close=True))
        self.transport.close()
        self.closed = True

    def _answer(self, request: _Request) -> None:
        transport = self.transport
        assert transport is not None
        self.server.requests += 1
        if request.method == "POST" and request.path in _STREAMING_PATHS and b'"stream"' in request.body:
            try:
                document = json.loads(request.body)
            except ValueError:
                document = {}
            if isinstance(document, dict) and document.get("stream") is True:
                chunks_match = _CHUNKS.search(request.body)
                gap_match = _GAP_MS.search(request.body)
                tokens_match = _TOKENS.search(request.body)
                chunks = int(chunks_match.group(1)) if chunks_match else self.server.chunks
                gap = (float(gap_match.group(1)) if gap_match else self.server.gap_ms) / 1000.0
                options = document.get("stream_options")
                usage = isinstance(options, dict) and options.get("include_usage") is True
                shape = StreamShape(request.path, int(tokens_match.group(1)) if tokens_match else 1, usage, chunks)
                self.streaming = True
                asyncio.get_running_loop().create_task(self._stream(request, shape, chunks, gap))
                return
        fixed = _FIXED.get((request.method, request.path))
        if fixed is None:
            transport.write(_response("404 Not Found", _NOT_FOUND_BODY, close=not request.keep_alive))
        elif request.keep_alive:
            transport.write(fixed)
        else:
            transport.write(fixed.replace(b"Connection: keep-alive", b"Connection: close"))
        if not request.keep_alive:
            transport.close()
            self.closed = True

    async def _stream(self, request: _Request, shape: StreamShape, chunks: int, gap: float) -> None:
        transport = self.transport
        assert transport is not None
        loop = asyncio.get_running_loop()
        try:
            started = loop.time()
            transport.write(_STREAM_HEAD + _chunk(shape.event(0)))
            for index in range(1, chunks + 1):
                await asyncio.sleep(max(0.0, started + index * gap - loop.time()))
                if self.closed:
                    return
                transport.write(_chunk(shape.event(index)) if index < chunks else _chunk(shape.end) + b"0\r\n\r\n")
        finally:
            self.streaming = False
        if not request.keep_alive:
            transport.close()
            self.closed = True
        elif self.buffer:
            self._process()


def _dechunk(buf: bytearray, start: int) -> tuple[bytes | None, int]:
    """Decode a chunked request body starting at ``start``; (None, 0) until complete."""
    body = bytearray()
    pos = start
    while True:
        line_end = buf.find(b"\r\n", pos)
        if line_end < 0:
            return None, 0
        size = int(bytes(buf[pos:line_end]).split(b";", 1)[0], 16)
        pos = line_end + 2
        if size == 0:
            trailer_end = buf.find(b"\r\n\r\n", pos - 2)
            if trailer_end < 0:
                return None, 0
            return bytes(body), trailer_end + 4
        if len(buf) < pos + size + 2:
            return None, 0
        body += buf[pos : pos + size]
        pos += size + 2


class UpstreamServer:
    def __init__(self, chunks: int, gap_ms: float) -> None:
        self.chunks = chunks
        self.gap_ms = gap_ms
        self.requests = 0


async def serve(host: str, port: int, chunks: int, gap_ms: float) -> None:
    state = UpstreamServer(chunks, gap_ms)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: HttpProtocol(state), host, port, backlog=4096, reuse_address=True)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(f"bench upstream on http://{host}:{port} (chunks={chunks}, gap_ms={gap_ms})", flush=True)
    async with server:
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9100)
    parser.add_argument("--chunks", type=int, default=10, help="events per stream")
    parser.add_argument("--gap-ms", type=float, default=20.0, help="milliseconds between events")
    args = parser.parse_args()
    asyncio.run(serve(args.host, args.port, args.chunks, args.gap_ms))


if __name__ == "__main__":
    main()
