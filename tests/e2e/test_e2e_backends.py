"""Several backends behind one gateway under real gunicorn (the shipped gunicorn.conf.py): two
gevent workers on Redis quotas, as in production, so every bound on what a backend receives is
per worker (routing state is per worker process: each learns on its own that a backend died).

Fake backends are FakeUpstreams on loopback in this process; the config file is the test's own.
The issue's acceptance list: a backend killed under load costs no client an error and gets one
trial per cooldown, then traffic again once back; Retry-After is honoured; streams are retried
only before their first event; the retry budget bounds an outage's attempts. (SIGHUP under load:
test_e2e_backends_sighup.py.)
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REDIS_URL
from tests.e2e.conftest import AUTH, HOST, JSON_AUTH, EventStream, GatewayServer, error_envelope, request
from tests.fakes.upstream import Behavior, FakeUpstream

WORKERS = 2
COOLDOWN = 1.0  # circuit_breaker.cooldown, seconds
CHAT = "/v1/chat/completions"
PLENTY = "100000 per minute"  # the gateway's own quotas are not under test
ROUTING = f"""  max_attempts: 3
  backoff: {{base: 0.01, max: 0.05}}
  circuit_breaker: {{failures: 3, cooldown: {COOLDOWN}}}
"""


@pytest.fixture
def two() -> Iterator[tuple[FakeUpstream, FakeUpstream]]:
    a, b = FakeUpstream().start(), FakeUpstream().start()
    yield a, b
    a.stop()
    b.stop()


def backend(name: str, fake: FakeUpstream, total: float = 10.0) -> str:
    return f"  - {{name: {name}, url: '{fake.base_url}', timeouts: {{connect: 1, first_byte: 5, idle: 5, total: {total}}}}}\n"


def start(gateway_server, redis_prefix: str, path: Path, backends: str, models: str, routing: str = ROUTING) -> GatewayServer:
    """The config file written, then gunicorn with WORKERS workers on it (both booted)."""
    path.write_text(f"backends:\n{backends}models:\n{models}routing:\n{routing}")
    server: GatewayServer = gateway_server(
        GATEWAY_CONFIG=str(path),
        GATEWAY_WORKERS=str(WORKERS),
        RATE_LIMIT_STORAGE_URI=REDIS_URL,
        RATE_LIMIT_KEY_PREFIX=redis_prefix,
        RATE_LIMIT_GENERAL=PLENTY,
        RATE_LIMIT_AI=PLENTY,
        MAX_CONNECTIONS_PER_ADDRESS="0",
    )
    assert server.wait_for_log(lambda log: log.count("Booting worker with pid") >= WORKERS, 10), server.log()
    return server


def body(model: str, stream: bool = False) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": stream}


def chat(server: GatewayServer, model: str) -> tuple[int, http.client.HTTPMessage, bytes]:
    return request(server.url, "POST", CHAT, body(model), headers=AUTH, timeout=15)


def hammer(server: GatewayServer, model: str, until: float, results: list[tuple[float, object]]) -> None:
    """Non-streamed calls on one kept-alive connection until ``until``: (time, status or error)."""
    payload = json.dumps(body(model)).encode()
    conn: http.client.HTTPConnection | None = None
    while time.monotonic() < until:
        try:
            if conn is None:
                conn = http.client.HTTPConnection(HOST, server.port, timeout=15)
            conn.request("POST", CHAT, body=payload, headers=JSON_AUTH)
            response = conn.getresponse()
            response.read()
            results.append((time.monotonic(), response.status))
        except (OSError, http.client.HTTPException) as error:
            results.append((time.monotonic(), repr(error)))
            if conn is not None:
                conn.close()
            conn = None
    if conn is not None:
        conn.close()


def at(t0: float, offset: float) -> None:
    time.sleep(max(0.0, t0 + offset - time.monotonic()))


@pytest.mark.timeout(60)
def test_a_backend_killed_under_load_costs_no_error_gets_one_trial_per_cooldown_and_traffic_once_back(
    gateway_server, redis_prefix, tmp_path, two
) -> None:
    a, b = two
    models = "  - {name: shared, deployments: [{backend: a}, {backend: b}]}\n"
    server = start(gateway_server, redis_prefix, tmp_path / "gateway.yaml", backend("a", a) + backend("b", b), models)
    results: list[tuple[float, object]] = []
    t0 = time.monotonic()
    clients = [threading.Thread(target=hammer, args=(server, "shared", t0 + 10.0, results)) for _ in range(20)]
    for client in clients:
        client.start()
    try:
        # Killed (connections refused from now on) about 3 s in, just as a slice of the retry
        # budget's window begins (whole seconds of the monotonic clock, which the workers share;
        # stop() takes a few tens of ms): the worst moment for a budget that would count only
        # the slice under way.
        at(t0, 2.5)
        time.sleep(max(0.0, int(time.monotonic()) + 1.0 - time.monotonic() - 0.04))
        killed = time.monotonic()
        a.stop()
        at(killed, 1.0)
        # Still dead, but now countable: it listens again and answers every request 503.
        a.reset()
        a.behavior = Behavior(mode="status", status=503)
        a.start()
        at(killed, 4.0)
        trials = len(a.requests)  # over 3 s: one trial per cooldown per worker (+1 at the edges)
        a.behavior = Behavior()  # back, healthy
        back = time.monotonic()
        assert a.wait_for_requests(trials + 1, timeout=COOLDOWN + 1.0), "no traffic to the backend after it came back"
        back_after = time.monotonic() - back
        at(killed, 5.5)
        a_mark, b_mark = len(a.requests), len(b.requests)
    finally:
        for client in clients:
            client.join(timeout=20)
    errors = [outcome for _, outcome in results if outcome != 200]
    figures = {
        "calls": len(results),
        "errors": len(errors),
        "trials in 3 s": trials,
        "back after s": round(back_after, 2),
        "late share of a": (len(a.requests) - a_mark, len(b.requests) - b_mark),
    }
    assert not errors, f"{figures}: {errors[:5]}"
    assert len(results) > 200, figures
    assert 2 <= trials <= WORKERS * (3.0 / COOLDOWN + 1), figures
    assert back_after <= COOLDOWN + 1.0, figures
    a_late, b_late = figures["late share of a"]
    assert a_late >= 0.25 * (a_late + b_late), figures  # its circuits closed: a full share again
    assert "Traceback" not in server.log()


@pytest.mark.timeout(60)
def test_a_backend_answering_429_retry_after_1(gateway_server, redis_prefix, tmp_path, two) -> None:
    a, b = two
    models = (
        "  - {name: shared, deployments: [{backend: a}, {backend: b}]}\n"
        "  - {name: only-a, deployments: [{backend: a}]}\n"
        "  - {name: short, deployments: [{backend: a-short}]}\n"
    )
    backends = backend("a", a) + backend("b", b) + backend("a-short", a, total=2.0)
    routing = ROUTING + "  retry_budget: {ratio: 0.2, window: 10, min_retries: 10}\n"
    server = start(gateway_server, redis_prefix, tmp_path / "gateway.yaml", backends, models, routing)

    # Another deployment exists: served by it, at once; a gets nothing more inside its second.
    a.behavior = Behavior(mode="status", status=429, headers={"Retry-After": "1"})
    started = time.monotonic()
    for _ in range(10):
        call = time.monotonic()
        assert chat(server, "shared")[0] == 200
        assert time.monotonic() - call < 0.5
    assert time.monotonic() - started < 1.0
    assert 1 <= len(a.requests) <= WORKERS, len(a.requests)  # each worker learns it once
    time.sleep(1.2)  # every pause over

    # The only deployment: the same one again, once its Retry-After has passed.
    a.reset()
    a.script = [Behavior(mode="status", status=429, headers={"Retry-After": "1"})]
    started = time.monotonic()
    status, _, _ = chat(server, "only-a")
    elapsed = time.monotonic() - started
    assert status == 200 and 0.9 <= elapsed < 2.0, (status, elapsed)
    assert len(a.requests) == 2

    # A deadline (timeouts.total: 2 s) shorter than the Retry-After (5 s): fails fast, clearly.
    a.reset()
    a.behavior = Behavior(mode="status", status=429, headers={"Retry-After": "5"})
    for _ in range(4):
        started = time.monotonic()
        status, headers, answer = chat(server, "short")
        assert time.monotonic() - started < 0.5
        assert status == 429 and int(headers["Retry-After"]) >= 4, (status, dict(headers))
        error = error_envelope(answer)
        assert error["code"] in ("rate_limit_exceeded", "upstream_rate_limited"), error  # the backend's own, or ours
        if error["code"] == "upstream_rate_limited":
            assert "rate limited beyond this request's deadline" in error["message"]
    assert 1 <= len(a.requests) <= WORKERS  # then refused without calling it

    # Never more attempts than max_attempts (3), whatever both backends answer.
    for fake in (a, b):
        fake.reset()
        fake.behavior = Behavior(mode="status", status=503)
    status, _, answer = chat(server, "shared")
    assert status == 502 and error_envelope(answer)
    assert len(a.requests) + len(b.requests) == 3
    assert "Traceback" not in server.log()


def data_of(events: list[str]) -> list[dict | str]:
    out: list[dict | str] = []
    for event in events:
        (text,) = [line[len("data: ") :] for line in event.split("\n") if line.startswith("data: ")]
        out.append(text if text == "[DONE]" else json.loads(text))
    return out


def texts(events: list[dict | str]) -> list[str]:
    return [e["choices"][0]["delta"].get("content", "") for e in events if isinstance(e, dict) and e.get("choices")]


def read_stream(server: GatewayServer, model: str) -> tuple[list[dict | str], bytes]:
    stream = EventStream(server.url, CHAT, body(model, stream=True), timeout=15)
    try:
        assert stream.status == 200
        return data_of(stream.read_all()), stream.raw
    finally:
        stream.close()


@pytest.mark.timeout(60)
def test_streams_are_retried_before_their_first_event_never_after(gateway_server, redis_prefix, tmp_path, two) -> None:
    a, b = two
    # b is a's fallback (priority 1): a is always tried first (while its circuit is closed).
    deployments = "deployments: [{backend: a}, {backend: b, priority: 1}]"
    models = f"  - {{name: early, {deployments}}}\n  - {{name: late, {deployments}}}\n"
    server = start(gateway_server, redis_prefix, tmp_path / "gateway.yaml", backend("a", a) + backend("b", b), models)

    a.behavior = Behavior(mode="drop", drop_after=0)  # a head, then the connection closes: no event
    for _ in range(4):
        events, _ = read_stream(server, "early")
        assert events[-1] == "[DONE]"
        assert not [e for e in events if isinstance(e, dict) and "error" in e], events
        assert texts(events) == ["tok0 ", "tok1 ", "tok2 ", "tok3 ", "tok4 ", ""]  # one clean stream
    assert len(a.requests) >= 3 and len(b.requests) == 4  # a broke (until its circuit opened), b served

    a.reset(), b.reset()
    a.behavior = Behavior(mode="drop", drop_after=5, chunks=10)  # five events, then the connection drops
    events, raw = read_stream(server, "late")  # another route: a's circuit is closed there
    assert texts(events[:-1]) == ["tok0 ", "tok1 ", "tok2 ", "tok3 ", "tok4 "]
    assert all(raw.count(f"tok{i} ".encode()) == 1 for i in range(5)), raw  # no second copy of any text
    last = events[-1]
    assert isinstance(last, dict) and last["error"]["code"] == "upstream_stream_error", last
    assert "[DONE]" not in events
    assert len(a.requests) == 1 and not b.requests  # no retry, no fallback after the first byte
    assert "Traceback" not in server.log()


@pytest.mark.timeout(60)
def test_the_retry_budget_holds_under_a_total_outage(gateway_server, redis_prefix, tmp_path, two) -> None:
    a, b = two
    ratio, minimum = 0.2, 3
    models = "  - {name: shared, deployments: [{backend: a}, {backend: b}]}\n"
    # No circuit breaker: every request reaches the backends, only the budget limits retries.
    routing = (
        "  max_attempts: 3\n  backoff: {base: 0.01, max: 0.05}\n  circuit_breaker: {failures: 0}\n"
        f"  retry_budget: {{ratio: {ratio}, window: 10, min_retries: {minimum}}}\n"
    )
    server = start(gateway_server, redis_prefix, tmp_path / "gateway.yaml", backend("a", a) + backend("b", b), models, routing)
    a.behavior = b.behavior = Behavior(mode="status", status=503)
    results: list[tuple[float, object]] = []
    until = time.monotonic() + 4.0  # inside one budget window (10 s)
    clients = [threading.Thread(target=hammer, args=(server, "shared", until, results)) for _ in range(8)]
    for client in clients:
        client.start()
    for client in clients:
        client.join(timeout=20)
    requests = len(results)
    attempts = len(a.requests) + len(b.requests)
    assert {outcome for _, outcome in results} == {502}, set(results[:5])
    assert requests > 50, requests
    assert requests < attempts <= requests * (1 + ratio) + minimum * WORKERS, (requests, attempts)
    assert "Traceback" not in server.log()
