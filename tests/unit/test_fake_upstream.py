"""Tests for the fake OpenAI-compatible upstream (tests/fakes/upstream.py)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from tests.fakes.upstream import Behavior, FakeUpstream

pytestmark = pytest.mark.timeout(10)

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def fake():
    server = FakeUpstream().start()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def _reset(fake):
    fake.reset()
    yield
    fake.reset()


def read_events(resp: requests.Response) -> list[tuple[float, str]]:
    """Read an SSE body as it arrives: [(arrival monotonic time, data payload)]."""
    events: list[tuple[float, str]] = []
    buf = b""
    for piece in resp.iter_content(chunk_size=None):
        buf += piece
        while b"\n\n" in buf:
            raw, buf = buf.split(b"\n\n", 1)
            line = raw.decode()
            assert line.startswith("data: "), line
            events.append((time.monotonic(), line[len("data: ") :]))
    assert buf == b""
    return events


# --------------------------------------------------------------------------- #
# mode "ok"
# --------------------------------------------------------------------------- #


def test_base_url_and_port(fake):
    assert fake.base_url == f"http://127.0.0.1:{fake.port}/v1"
    assert fake.port > 0


def test_chat_completion(fake):
    r = requests.post(f"{fake.base_url}/chat/completions", json={"model": "gpt-x", "messages": []}, timeout=5)
    assert r.status_code == 200
    assert r.headers["Content-Type"] == "application/json"
    body = r.json()
    assert body["id"] == "chatcmpl-fake"
    assert body["object"] == "chat.completion"
    assert isinstance(body["created"], int)
    assert body["model"] == "gpt-x"
    assert body["choices"] == [
        {"index": 0, "message": {"role": "assistant", "content": "Hello from the fake upstream"}, "finish_reason": "stop"}
    ]
    assert body["usage"] == {"prompt_tokens": 9, "completion_tokens": 6, "total_tokens": 15}


def test_completion_default_model(fake):
    r = requests.post(f"{fake.base_url}/completions", json={"prompt": "hi"}, timeout=5)
    assert r.status_code == 200
    body = r.json()
    assert body["id"] == "cmpl-fake"
    assert body["object"] == "text_completion"
    assert body["model"] == "fake-model"
    assert body["choices"] == [{"text": " fake completion", "index": 0, "logprobs": None, "finish_reason": "stop"}]
    assert body["usage"] == {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}


@pytest.mark.parametrize("inp, count", [("one", 1), (["a", "b", "c"], 3), ([1, 2, 3], 1)])
def test_embeddings(fake, inp, count):
    r = requests.post(f"{fake.base_url}/embeddings", json={"model": "emb", "input": inp}, timeout=5)
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "list"
    assert body["model"] == "emb"
    assert [d["index"] for d in body["data"]] == list(range(count))
    assert all(d == {"object": "embedding", "index": d["index"], "embedding": [0.1, 0.2, 0.3]} for d in body["data"])
    assert body["usage"] == {"prompt_tokens": 4, "total_tokens": 4}


def test_images(fake):
    r = requests.post(f"{fake.base_url}/images/generations", json={"prompt": "a cat"}, timeout=5)
    assert r.status_code == 200
    body = r.json()
    assert isinstance(body["created"], int)
    assert body["data"] == [{"url": "http://127.0.0.1/fake.png"}]


def test_models(fake):
    r = requests.get(f"{fake.base_url}/models", timeout=5)
    assert r.status_code == 200
    assert r.json() == {
        "object": "list",
        "data": [
            {"id": "fake-model", "object": "model", "created": 0, "owned_by": "fake"},
            {"id": "gpt-3.5-turbo", "object": "model", "created": 0, "owned_by": "fake"},
        ],
    }
    r = requests.get(f"{fake.base_url}/models/gpt-3.5-turbo", timeout=5)
    assert r.status_code == 200
    assert r.json() == {"id": "gpt-3.5-turbo", "object": "model", "created": 0, "owned_by": "fake"}
    r = requests.get(f"{fake.base_url}/models/nope", timeout=5)
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "model_not_found"


def test_unknown_path(fake):
    r = requests.get(f"http://127.0.0.1:{fake.port}/nowhere", timeout=5)
    assert r.status_code == 404
    assert r.json() == {"error": {"message": "Unknown path", "type": "invalid_request_error", "param": None, "code": "not_found"}}


def test_invalid_json(fake):
    r = requests.post(f"{fake.base_url}/chat/completions", data=b"{not json", headers={"Content-Type": "application/json"}, timeout=5)
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error"
    assert set(err) == {"message", "type", "param", "code"}


# --------------------------------------------------------------------------- #
# streaming
# --------------------------------------------------------------------------- #


def test_chat_stream(fake):
    with requests.post(
        f"{fake.base_url}/chat/completions",
        json={"model": "m1", "messages": [], "stream": True},
        stream=True,
        timeout=5,
    ) as r:
        assert r.status_code == 200
        assert r.headers["Content-Type"] == "text/event-stream"
        assert r.headers["Cache-Control"] == "no-cache"
        assert r.headers["Transfer-Encoding"] == "chunked"
        events = [data for _, data in read_events(r)]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert len(chunks) == 6  # 5 content + final
    for i, c in enumerate(chunks[:5]):
        assert c["object"] == "chat.completion.chunk"
        assert c["id"] == "chatcmpl-fake"
        assert c["model"] == "m1"
        assert c["choices"][0]["delta"]["content"] == f"tok{i} "
        assert c["choices"][0]["finish_reason"] is None
        assert ("role" in c["choices"][0]["delta"]) == (i == 0)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-1]["choices"] == [{"index": 0, "delta": {}, "finish_reason": "stop"}]
    assert all("usage" not in c for c in chunks)


def test_stream_usage_only_with_include_usage(fake):
    fake.behavior = Behavior(chunks=3)
    with requests.post(
        f"{fake.base_url}/chat/completions",
        json={"messages": [], "stream": True, "stream_options": {"include_usage": True}},
        stream=True,
        timeout=5,
    ) as r:
        events = [data for _, data in read_events(r)]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert len(chunks) == 5  # 3 content + final + usage
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    usage_chunk = chunks[-1]
    assert usage_chunk["choices"] == []
    assert set(usage_chunk["usage"]) == {"prompt_tokens", "completion_tokens", "total_tokens"}
    assert all("usage" not in c for c in chunks[:-1])


def test_completion_stream(fake):
    fake.behavior = Behavior(chunks=2)
    with requests.post(f"{fake.base_url}/completions", json={"prompt": "x", "stream": True}, stream=True, timeout=5) as r:
        events = [data for _, data in read_events(r)]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert [c["choices"][0]["text"] for c in chunks] == ["tok0 ", "tok1 ", ""]
    assert all(c["object"] == "text_completion" and c["id"] == "cmpl-fake" for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert chunks[0]["choices"][0]["logprobs"] is None


def test_stream_gap_is_honoured(fake):
    fake.behavior = Behavior(gap=0.1, chunks=5)
    with requests.post(f"{fake.base_url}/chat/completions", json={"messages": [], "stream": True}, stream=True, timeout=5) as r:
        events = read_events(r)
    assert len(events) == 7
    first = events[0][0]
    last_content = events[4][0]
    assert last_content - first >= 0.3
    assert events[-1][0] - first >= 0.5
    assert events[-1][1] == "[DONE]"


def test_stream_framing_close(fake):
    fake.behavior = Behavior(framing="close", chunks=3)
    with requests.post(f"{fake.base_url}/chat/completions", json={"messages": [], "stream": True}, stream=True, timeout=5) as r:
        assert r.status_code == 200
        assert "Content-Length" not in r.headers
        assert "Transfer-Encoding" not in r.headers
        assert r.headers["Connection"] == "close"
        events = [data for _, data in read_events(r)]
    assert len(events) == 5
    assert events[-1] == "[DONE]"
    assert fake.wait_until_no_open_connections(2)


@pytest.mark.parametrize("rst", [False, True])
def test_drop(fake, rst):
    fake.behavior = Behavior(mode="drop", drop_after=2, rst=rst)
    received = b""
    with pytest.raises((requests.exceptions.ChunkedEncodingError, requests.exceptions.ConnectionError)):
        with requests.post(f"{fake.base_url}/chat/completions", json={"messages": [], "stream": True}, stream=True, timeout=5) as r:
            assert r.status_code == 200
            for piece in r.iter_content(chunk_size=None):
                received += piece
    assert b"[DONE]" not in received
    if not rst:
        assert received.count(b"data: ") == 2
    assert fake.wait_for_active_streams(0, 2)


def test_drop_with_framing_close_ends_without_done(fake):
    fake.behavior = Behavior(mode="drop", drop_after=3, framing="close")
    with requests.post(f"{fake.base_url}/chat/completions", json={"messages": [], "stream": True}, stream=True, timeout=5) as r:
        body = r.content
    assert body.count(b"data: ") == 3
    assert b"[DONE]" not in body


# --------------------------------------------------------------------------- #
# fault modes
# --------------------------------------------------------------------------- #


def test_status_429_with_retry_after(fake):
    fake.behavior = Behavior(mode="status", status=429, headers={"Retry-After": "7"})
    r = requests.post(f"{fake.base_url}/chat/completions", json={"messages": []}, timeout=5)
    assert r.status_code == 429
    assert r.headers["Retry-After"] == "7"
    assert r.headers["Content-Type"] == "application/json"
    err = r.json()["error"]
    assert err["message"] == "fake upstream error 429"
    assert set(err) == {"message", "type", "param", "code"}


def test_status_custom_body(fake):
    fake.behavior = Behavior(mode="status", status=500, body=b'{"error":"custom"}')
    r = requests.get(f"{fake.base_url}/models", timeout=5)
    assert r.status_code == 500
    assert r.content == b'{"error":"custom"}'


def test_raw_html(fake):
    page = b"<html><body>502 Bad Gateway</body></html>"
    fake.behavior = Behavior(mode="raw", status=502, body=page, content_type="text/html")
    r = requests.post(f"{fake.base_url}/chat/completions", json={}, timeout=5)
    assert r.status_code == 502
    assert r.headers["Content-Type"] == "text/html"
    assert r.content == page
    fake.behavior = Behavior(mode="raw", body=b"plain", content_type="text/plain")
    r = requests.get(f"{fake.base_url}/models", timeout=5)
    assert (r.status_code, r.content) == (200, b"plain")


def test_redirect(fake):
    fake.behavior = Behavior(mode="redirect", location="http://127.0.0.1:9/elsewhere")
    r = requests.post(f"{fake.base_url}/chat/completions", json={}, allow_redirects=False, timeout=5)
    assert r.status_code == 302
    assert r.headers["Location"] == "http://127.0.0.1:9/elsewhere"
    assert r.content == b""


def test_hang_times_out_client(fake):
    fake.behavior = Behavior(mode="hang", hang_seconds=5)
    t0 = time.monotonic()
    with pytest.raises(requests.exceptions.ReadTimeout):
        requests.post(f"{fake.base_url}/chat/completions", json={}, timeout=0.5)
    assert time.monotonic() - t0 < 2
    assert fake.wait_for_requests(1, 1)
    # the hanging handler notices the client went away and releases the connection
    assert fake.wait_until_no_open_connections(2)


def test_hang_expires(fake):
    fake.behavior = Behavior(mode="hang", hang_seconds=0.2)
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(f"{fake.base_url}/models", timeout=3)


def test_close_after_request(fake):
    fake.behavior = Behavior(mode="close_after_request")
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.post(f"{fake.base_url}/chat/completions", json={"a": 1}, timeout=3)
    assert fake.wait_for_requests(1, 1)
    assert fake.requests[0].json() == {"a": 1}


def test_drip(fake):
    fake.behavior = Behavior(mode="drip", gap=0.01)
    t0 = time.monotonic()
    r = requests.post(f"{fake.base_url}/images/generations", json={"prompt": "p"}, timeout=5)
    elapsed = time.monotonic() - t0
    assert r.status_code == 200
    assert int(r.headers["Content-Length"]) == len(r.content)
    assert r.json()["data"] == [{"url": "http://127.0.0.1/fake.png"}]
    assert elapsed >= (len(r.content) - 1) * 0.01 * 0.9


def test_drip_client_gone_stops_early(fake):
    fake.behavior = Behavior(mode="drip", gap=0.5)
    # a read timeout while reading the body surfaces as ConnectionError in requests
    with pytest.raises((requests.exceptions.ReadTimeout, requests.exceptions.ConnectionError)):
        requests.get(f"{fake.base_url}/models", timeout=(2, 0.3))
    assert fake.wait_for_requests(1, 1)
    assert fake.wait_until_no_open_connections(2)


def test_extra_headers_in_every_mode(fake):
    extra = {
        "Set-Cookie": "a=b",
        "X-Foo": "bar",
        "Server": "evil/1.0",
        "Keep-Alive": "timeout=5",
        "Access-Control-Allow-Origin": "*",
    }
    for behavior, stream in [
        (Behavior(headers=extra), False),
        (Behavior(headers=extra), True),
        (Behavior(mode="status", status=503, headers=extra), False),
        (Behavior(mode="raw", body=b"x", headers=extra), False),
        (Behavior(mode="redirect", headers=extra), False),
    ]:
        fake.behavior = behavior
        r = requests.post(
            f"{fake.base_url}/chat/completions",
            json={"messages": [], "stream": stream},
            allow_redirects=False,
            timeout=5,
        )
        for name, value in extra.items():
            assert r.headers[name] == value, (behavior.mode, name)
        # the override replaces the default Server header instead of duplicating it
        assert r.raw.headers.getlist("Server") == ["evil/1.0"]


def test_connection_header_passthrough(fake):
    fake.behavior = Behavior(headers={"Connection": "X-Foo", "X-Foo": "1"})
    with requests.Session() as s:
        r = s.get(f"{fake.base_url}/models", timeout=5)
        assert r.headers["Connection"] == "X-Foo"
        assert r.headers["X-Foo"] == "1"
        assert s.get(f"{fake.base_url}/models", timeout=5).status_code == 200


# --------------------------------------------------------------------------- #
# recording, counters, lifecycle
# --------------------------------------------------------------------------- #


def test_recorded_requests(fake):
    requests.post(
        f"{fake.base_url}/chat/completions?x=1",
        json={"model": "m", "messages": [{"role": "user", "content": "hi"}]},
        headers={"Authorization": "Bearer sk-test", "X-Custom": "v"},
        timeout=5,
    )
    requests.get(f"{fake.base_url}/models", timeout=5)
    assert fake.wait_for_requests(2, 1)
    first, second = fake.requests
    assert first.method == "POST"
    assert first.path == "/v1/chat/completions?x=1"
    assert first.headers["authorization"] == "Bearer sk-test"
    assert first.headers["x-custom"] == "v"
    assert first.headers["content-type"] == "application/json"
    assert all(k == k.lower() for k in first.headers)
    assert first.json() == {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    assert (second.method, second.path, second.body) == ("GET", "/v1/models", b"")


def test_chunked_request_body(fake):
    def gen():
        yield b'{"model": "chunky", '
        yield b'"messages": []}'

    r = requests.post(f"{fake.base_url}/chat/completions", data=gen(), headers={"Content-Type": "application/json"}, timeout=5)
    assert r.status_code == 200
    assert r.json()["model"] == "chunky"
    rec = fake.requests[-1]
    assert rec.headers["transfer-encoding"] == "chunked"
    assert rec.body == b'{"model": "chunky", "messages": []}'


def test_reset(fake):
    fake.behavior = Behavior(mode="status", status=500)
    requests.get(f"{fake.base_url}/models", timeout=5)
    assert fake.requests
    fake.reset()
    assert fake.behavior == Behavior()
    assert fake.requests == []
    assert not fake.wait_for_requests(1, 0.05)


def test_keepalive_connection_counted(fake):
    assert fake.wait_until_no_open_connections(2)
    with requests.Session() as s:
        for _ in range(3):
            assert s.get(f"{fake.base_url}/models", timeout=5).status_code == 200
        assert fake.open_connections == 1  # one reused keep-alive connection
    assert fake.wait_until_no_open_connections(2)


def test_active_streams_released_after_client_closes(fake):
    fake.behavior = Behavior(gap=0.05, chunks=200)
    r = requests.post(f"{fake.base_url}/chat/completions", json={"messages": [], "stream": True}, stream=True, timeout=5)
    assert fake.wait_for_active_streams(1, 2)
    first = next(r.iter_content(chunk_size=None))
    assert first.startswith(b"data: ")
    r.close()
    assert fake.wait_for_active_streams(0, 2)
    assert fake.wait_until_no_open_connections(2)


def test_many_concurrent_streams(fake):
    fake.behavior = Behavior(gap=0.05, chunks=5)
    n = 200
    gate = threading.Barrier(n)

    def one(_):
        gate.wait()
        with requests.post(f"{fake.base_url}/chat/completions", json={"messages": [], "stream": True}, stream=True, timeout=8) as r:
            return [data for _, data in read_events(r)]

    with ThreadPoolExecutor(max_workers=n) as pool:
        results = list(pool.map(one, range(n)))
    assert all(len(events) == 7 and events[-1] == "[DONE]" for events in results)
    assert fake.wait_for_requests(n, 1)
    assert fake.wait_for_active_streams(0, 2)


def test_stop_is_quick_while_request_hangs():
    server = FakeUpstream().start()
    server.behavior = Behavior(mode="hang", hang_seconds=30)
    errors: list[BaseException] = []

    def client():
        try:
            requests.get(f"{server.base_url}/models", timeout=10)
        except BaseException as exc:  # noqa: BLE001 - recorded for the assertion below
            errors.append(exc)

    t = threading.Thread(target=client)
    t.start()
    assert server.wait_for_requests(1, 2)
    # an idle keep-alive connection must not block stop() either
    idle = socket.create_connection(("127.0.0.1", server.port))
    t0 = time.monotonic()
    server.stop()
    assert time.monotonic() - t0 < 1.0
    t.join(3)
    assert not t.is_alive()
    assert errors and isinstance(errors[0], requests.exceptions.ConnectionError)
    idle.close()
    assert server.open_connections == 0
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(f"http://127.0.0.1:{server.port}/v1/models", timeout=1)


def test_context_manager():
    with FakeUpstream() as server:
        assert requests.get(f"{server.base_url}/models", timeout=5).status_code == 200


def test_cli_runs_and_exits_cleanly_on_sigterm():
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.fakes.upstream", "--host", "127.0.0.1", "--port", "0", "--gap", "0.01"],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline().strip()
        assert line.startswith("fake upstream listening on http://127.0.0.1:"), line
        assert line.endswith("/v1")
        base_url = line.rsplit(" ", 1)[1]
        r = requests.post(f"{base_url}/chat/completions", json={"messages": [], "stream": True}, timeout=5)
        assert r.text.endswith("data: [DONE]\n\n")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(5) == 0
        assert proc.stderr.read() == ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()


# --------------------------------------------------------------------------- #
# hostile modes (issue 11)
# --------------------------------------------------------------------------- #


def _raw_exchange(
    fake, path: str = "/v1/chat/completions", body: bytes = b'{"model": "m"}', timeout: float = 5.0
) -> tuple[bytes, list[float]]:
    """Send one request on a plain socket; return every byte until the fake closes,
    and when each piece arrived (the fake's framing is what is under test here)."""
    with socket.create_connection(("127.0.0.1", fake.port), timeout=timeout) as sock:
        sock.sendall(
            b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (path.encode(), len(body), body)
        )
        pieces: list[bytes] = []
        times: list[float] = []
        while piece := sock.recv(65536):
            pieces.append(piece)
            times.append(time.monotonic())
    return b"".join(pieces), times


def test_no_event_boundary_sends_one_endless_event_fast(fake):
    fake.behavior = Behavior(mode="no_event_boundary", event_bytes=3 * 1024 * 1024 + 5)
    t0 = time.monotonic()
    r = requests.post(f"{fake.base_url}/chat/completions", json={"stream": True}, stream=True, timeout=5)
    assert r.status_code == 200 and r.headers["Content-Type"] == "text/event-stream"
    body = r.raw.read()
    assert time.monotonic() - t0 < 5
    assert body.startswith(b"data: x") and len(body) == 3 * 1024 * 1024 + 5
    assert b"\n" not in body and b"\r" not in body


def test_no_event_boundary_after_whole_events(fake):
    fake.behavior = Behavior(mode="no_event_boundary", event_bytes=1000, events_before=2)
    r = requests.post(f"{fake.base_url}/chat/completions", json={"stream": True}, timeout=5)
    *events, endless = r.content.split(b"\n\n")
    assert len(events) == 2 and all(json.loads(e[len(b"data: ") :])["object"] == "chat.completion.chunk" for e in events)
    assert endless == b"data: " + b"x" * 994


def test_trickle_status_sends_the_status_line_a_byte_at_a_time(fake):
    fake.behavior = Behavior(mode="trickle_status", gap=0.05)
    raw, times = _raw_exchange(fake)
    status_line, _, rest = raw.partition(b"\r\n")
    assert status_line == b"HTTP/1.1 200 OK"
    assert len(times) >= len(status_line)  # one piece per byte of the status line at least
    assert times[len(status_line) - 1] - times[0] >= (len(status_line) - 1) * 0.05 * 0.8
    head, _, body = rest.partition(b"\r\n\r\n")
    assert json.loads(body)["object"] == "chat.completion"


def test_trickle_status_stops_when_the_client_leaves(fake):
    fake.behavior = Behavior(mode="trickle_status", gap=0.5)
    with socket.create_connection(("127.0.0.1", fake.port), timeout=5) as sock:
        sock.sendall(b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n")
        assert sock.recv(100) == b"H"
    assert fake.wait_until_no_open_connections(3)


@pytest.mark.parametrize("rst", [False, True])
def test_truncated_head_closes_inside_the_header_block(fake, rst):
    fake.behavior = Behavior(mode="truncated_head", rst=rst)
    try:
        raw, _ = _raw_exchange(fake)
    except ConnectionResetError:
        assert rst
        return
    assert raw.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"\r\n\r\n" not in raw and raw.endswith(b"X-Cut-Mid")


@pytest.mark.parametrize("framing", ["length", "close"])
def test_empty_200(fake, framing):
    fake.behavior = Behavior(mode="empty_200", empty_framing=framing)
    raw, _ = _raw_exchange(fake)
    head, sep, body = raw.partition(b"\r\n\r\n")
    assert sep and body == b""
    assert head.startswith(b"HTTP/1.1 200 OK") and b"Content-Type: application/json" in head
    assert (b"Content-Length: 0" in head) == (framing == "length")


def test_surrogates_in_a_json_answer(fake):
    fake.behavior = Behavior(mode="surrogates")
    r = requests.post(f"{fake.base_url}/chat/completions", json={"model": "m"}, timeout=5)
    assert r.status_code == 200
    assert b'"model":"fake\\ud800model\\u0000"' in r.content
    answer = r.json()  # valid JSON ...
    assert answer["usage"]["total_tokens"] == 12 and answer["choices"]
    with pytest.raises(UnicodeEncodeError):  # ... whose text is not valid UTF-8
        answer["model"].encode()
    assert "\x00" in answer["model"] and "\x00" in next(k for k in answer["usage"] if k.startswith("\udfff"))


def test_surrogates_in_a_stream(fake):
    fake.behavior = Behavior(mode="surrogates")
    r = requests.post(f"{fake.base_url}/chat/completions", json={"model": "m", "stream": True}, timeout=5)
    assert r.headers["Content-Type"] == "text/event-stream"
    events = [block for block in r.content.split(b"\n\n") if block]
    assert events[-1] == b"data: [DONE]"
    usage_chunk = json.loads(events[-2][len(b"data: ") :])
    assert usage_chunk["choices"] == [] and usage_chunk["usage"]["prompt_tokens"] == 5
    assert usage_chunk["model"] == "fake\ud800model\x00"


# --------------------------------------------------------------------------- #
# the Responses API
# --------------------------------------------------------------------------- #


def test_responses_are_created_stored_retrieved_and_deleted(fake):
    created = requests.post(f"{fake.base_url}/responses", json={"model": "m", "input": "hi"}, timeout=5).json()
    assert created["object"] == "response" and created["model"] == "m" and created["status"] == "completed"
    assert created["usage"]["input_tokens"] == 11 and created["usage"]["total_tokens"] == 17
    item = f"{fake.base_url}/responses/{created['id']}"
    assert requests.get(item, timeout=5).json() == created
    assert requests.delete(item, timeout=5).json() == {"id": created["id"], "object": "response", "deleted": True}
    assert requests.get(item, timeout=5).status_code == 404
    assert requests.delete(item, timeout=5).status_code == 404
    unstored = requests.post(f"{fake.base_url}/responses", json={"model": "m", "input": "hi", "store": False}, timeout=5).json()
    assert unstored["id"] not in fake.stored_responses


def test_a_responses_stream_is_named_events_ending_with_the_usage(fake):
    fake.behavior = Behavior(chunks=3)
    body = requests.post(f"{fake.base_url}/responses", json={"model": "m", "input": "hi", "stream": True}, timeout=5).content
    events = [block.split(b"\n") for block in body.split(b"\n\n") if block]
    kinds = [lines[0].removeprefix(b"event: ").decode() for lines in events]
    assert kinds == ["response.created", *["response.output_text.delta"] * 3, "response.completed"]
    data = [json.loads(lines[1].removeprefix(b"data: ")) for lines in events]
    assert [d["type"] for d in data] == kinds and [d["sequence_number"] for d in data] == list(range(5))
    assert data[0]["response"]["usage"] is None
    completed = data[-1]["response"]
    assert completed["usage"]["output_tokens"] == 3 and completed["usage"]["total_tokens"] == 14
    assert completed["output"][0]["content"][0]["text"] == "tok0 tok1 tok2 "
    assert fake.stored_responses[completed["id"]] == completed
