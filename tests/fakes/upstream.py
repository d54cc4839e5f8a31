"""A fake OpenAI-compatible upstream HTTP server for tests, with fault modes.

Standard library only.  It listens on a real loopback socket so the gateway
talks to it exactly as it would talk to a real upstream.

Typical use::

    fake = FakeUpstream().start()
    fake.behavior = Behavior(mode="status", status=429, headers={"Retry-After": "3"})
    ... point the gateway at fake.base_url ...
    fake.stop()

Run it in the foreground (mode "ok")::

    python -m tests.fakes.upstream --host 127.0.0.1 --port 8000 [--gap 0.05]
"""

from __future__ import annotations

import argparse
import json
import select
import signal
import socket
import socketserver
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlsplit

__all__ = ["Behavior", "Recorded", "FakeUpstream", "MODELS", "RESPONSE_USAGE", "main"]

MODES = (
    "ok",
    "status",
    "raw",
    "hang",
    "redirect",
    "drop",
    "drip",
    "close_after_request",
    # hostile upstreams (issue 11): see the _mode_* methods of the same names
    "no_event_boundary",
    "trickle_status",
    "truncated_head",
    "empty_200",
    "surrogates",
)

MODELS: list[dict[str, Any]] = [
    {"id": "fake-model", "object": "model", "created": 0, "owned_by": "fake"},
    {"id": "gpt-3.5-turbo", "object": "model", "created": 0, "owned_by": "fake"},
]

DEFAULT_MODEL = "fake-model"

# Errors that mean "the peer went away" (or the socket was closed under us by
# stop()).  They are swallowed quietly.
_QUIET_ERRORS: tuple[type[BaseException], ...] = (OSError, ValueError)

# Framing headers are always produced by the server itself; extra headers with
# these names are ignored so the response stays parseable.
_FRAMING_HEADERS = frozenset({"content-length", "transfer-encoding"})

_POST_ROUTES = frozenset({"/v1/completions", "/v1/chat/completions", "/v1/embeddings", "/v1/images/generations", "/v1/responses"})

#: The Responses API: a plain answer's usage (a stream's: 11 input tokens, one output token per delta).
RESPONSE_TEXT = "Hello from the fake upstream"
RESPONSE_USAGE: dict[str, Any] = {
    "input_tokens": 11,
    "input_tokens_details": {"cached_tokens": 3},
    "output_tokens": 6,
    "output_tokens_details": {"reasoning_tokens": 2},
    "total_tokens": 17,
}
_RESPONSES_ITEM = "/v1/responses/"


class _ClientGone(Exception):
    """The client closed the connection while we were reading its request."""


@dataclass
class Behavior:
    """How the fake answers.  Applies to every request received after it is set."""

    mode: str = "ok"
    status: int = 200
    body: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    chunks: int = 5
    gap: float = 0.0
    framing: str = "chunked"
    drop_after: int = 2
    location: str = "http://127.0.0.1:9/elsewhere"
    hang_seconds: float = 30.0
    content_type: str = "application/json"
    rst: bool = False
    #: mode "no_event_boundary": bytes of one event (``data: `` included) that never
    #: ends, sent after ``events_before`` whole chat chunk events
    event_bytes: int = 4 * 1024 * 1024
    events_before: int = 0
    #: mode "empty_200": "length" (Content-Length: 0) or "close" (no length, close at once)
    empty_framing: str = "length"
    #: mode "ok": merged into the ``usage`` of chat and completion answers and of the
    #: streamed usage chunk, e.g. {"prompt_tokens_details": {"cached_tokens": 4}}
    usage_details: dict[str, Any] = field(default_factory=dict)


