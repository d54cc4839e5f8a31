"""A changed backends file applied with SIGHUP while clients are calling (non-streamed calls and
streams of about 1.5 s): no call fails, no stream is cut, and the new routing is in effect
once gunicorn's old workers have gone (two gevent workers on Redis quotas, as in
test_e2e_backends.py)."""

from __future__ import annotations

import signal
import threading
import time

import pytest

from tests.e2e.conftest import AUTH, EventStream, GatewayServer, request
from tests.e2e.test_e2e_backends import CHAT, WORKERS, backend, body, data_of, start, texts, two
from tests.fakes.upstream import Behavior

__all__ = ["two"]  # the fixture, shared

STREAM_GAP = 0.15  # x 10 events: streams of about 1.5 s


def calls(server: GatewayServer, stop: threading.Event, outcomes: list[tuple[int, str | None]]) -> None:
    while not stop.is_set():
        status, headers, _ = request(server.url, "POST", CHAT, body("shared"), headers=AUTH, timeout=15)
        outcomes.append((status, headers.get("X-Gateway-Backend")))


def streams(server: GatewayServer, stop: threading.Event, outcomes: list[tuple[float, float, int, list]]) -> None:
    while not stop.is_set():
        stream = EventStream(server.url, CHAT, body("shared", stream=True), timeout=15)
        try:
            events = data_of(stream.read_all()) if stream.status == 200 else []
        finally:
            stream.close()
        outcomes.append((stream.sent_at, time.monotonic(), stream.status, events))


@pytest.mark.timeout(90)
def test_sighup_with_a_changed_file_under_load_drops_nothing_and_reroutes(gateway_server, redis_prefix, tmp_path, two) -> None:
    a, b = two
    a.behavior = b.behavior = Behavior(chunks=10, gap=STREAM_GAP)
    path = tmp_path / "gateway.yaml"
    backends = backend("a", a) + backend("b", b)
    server = start(gateway_server, redis_prefix, path, backends, "  - {name: shared, deployments: [{backend: a}]}\n")
    stop = threading.Event()
    call_outcomes: list[tuple[int, str | None]] = []
    stream_outcomes: list[tuple[float, float, int, list]] = []
    threads = [threading.Thread(target=calls, args=(server, stop, call_outcomes)) for _ in range(3)]
    threads += [threading.Thread(target=streams, args=(server, stop, stream_outcomes)) for _ in range(3)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(2.0)
        # The model now routes to b, and the operator shows which backend answered.
        path.write_text(
            f"backends:\n{backends}models:\n  - {{name: shared, deployments: [{{backend: b}}]}}\n"
            "routing:\n  expose_backend_header: true\n"
        )
        hup = time.monotonic()
        server.signal(signal.SIGHUP)
        assert server.wait_for_log(lambda log: "backends configuration reloaded from" in log, 10), server.log()
        assert server.wait_for_log(lambda log: log.count("Booting worker with pid") >= 2 * WORKERS, 15), server.log()
        assert server.wait_for_log(lambda log: log.count("Worker exiting") >= WORKERS, 20), server.log()
        time.sleep(1.0)  # more load on the new workers alone
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=20)

    assert call_outcomes and {status for status, _ in call_outcomes} == {200}, call_outcomes
    assert stream_outcomes
    for _, _, status, events in stream_outcomes:
        assert status == 200 and events and events[-1] == "[DONE]", (status, events[-2:])
        assert texts(events) == [f"tok{i} " for i in range(10)] + [""]  # whole, nothing cut or repeated
    assert any(began < hup < ended for began, ended, _, _ in stream_outcomes), "no stream ran across the reload"
    assert {backend for _, backend in call_outcomes} == {None, "b"}  # before: hidden; after: b

    # Only the new routing now: b serves the model, a gets nothing.
    a_before, b_before = len(a.requests), len(b.requests)
    for _ in range(10):
        status, headers, _ = request(server.url, "POST", CHAT, body("shared"), headers=AUTH, timeout=15)
        assert status == 200 and headers["X-Gateway-Backend"] == "b"
    assert len(a.requests) == a_before and len(b.requests) == b_before + 10
    assert a_before > 0  # the old file's routing did send a traffic
    assert "Traceback" not in server.log()
