"""200 concurrent streams, 50 of whose clients disconnect at random points, under real
gunicorn: every call has exactly one usage row; with STREAM_DISCONNECT=drain its tokens are
the upstream's; with abort the upstream stream of a disconnected call ends within 1 s and
its completion tokens are the text relayed until then (issue 15).

"Relayed" is what the gateway wrote to the client's socket: at least what reached the
client's socket up to its reset, at most what the upstream had sent by then (the fake
upstream records when it wrote each event). Events the gateway wrote between the client's
last read and its reset were relayed but never read; under load the gateway may write
several at once."""

from __future__ import annotations

import json
import random
import socket
import struct
import threading
import time
from dataclasses import dataclass

import pytest
from sqlalchemy import create_engine, select

from gateway.store.tables import usage
from gateway.upstream.accounting import CHARS_PER_TOKEN, relayed_text_chars
from tests.e2e.conftest import HOST, KEY
from tests.fakes.upstream import Behavior

pytestmark = pytest.mark.e2e

CALLS, DROPPED, CHUNKS = 200, 50, 30
BODY = json.dumps({"model": "fake-model", "messages": [{"role": "user", "content": "hi"}], "stream": True}).encode()


@dataclass
class Call:
    request_id: str
    drop_after: int | None  # events to read before hanging up; None: read to the end
    received: bytes = b""
    closed_at: float | None = None
    error: str | None = None


def _run(port: int, call: Call, start: threading.Barrier) -> None:
    """One streamed call on a raw socket, so that what reached the client's socket is known
    to the byte: at the hang-up, whatever already arrived is read before the reset."""
    request = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: {HOST}:{port}\r\nX-API-Key: {KEY}\r\n"
        f"Content-Type: application/json\r\nX-Request-ID: {call.request_id}\r\nContent-Length: {len(BODY)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode() + BODY
    start.wait()
    sock = socket.create_connection((HOST, port), timeout=30)
    try:
        sock.sendall(request)
        while True:
            data = sock.recv(65536)
            if not data:
                break
            call.received += data
            if call.drop_after is not None and call.received.count(b"\n\n") > call.drop_after:  # head + events
                sock.setblocking(False)
                try:
                    while more := sock.recv(65536):  # what already arrived counts as relayed
                        call.received += more
                except BlockingIOError:
                    pass
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # hang up now (RST)
                sock.close()
                call.closed_at = time.monotonic()
                break
        if not call.received.startswith(b"HTTP/1.1 200 "):
            call.error = call.received[:80].decode(errors="replace")
    except OSError as error:
        call.error = f"{type(error).__name__}: {error}"
    finally:
        sock.close()


@pytest.mark.parametrize("policy", ["abort", "drain"])
def test_every_stream_is_billed_once_and_as_the_policy_says(gateway_server, upstream, policy) -> None:
    upstream.behavior = Behavior(chunks=CHUNKS, gap=0.02)
    server = gateway_server(
        STREAM_DISCONNECT=policy,
        RATE_LIMIT_GENERAL="100000 per minute",
        RATE_LIMIT_AI="100000 per minute",
        GATEWAY_WORKER_CONNECTIONS="1000",
    )
    rng = random.Random(15)
    dropped = set(rng.sample(range(CALLS), DROPPED))
    calls = [Call(f"disc-{policy}-{i}", rng.randint(1, CHUNKS // 2) if i in dropped else None) for i in range(CALLS)]
    start = threading.Barrier(CALLS)
    threads = [threading.Thread(target=_run, args=(server.port, call, start)) for call in calls]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert [call.error for call in calls if call.error] == []
    assert upstream.wait_for_active_streams(0, timeout=10)
    assert server.stop() == 0  # graceful: each worker writes its queued usage rows
    engine = create_engine(f"sqlite:///{server.workdir / 'instance' / 'gateway.db'}")
    with engine.connect() as conn:
        rows = conn.execute(select(usage.c.request_id, usage.c.completion_tokens, usage.c.tokens_estimated)).all()
    engine.dispose()
    by_id: dict[str, list[tuple[int, bool]]] = {}
    for request_id, completion, estimated in rows:
        by_id.setdefault(request_id, []).append((completion, estimated))
    assert sorted(by_id) == sorted(call.request_id for call in calls)
    assert all(len(found) == 1 for found in by_id.values())  # exactly one row per call
    cut = 0
    for call in calls:
        ((completion, estimated),) = by_id[call.request_id]
        if call.drop_after is None or policy == "drain" or not estimated:
            # the upstream's own figures (a hang-up that reached the gateway only after the
            # stream's end leaves a completed stream)
            assert (completion, estimated) == (CHUNKS, False), call
            continue
        cut += 1
        # abort: the upstream stream ended within 1 s of the hang-up ...
        assert call.closed_at is not None
        assert upstream.stream_ends[call.request_id] - call.closed_at <= 1.0, call.request_id
        # ... and the row bills the text relayed: at least what reached the client's socket, at
        # most what the upstream had sent when the client reset (the gateway cannot relay more;
        # events written between the client's last read and its reset were relayed, never read)
        received = relayed_text_chars(call.received)
        produced = sum(1 for at in upstream.event_times[call.request_id] if at <= call.closed_at)
        produced_text = sum(len(f"tok{i} ") for i in range(produced))
        low, high = -(-received // CHARS_PER_TOKEN), -(-produced_text // CHARS_PER_TOKEN)
        assert low <= completion <= high, (call.request_id, completion, low, high)
    if policy == "abort":
        assert cut >= DROPPED * 0.8  # the hang-ups came mid-stream