@dataclass
class Recorded:
    """One request as the fake received it."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode("utf-8")


def _error_obj(message: str, type_: str, code: str | None, param: str | None = None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


_STATUS_ERRORS: dict[int, tuple[str, str]] = {
    400: ("invalid_request_error", "bad_request"),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("permission_error", "forbidden"),
    404: ("invalid_request_error", "not_found"),
    405: ("invalid_request_error", "method_not_allowed"),
    408: ("timeout_error", "request_timeout"),
    409: ("invalid_request_error", "conflict"),
    413: ("invalid_request_error", "request_too_large"),
    422: ("invalid_request_error", "unprocessable_entity"),
    429: ("rate_limit_error", "rate_limit_exceeded"),
    500: ("server_error", "internal_error"),
    502: ("server_error", "bad_gateway"),
    503: ("server_error", "service_unavailable"),
    504: ("server_error", "gateway_timeout"),
}


def default_error_body(status: int) -> bytes:
    """The OpenAI-style error JSON used by mode "status" when no body is given."""
    type_, code = _STATUS_ERRORS.get(
        status,
        ("server_error", f"error_{status}") if status >= 500 else ("invalid_request_error", f"error_{status}"),
    )
    return _dumps(_error_obj(f"fake upstream error {status}", type_, code))


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


def _body_allowed(status: int) -> bool:
    return not (100 <= status < 200 or status in (204, 304))


# --------------------------------------------------------------------------- #
# Request handler
# --------------------------------------------------------------------------- #


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "fake-upstream/1.0"
    sys_version = ""

    server: _Server

    # -- plumbing ----------------------------------------------------------- #

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass

    def version_string(self) -> str:
        return self.server_version

    def setup(self) -> None:
        self.timeout = self.server.fake.idle_timeout
        super().setup()

    def handle(self) -> None:
        try:
            super().handle()
        except _QUIET_ERRORS:
            self.close_connection = True
        except _ClientGone:
            self.close_connection = True

    def finish(self) -> None:
        try:
            super().finish()
        except _QUIET_ERRORS:
            pass

    def _dispatch(self) -> None:
        fake = self.server.fake
        try:
            body = self._read_body()
        except _ClientGone:
            self.close_connection = True
            return
        except ValueError:
            self.close_connection = True
            self._send_bytes(
                400,
                _dumps(_error_obj("Malformed request body framing", "invalid_request_error", None)),
                "application/json",
                {},
            )
            return
        headers: dict[str, str] = {}
        for name, value in self.headers.items():
            key = name.lower()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        rec = Recorded(self.command, self.path, headers, body)
        behavior = fake._record(rec)
        handler: Callable[[Behavior, Recorded], None] | None = getattr(self, f"_mode_{behavior.mode}", None)
        if handler is None:
            self._send_bytes(
                500,
                _dumps(_error_obj(f"unknown fake mode {behavior.mode!r}", "server_error", None)),
                "application/json",
                {},
            )
            return
        handler(behavior, rec)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = do_HEAD = _dispatch

    def _read_body(self) -> bytes:
        te = self.headers.get("Transfer-Encoding", "")
        if "chunked" in te.lower():
            parts: list[bytes] = []
            while True:
                line = self.rfile.readline(65537)
                if not line:
                    raise _ClientGone()
                size = int(line.split(b";", 1)[0].strip() or b"x", 16)  # ValueError if bad
                if size < 0:
                    raise ValueError("negative chunk size")
                if size == 0:
                    while True:  # trailers, up to the empty line
                        trailer = self.rfile.readline(65537)
                        if not trailer:
                            raise _ClientGone()
                        if trailer in (b"\r\n", b"\n"):
                            break
                    return b"".join(parts)
                data = self.rfile.read(size)
                if len(data) < size:
                    raise _ClientGone()
                parts.append(data)
                if not self.rfile.readline(65537):
                    raise _ClientGone()
        length = self.headers.get("Content-Length")
        if length is None or not length.strip():
            return b""
        n = int(length)
        if n < 0:
            raise ValueError("negative Content-Length")
        if n == 0:
            return b""
        data = self.rfile.read(n)
        if len(data) < n:
            raise _ClientGone()
        return data

    def _head_bytes(self, status: int, defaults: list[tuple[str, str]], extra: dict[str, str]) -> bytes:
        extra_names = {k.lower() for k in extra}
        if self.close_connection and not any(k.lower() == "connection" for k, _ in defaults):
            defaults = [*defaults, ("Connection", "close")]
        base = [("Server", self.version_string()), ("Date", self.date_time_string()), *defaults]
        lines = [f"HTTP/1.1 {status} {_reason(status)}"]
        for name, value in base:
            low = name.lower()
            if low in extra_names and low not in _FRAMING_HEADERS:
                continue  # overridden by an extra header
            lines.append(f"{name}: {value}")
        for name, value in extra.items():
            if name.lower() in _FRAMING_HEADERS:
                continue
            lines.append(f"{name}: {value}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", "replace")

    def _write(self, data: bytes) -> None:
        self.wfile.write(data)

    def _send_bytes(
        self,
        status: int,
        body: bytes,
        content_type: str | None,
        extra: dict[str, str],
        defaults: list[tuple[str, str]] | None = None,
    ) -> None:
        hdrs = list(defaults or [])
        if _body_allowed(status):
            if content_type is not None:
                hdrs.insert(0, ("Content-Type", content_type))
            hdrs.append(("Content-Length", str(len(body))))
        else:
            body = b""
        if self.command == "HEAD":
            body = b""
        self._write(self._head_bytes(status, hdrs, extra) + body)

    def _send_json(self, status: int, obj: Any, extra: dict[str, str]) -> None:
        self._send_bytes(status, _dumps(obj), "application/json", extra)

    # -- waiting ------------------------------------------------------------ #

    def _client_gone(self) -> bool:
        """True if the peer has closed (or reset) its side of the connection."""
        sock = self.connection
        try:
            if hasattr(select, "poll"):
                poller = select.poll()
                poller.register(sock, select.POLLIN | select.POLLERR | select.POLLHUP)
                if not poller.poll(0):
                    return False
            else:  # pragma: no cover - non-POSIX
                readable, _, _ = select.select([sock], [], [], 0)
                if not readable:
                    return False
            data = sock.recv(1, socket.MSG_PEEK | getattr(socket, "MSG_DONTWAIT", 0))
        except (BlockingIOError, InterruptedError):
            return False
        except (OSError, ValueError):
            return True
        return data == b""

    def _pause(self, seconds: float) -> bool:
        """Wait up to ``seconds``.  False if stop() was called or the client left."""
        stop = self.server.fake._stop_event
        if seconds <= 0:
            return not stop.is_set()
        deadline = time.monotonic() + seconds
        while True:
            if self._client_gone():
                return False
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return not stop.is_set()
            if stop.wait(min(remaining, 0.05)):
                return False

    def _abort(self, rst: bool) -> None:
        """Close the socket right now: FIN (shutdown) or RST (SO_LINGER 0)."""
        self.close_connection = True
        sock = self.connection
        try:
            if rst:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            else:
                sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        # The buffered reader holds a reference on the socket; without closing
        # it, sock.close() would not really close the file descriptor.
        for closer in (self.rfile.close, sock.close):
            try:
                closer()
            except _QUIET_ERRORS:
                pass

    # -- OpenAI emulation --------------------------------------------------- #

    @staticmethod
    def _parse_json_object(body: bytes) -> dict | None:
        try:
            data = json.loads(body)
        except ValueError:
            return None
        return data if isinstance(data, dict) else None

    @staticmethod
    def _model_of(data: dict | None) -> str:
        if data and isinstance(data.get("model"), str) and data["model"]:
            return data["model"]
        return DEFAULT_MODEL

    def _route(self, rec: Recorded) -> tuple[int, Any, tuple[str, str, bool] | None]:
        """(status, JSON payload, stream spec or None) for mode "ok"."""
        path = urlsplit(rec.path).path.rstrip("/") or "/"
        method = rec.method
        now = int(time.time())

        if path in _POST_ROUTES:
            if method != "POST":
                return 405, _error_obj(f"Method {method} not allowed for {path}", "invalid_request_error", "method_not_allowed"), None
            data = self._parse_json_object(rec.body)
            if data is None:
                return (
                    400,
                    _error_obj(
                        "We could not parse the JSON body of your request. (HINT: This likely means you "
                        "aren't using your HTTP library correctly.)",
                        "invalid_request_error",
                        None,
                    ),
                    None,
                )
            model = self._model_of(data)
            if path == "/v1/responses":
                if data.get("stream") is True:
                    return 200, None, ("responses", model, True)  # the stream's last event always has usage
                answer = self._response_object(model, RESPONSE_TEXT, RESPONSE_USAGE)
                self.server.fake._store_response(answer, data)
                return 200, answer, None
            if path in ("/v1/completions", "/v1/chat/completions") and data.get("stream") is True:
                opts = data.get("stream_options")
                include_usage = isinstance(opts, dict) and opts.get("include_usage") is True
                kind = "chat" if path == "/v1/chat/completions" else "completion"
                return 200, None, (kind, model, include_usage)
            if path == "/v1/completions":
                return (
                    200,
                    {
                        "id": "cmpl-fake",
                        "object": "text_completion",
                        "created": now,
                        "model": model,
                        "choices": [{"text": " fake completion", "index": 0, "logprobs": None, "finish_reason": "stop"}],
                        "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12},
                    },
                    None,
                )
            if path == "/v1/chat/completions":
                return (
                    200,
                    {
                        "id": "chatcmpl-fake",
                        "object": "chat.completion",
                        "created": now,
                        "model": model,
                        "choices": [
                            {
                                "index": 0,
                                "message": {"role": "assistant", "content": "Hello from the fake upstream"},
                                "finish_reason": "stop",
                            }
                        ],
                        "usage": {"prompt_tokens": 9, "completion_tokens": 6, "total_tokens": 15},
                    },
                    None,
                )
            if path == "/v1/embeddings":
                inp = data.get("input")
                if isinstance(inp, list) and inp and not all(isinstance(x, int) for x in inp):
                    count = len(inp)
                else:  # a string, a single token array, or missing
                    count = 1
                return (
                    200,
                    {
                        "object": "list",
                        "data": [{"object": "embedding", "index": i, "embedding": [0.1, 0.2, 0.3]} for i in range(count)],
                        "model": model,
                        "usage": {"prompt_tokens": 4, "total_tokens": 4},
                    },
                    None,
                )
            # /v1/images/generations
            n = data.get("n", 1)
            n = n if isinstance(n, int) and 1 <= n <= 10 else 1
            return (
                200,
                {
                    "created": now,
                    "data": [{"url": "http://127.0.0.1/fake.png"} for _ in range(n)],
                },
                None,
            )

        if path == "/v1/models":
            if method not in ("GET", "HEAD"):
                return 405, _error_obj(f"Method {method} not allowed for {path}", "invalid_request_error", "method_not_allowed"), None
            return 200, {"object": "list", "data": [dict(m) for m in MODELS]}, None

        if path.startswith("/v1/models/") and method in ("GET", "HEAD"):
            model_id = path[len("/v1/models/") :]
            for m in MODELS:
                if m["id"] == model_id:
                    return 200, dict(m), None
            return 404, _error_obj(f"The model '{model_id}' does not exist", "invalid_request_error", "model_not_found", "model"), None

        if path.startswith(_RESPONSES_ITEM):
            return self._response_item(method, unquote(path[len(_RESPONSES_ITEM) :]))

        return 404, _error_obj("Unknown path", "invalid_request_error", "not_found"), None

    # -- the Responses API -------------------------------------------------- #

    def _response_object(self, model: str, text: str, usage: dict[str, Any] | None, status: str = "completed") -> dict[str, Any]:
        """A Responses API ``response`` object (OpenAI's shape, trimmed to what SDKs read)."""
        fake = self.server.fake
        with fake._cond:
            fake._response_count += 1
            number = fake._response_count
        return {
            "id": f"resp_fake{number}",
            "object": "response",
            "created_at": int(time.time()),
            "status": status,
            "model": model,
            "output": [
                {
                    "type": "message",
                    "id": f"msg_fake{number}",
                    "status": status,
                    "role": "assistant",
                    "content": [{"type": "output_text", "text": text, "annotations": []}],
                }
            ]
            if status == "completed"
            else [],
            "parallel_tool_calls": True,
            "tool_choice": "auto",
            "tools": [],
            "error": None,
            "incomplete_details": None,
            "usage": usage,
        }

    def _response_item(self, method: str, response_id: str) -> tuple[int, Any, None]:
        """``GET`` (the stored response) or ``DELETE`` ``/v1/responses/<id>``."""
        fake = self.server.fake
        if method not in ("GET", "HEAD", "DELETE"):
            return 405, _error_obj(f"Method {method} not allowed", "invalid_request_error", "method_not_allowed"), None
        with fake._cond:
            stored = fake.stored_responses.pop(response_id, None) if method == "DELETE" else fake.stored_responses.get(response_id)
        if stored is None:
            return 404, _error_obj(f"Response with id '{response_id}' not found.", "invalid_request_error", None, "response_id"), None
        if method == "DELETE":
            return 200, {"id": response_id, "object": "response", "deleted": True}, None
        return 200, stored, None

    def _responses_events(self, model: str, chunks: int) -> Iterator[bytes]:
        """A Responses API stream, each event framed (``event:`` and ``data:``): ``response.created``,
        one ``response.output_text.delta`` per chunk, ``response.completed`` with the usage."""
        created = self._response_object(model, "", None, status="in_progress")
        number = 0

        def event(kind: str, **fields: Any) -> bytes:
            nonlocal number
            number += 1
            return b"event: %s\ndata: %s\n\n" % (kind.encode(), _dumps({"type": kind, "sequence_number": number - 1, **fields}))

        yield event("response.created", response=created)
        deltas = [f"tok{i} " for i in range(max(0, chunks))]
        for delta in deltas:
            yield event("response.output_text.delta", item_id="msg_fake", output_index=0, content_index=0, delta=delta)
        n = len(deltas)
        usage = {**RESPONSE_USAGE, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": n}
        usage.update(output_tokens_details={"reasoning_tokens": 0}, total_tokens=RESPONSE_USAGE["input_tokens"] + n)
        completed = {**self._response_object(model, "".join(deltas), usage), "id": created["id"]}
        self.server.fake._store_response(completed, {})
        yield event("response.completed", response=completed)

    @staticmethod
    def _sse_events(kind: str, model: str, chunks: int, include_usage: bool, usage_details: dict[str, Any]) -> Iterator[bytes]:
        created = int(time.time())
        if kind == "chat":
            base = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": created, "model": model}
            for i in range(max(0, chunks)):
                delta: dict[str, Any] = {"content": f"tok{i} "}
                if i == 0:
                    delta = {"role": "assistant", **delta}
                yield _dumps({**base, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]})
            yield _dumps({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
            prompt_tokens = 9
        else:
            base = {"id": "cmpl-fake", "object": "text_completion", "created": created, "model": model}
            for i in range(max(0, chunks)):
                yield _dumps(
                    {
                        **base,
                        "choices": [{"text": f"tok{i} ", "index": 0, "logprobs": None, "finish_reason": None}],
                    }
                )
            yield _dumps({**base, "choices": [{"text": "", "index": 0, "logprobs": None, "finish_reason": "stop"}]})
            prompt_tokens = 5
        if include_usage:
            n = max(0, chunks)
            yield _dumps(
                {
                    **base,
                    "choices": [],
                    "usage": {
                        "prompt_tokens": prompt_tokens,
                        "completion_tokens": n,
                        "total_tokens": prompt_tokens + n,
                        **usage_details,
                    },
                }
            )
        yield b"[DONE]"

    def _stream(
        self,
        b: Behavior,
        kind: str,
        model: str,
        include_usage: bool,
        drop_after: int | None = None,
    ) -> None:
        fake = self.server.fake
        chunked = b.framing != "close"
        defaults = [("Content-Type", "text/event-stream"), ("Cache-Control", "no-cache")]
        if chunked:
            defaults.append(("Transfer-Encoding", "chunked"))
        else:
            defaults.append(("Connection", "close"))
        events: Iterator[bytes] = (
            self._responses_events(model, b.chunks)
            if kind == "responses"
            else self._sse_events(kind, model, b.chunks, include_usage, b.usage_details)
        )
        fake._stream_started()
        try:
            head = self._head_bytes(200, defaults, b.headers)
            if not chunked:
                self.close_connection = True
            self._write(head)
            if self.command == "HEAD":
                if chunked:
                    self._write(b"0\r\n\r\n")
                return
            sent = 0
            for event in events:
                if drop_after is not None and sent >= drop_after:
                    break
                if sent and not self._pause(b.gap):
                    self._abort(False)
                    return
                payload = event if event.startswith(b"event: ") else b"data: " + event + b"\n\n"
                if chunked:
                    payload = b"%x\r\n%s\r\n" % (len(payload), payload)
                writing = time.monotonic()  # before the write: no client can have the event earlier
                self._write(payload)
                sent += 1
                fake._event_sent(self.headers.get("X-Request-ID"), writing)
            if drop_after is not None:
                self._abort(b.rst)
                return
            if chunked:
                self._write(b"0\r\n\r\n")
        except _QUIET_ERRORS:
            self.close_connection = True
        finally:
            fake._stream_ended(self.headers.get("X-Request-ID"))

    # -- modes -------------------------------------------------------------- #

    def _mode_ok(self, b: Behavior, rec: Recorded) -> None:
        status, payload, stream = self._route(rec)
        if stream is not None:
            self._stream(b, *stream)
        else:
            if b.usage_details and isinstance(payload, dict) and isinstance(payload.get("usage"), dict):
                payload = {**payload, "usage": {**payload["usage"], **b.usage_details}}
            self._send_json(status, payload, b.headers)

    def _mode_status(self, b: Behavior, rec: Recorded) -> None:
        body = b.body if b.body is not None else default_error_body(b.status)
        self._send_bytes(b.status, body, "application/json", b.headers)

    def _mode_raw(self, b: Behavior, rec: Recorded) -> None:
        self._send_bytes(b.status, b.body or b"", b.content_type, b.headers)

    def _mode_redirect(self, b: Behavior, rec: Recorded) -> None:
        status = b.status if 300 <= b.status < 400 else 302
        self._send_bytes(status, b"", None, b.headers, defaults=[("Location", b.location)])

    def _mode_hang(self, b: Behavior, rec: Recorded) -> None:
        self.close_connection = True
        self._pause(b.hang_seconds)

    def _mode_close_after_request(self, b: Behavior, rec: Recorded) -> None:
        self.close_connection = True

    def _mode_drop(self, b: Behavior, rec: Recorded) -> None:
        path = urlsplit(rec.path).path.rstrip("/")
        kind = {"/v1/completions": "completion", "/v1/responses": "responses"}.get(path, "chat")
        data = self._parse_json_object(rec.body)
        opts = (data or {}).get("stream_options")
        include_usage = isinstance(opts, dict) and opts.get("include_usage") is True
        self._stream(b, kind, self._model_of(data), include_usage, drop_after=max(0, b.drop_after))

    def _mode_no_event_boundary(self, b: Behavior, rec: Recorded) -> None:
        """200 ``text/event-stream``: ``events_before`` whole events, then ``data: xxx...``
        (``event_bytes`` bytes in all), fast, and never a blank line; chunked, ended cleanly
        unless the client left first."""
        fake = self.server.fake
        fake._stream_started()
        try:
            self._write(self._head_bytes(200, [("Content-Type", "text/event-stream"), ("Transfer-Encoding", "chunked")], b.headers))
            for event in list(self._sse_events("chat", DEFAULT_MODEL, b.events_before, False, {}))[: b.events_before]:
                payload_bytes = b"data: " + event + b"\n\n"
                self._write(b"%x\r\n%s\r\n" % (len(payload_bytes), payload_bytes))
            piece = b"x" * 65536
            left = max(0, b.event_bytes)
            payload = b"data: "[:left]
            while payload:
                self._write(b"%x\r\n%s\r\n" % (len(payload), payload))
                left -= len(payload)
                payload = piece[: min(left, len(piece))]
            self._write(b"0\r\n\r\n")
        except _QUIET_ERRORS:
            self.close_connection = True
        finally:
            fake._stream_ended()

    def _mode_trickle_status(self, b: Behavior, rec: Recorded) -> None:
        """The status line one byte per ``gap`` seconds (then a normal answer, if the
        client is still there)."""
        self.close_connection = True
        status, payload, _ = self._route(rec)
        body = _dumps(payload)
        head = self._head_bytes(status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))], b.headers)
        line_end = head.index(b"\r\n") + 2
        for i in range(line_end):
            if i and not self._pause(b.gap):
                self._abort(False)
                return
            self._write(head[i : i + 1])
        self._write(head[line_end:] + body)

    def _mode_truncated_head(self, b: Behavior, rec: Recorded) -> None:
        """The status line and part of the header block, then the connection closes
        (no blank line ever ends the head)."""
        head = self._head_bytes(b.status, [("Content-Type", "application/json")], b.headers)
        self._write(head[: head.index(b"\r\n\r\n")] + b"\r\nX-Cut-Mid")
        self._abort(b.rst)

    def _mode_empty_200(self, b: Behavior, rec: Recorded) -> None:
        """A 200 JSON answer with no body: ``Content-Length: 0``, or (``empty_framing``
        "close") no length at all and the connection closed at once."""
        if b.empty_framing == "close":
            self.close_connection = True
            self._write(self._head_bytes(200, [("Content-Type", b.content_type), ("Connection", "close")], b.headers))
            self._abort(False)
            return
        self._send_bytes(200, b"", b.content_type, b.headers)

    def _mode_surrogates(self, b: Behavior, rec: Recorded) -> None:
        """Mode "ok" with lone-surrogate (``\\ud800``) and NUL (``\\u0000``) escapes in
        the answer's ``model``, and in a key and the ``model`` beside its ``usage``: valid
        JSON text that does not encode as UTF-8 once parsed, nor fits a text column."""
        status, payload, stream = self._route(rec)
        model = "fake\ud800model\u0000"
        usage = {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12, "\udfff\u0000": "\ud800"}
        if stream is None:
            if isinstance(payload, dict) and status == 200:
                payload = {**payload, "model": model, "usage": {**payload.get("usage", {}), **usage}}
            self._send_json(status, payload, b.headers)
            return
        fake = self.server.fake
        fake._stream_started()
        try:
            self._write(self._head_bytes(200, [("Content-Type", "text/event-stream"), ("Transfer-Encoding", "chunked")], b.headers))
            chunks = [
                {
                    "id": "chatcmpl-fake",
                    "object": "chat.completion.chunk",
                    "model": model,
                    "choices": [{"index": 0, "delta": {"content": "tok\u0000 "}, "finish_reason": None}],
                },
                {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "model": model, "choices": [], "usage": usage},
            ]
            for event in [*map(_dumps, chunks), b"[DONE]"]:
                payload_bytes = b"data: " + event + b"\n\n"
                self._write(b"%x\r\n%s\r\n" % (len(payload_bytes), payload_bytes))
            self._write(b"0\r\n\r\n")
        except _QUIET_ERRORS:
            self.close_connection = True
        finally:
            fake._stream_ended()

    def _mode_drip(self, b: Behavior, rec: Recorded) -> None:
        status, payload, stream = self._route(rec)
        if stream is not None:  # drip always sends the non-streaming JSON body
            non_stream = _dumps({**rec.json(), "stream": False})
            status, payload, _ = self._route(Recorded(rec.method, rec.path, rec.headers, non_stream))
        body = _dumps(payload)
        if not _body_allowed(status) or self.command == "HEAD":
            self._send_json(status, payload, b.headers)
            return
        self._write(self._head_bytes(status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))], b.headers))
        for i in range(len(body)):
            if i and not self._pause(b.gap):
                self._abort(False)
                return
            self._write(body[i : i + 1])


# --------------------------------------------------------------------------- #
# Server
# --------------------------------------------------------------------------- #


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 1024
    block_on_close = False  # never join handler threads in server_close()

    def __init__(self, address: tuple[str, int], fake: FakeUpstream) -> None:
        self.fake = fake
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # Skip HTTPServer.server_bind's getfqdn() (a reverse DNS lookup).
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = port

    def process_request(self, request: Any, client_address: Any) -> None:
        self.fake._conn_opened(request)
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.fake._conn_closed(request)
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.fake._conn_closed(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], (*_QUIET_ERRORS, _ClientGone)):
            return
        super().handle_error(request, client_address)


class FakeUpstream:
    """A real HTTP server on loopback speaking (a subset of) the OpenAI API."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, idle_timeout: float | None = None) -> None:
        self.host = host
        self._requested_port = port
        #: Socket timeout for handler connections (None: idle keep-alive
        #: connections stay open until the client closes them).
        self.idle_timeout = idle_timeout
        self.behavior = Behavior()
        #: Behaviours for the next requests, one each, before :attr:`behavior` applies again.
        self.script: list[Behavior] = []
        self.requests: list[Recorded] = []
        #: When each stream of mode "ok" ended (``time.monotonic()``), by its request's X-Request-ID.
        self.stream_ends: dict[str, float] = {}
        #: When the write of each event of those streams began (``time.monotonic()``), by X-Request-ID.
        self.event_times: dict[str, list[float]] = {}
        #: Responses API answers by id, for GET and DELETE /v1/responses/<id> (unless made with "store": false).
        self.stored_responses: dict[str, dict[str, Any]] = {}
        self._response_count = 0
        self._cond = threading.Condition()
        self._open_connections = 0
        self._active_streams = 0
        self._sockets: set[Any] = set()
        self._stop_event = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._port: int | None = None

    # -- lifecycle ---------------------------------------------------------- #

    def start(self) -> FakeUpstream:
        if self._server is not None:
            return self
        self._stop_event = threading.Event()
        # A restart (after stop()) listens on the same port again: a backend coming back.
        server = _Server((self.host, self._port or self._requested_port), self)
        self._server = server
        self._port = server.server_address[1]
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name=f"fake-upstream:{self._port}", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server = self._server
        if server is None:
            return
        self._server = None
        self._stop_event.set()  # releases hang / drip / stream waits
        server.shutdown()
        with self._cond:
            sockets = list(self._sockets)
        for sock in sockets:  # unblock handlers idling on keep-alive reads
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=1.0)
            self._thread = None
        self.wait_until_no_open_connections(timeout=0.3)

    def __enter__(self) -> FakeUpstream:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("FakeUpstream not started")
        return self._port

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/v1"

    def reset(self) -> None:
        self.behavior = Behavior()
        with self._cond:
            self.script.clear()
            self.stream_ends.clear()
            self.event_times.clear()
            self.requests.clear()
            self.stored_responses.clear()

    # -- counters ----------------------------------------------------------- #

    @property
    def open_connections(self) -> int:
        return self._open_connections

    @property
    def active_streams(self) -> int:
        return self._active_streams

    def _record(self, rec: Recorded) -> Behavior:
        """Record a request; the behaviour it gets (the script's next one, else :attr:`behavior`)."""
        with self._cond:
            self.requests.append(rec)
            self._cond.notify_all()
            return self.script.pop(0) if self.script else self.behavior

    def _store_response(self, answer: dict[str, Any], request: dict[str, Any]) -> None:
        if request.get("store") is not False:
            with self._cond:
                self.stored_responses[answer["id"]] = answer

    def _conn_opened(self, sock: Any) -> None:
        with self._cond:
            self._open_connections += 1
            self._sockets.add(sock)
            self._cond.notify_all()

    def _conn_closed(self, sock: Any) -> None:
        with self._cond:
            if sock in self._sockets:
                self._sockets.discard(sock)
                self._open_connections -= 1
                self._cond.notify_all()

    def _stream_started(self) -> None:
        with self._cond:
            self._active_streams += 1
            self._cond.notify_all()

    def _event_sent(self, request_id: str | None, at: float) -> None:
        if request_id is not None:
            with self._cond:
                self.event_times.setdefault(request_id, []).append(at)

    def _stream_ended(self, request_id: str | None = None) -> None:
        with self._cond:
            self._active_streams -= 1
            if request_id is not None:
                self.stream_ends[request_id] = time.monotonic()
            self._cond.notify_all()

    def _wait(self, predicate: Callable[[], bool], timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(predicate, timeout=timeout)

    def wait_for_requests(self, n: int, timeout: float = 5.0) -> bool:
        """Wait until at least ``n`` requests have been recorded."""
        return self._wait(lambda: len(self.requests) >= n, timeout)

    def wait_until_no_open_connections(self, timeout: float = 5.0) -> bool:
        return self._wait(lambda: self._open_connections == 0, timeout)

    def wait_for_open_connections(self, n: int, timeout: float = 5.0) -> bool:
        return self._wait(lambda: self._open_connections == n, timeout)

    def wait_for_active_streams(self, n: int, timeout: float = 5.0) -> bool:
        """Wait until exactly ``n`` SSE responses are being written."""
        return self._wait(lambda: self._active_streams == n, timeout)


# --------------------------------------------------------------------------- #
# CLI
# --------------------------------------------------------------------------- #


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fakes.upstream", description="Fake OpenAI-compatible upstream (mode ok).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--gap", type=float, default=0.0, help="seconds between SSE events")
    args = parser.parse_args(argv)

    done = threading.Event()

    def _on_signal(signum: int, frame: Any) -> None:
        done.set()

    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)

    fake = FakeUpstream(args.host, args.port)
    fake.behavior = Behavior(gap=args.gap)
    fake.start()
    print(f"fake upstream listening on {fake.base_url}", flush=True)
    try:
        while not done.wait(0.2):
            pass
    finally:
        fake.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
