"""Routing by model to several backends (real fake upstreams on loopback, a real config file):
model names, retries before the first byte, fallbacks, Retry-After, circuit breaking."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import KEY_HEADERS
from tests.fakes.upstream import Behavior, FakeUpstream

CHAT = "/v1/chat/completions"
# The gateway's own quotas are not under test here.
PLENTY = {"rate_limit_general": "10000 per minute", "rate_limit_ai": "10000 per minute"}


@pytest.fixture
def two() -> Iterator[tuple[FakeUpstream, FakeUpstream]]:
    a, b = FakeUpstream().start(), FakeUpstream().start()
    yield a, b
    a.stop()
    b.stop()


def write_config(
    tmp_path: Path, a: FakeUpstream, b: FakeUpstream, routing: str = "", models: str | None = None, cooldown: float = 1
) -> str:
    path = tmp_path / "gateway.yaml"
    models = (
        models
        if models is not None
        else """
  - name: shared
    deployments:
      - {backend: a, model: model-a}
      - {backend: b, model: model-b}
  - name: only-a
    deployments:
      - {backend: a}
  - name: "llama-*"
    deployments:
      - {backend: b}
"""
    )
    path.write_text(
        f"""
backends:
  - name: a
    url: {a.base_url}
    timeouts: {{connect: 1, first_byte: 2, idle: 2, total: 5}}
  - name: b
    url: {b.base_url}
    timeouts: {{connect: 1, first_byte: 2, idle: 2, total: 5}}
models:{models}
routing:
  max_attempts: 3
  backoff: {{base: 0.01, max: 0.05}}
  retry_budget: {{ratio: 1.0, window: 10, min_retries: 10}}
  circuit_breaker: {{failures: 3, cooldown: {cooldown}}}
{routing}
"""
    )
    return str(path)


def chat(client: Any, model: str, stream: bool = False) -> Any:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": stream}
    return client.post(CHAT, data=json.dumps(body), headers={**KEY_HEADERS, "Content-Type": "application/json"})


def test_a_model_goes_to_its_backends_under_their_own_model_names(make_app, tmp_path, two) -> None:
    a, b = two
    client = make_app(**PLENTY, gateway_config=write_config(tmp_path, a, b)).test_client()
    for _ in range(10):
        assert chat(client, "shared").status_code == 200
    sent = [r.json()["model"] for r in a.requests] + [r.json()["model"] for r in b.requests]
    assert sorted(set(sent)) == ["model-a", "model-b"] and len(sent) == 10  # balanced over both, renamed
    assert a.requests and b.requests
    a.reset(), b.reset()
    assert chat(client, "only-a").status_code == 200
    assert [r.json()["model"] for r in a.requests] == ["only-a"] and not b.requests  # no model: the public name
    assert chat(client, "llama-3-8b").status_code == 200
    assert [r.json()["model"] for r in b.requests] == ["llama-3-8b"]  # a glob route


def test_an_unknown_model_is_a_404_without_calling_any_backend(make_app, tmp_path, two) -> None:
    a, b = two
    client = make_app(**PLENTY, gateway_config=write_config(tmp_path, a, b)).test_client()
    answer = chat(client, "gpt-nope")
    assert answer.status_code == 404
    assert answer.get_json()["error"]["code"] == "model_not_found"
    assert not a.requests and not b.requests


def test_models_lists_the_configured_names_without_calling_a_backend(make_app, tmp_path, two) -> None:
    a, b = two
    client = make_app(**PLENTY, gateway_config=write_config(tmp_path, a, b)).test_client()
    listing = client.get("/v1/models", headers=KEY_HEADERS)
    assert listing.status_code == 200
    assert [m["id"] for m in listing.get_json()["data"]] == ["shared", "only-a"]  # globs are not listed
    one = client.get("/v1/models/shared", headers=KEY_HEADERS)
    assert one.status_code == 200 and one.get_json()["id"] == "shared"
    assert client.get("/v1/models/model-a", headers=KEY_HEADERS).status_code == 404  # upstream names are internal
    assert not a.requests and not b.requests


def test_a_refused_connection_falls_over_to_the_other_backend_and_opens_the_circuit(make_app, tmp_path, two) -> None:
    a, b = two
    app = make_app(**PLENTY, gateway_config=write_config(tmp_path, a, b))
    client = app.test_client()
    a.stop()  # backend a dies: connections refused
    statuses = [chat(client, "shared").status_code for _ in range(30)]
    assert statuses == [200] * 30  # not one error for the client
    assert len(b.requests) == 30
    state = {
        row["backend"]: row
        for row in client.get("/admin/backends", headers=KEY_HEADERS).get_json()["data"]
        if row["route"] == "shared"
    }
    assert state["a"]["circuit"] == "open" and state["b"]["circuit"] == "closed"


def test_a_dead_backend_gets_one_trial_per_cooldown_and_traffic_again_once_back(make_app, tmp_path, two) -> None:
    a, b = two
    # A cooldown long enough that a loaded machine stays inside it for the first checks.
    client = make_app(**PLENTY, gateway_config=write_config(tmp_path, a, b, cooldown=6)).test_client()
    port = a.port
    a.stop()
    for _ in range(10):
        assert chat(client, "shared").status_code == 200
    opened = time.monotonic()  # the circuit opened during those calls: its cooldown ends before opened + 6
    a.start()  # back, on the same port
    assert a.port == port
    assert all(chat(client, "shared").status_code == 200 for _ in range(5))
    assert not a.requests  # still inside the cooldown: the circuit is open
    time.sleep(max(0.0, opened + 6.1 - time.monotonic()))
    for _ in range(10):
        assert chat(client, "shared").status_code == 200
    assert len(a.requests) >= 3  # the trial succeeded, the circuit closed, a takes its share again


def test_a_429_with_retry_after_is_served_by_the_other_backend_at_once(make_app, tmp_path, two) -> None:
    a, b = two
    client = make_app(**PLENTY, gateway_config=write_config(tmp_path, a, b)).test_client()
    a.behavior = Behavior(mode="status", status=429, headers={"Retry-After": "1"})
    started = time.monotonic()
    statuses = [chat(client, "shared").status_code for _ in range(10)]
    assert statuses == [200] * 10
    assert time.monotonic() - started < 1.0  # no wait for the Retry-After: b served
    assert len(a.requests) == 1  # once a said "in 1 s", it got nothing more inside that second


def test_an_answer_cut_off_inside_its_head_falls_over_and_counts_against_the_circuit(make_app, tmp_path, two) -> None:
    a, b = two
    fallback = "\n  - name: shared\n    deployments:\n      - {backend: a}\n      - {backend: b, priority: 1}\n"
    client = make_app(**PLENTY, gateway_config=write_config(tmp_path, a, b, models=fallback)).test_client()
    a.behavior = Behavior(mode="truncated_head", status=200)  # the connection closes mid-head: a died mid-answer
    assert [chat(client, "shared").status_code for _ in range(5)] == [200] * 5
    assert len(a.requests) == 3 and len(b.requests) == 5  # then its circuit opened (failures: 3)
    rows = client.get("/admin/backends", headers=KEY_HEADERS).get_json()["data"]
    assert {row["backend"]: row["circuit"] for row in rows} == {"a": "open", "b": "closed"}


def test_the_only_backend_answering_429_is_tried_again_after_its_retry_after(make_app, tmp_path, two) -> None:
    a, b = two
    client = make_app(**PLENTY, gateway_config=write_config(tmp_path, a, b)).test_client()
    a.script = [Behavior(mode="status", status=429, headers={"Retry-After": "1"})]
    started = time.monotonic()
    answer = chat(client, "only-a")
    elapsed = time.monotonic() - started
    assert answer.status_code == 200
    assert 0.9 <= elapsed < 2.0
    assert len(a.requests) == 2


def test_a_retry_after_beyond_the_deadline_fails_fast_with_the_backends_429(make_app, tmp_path, two) -> None:
    a, b = two
    client = make_app(**PLENTY, gateway_config=write_config(tmp_path, a, b)).test_client()
    a.behavior = Behavior(mode="status", status=429, headers={"Retry-After": "30"})
    started = time.monotonic()
    answer = chat(client, "only-a")
    assert time.monotonic() - started < 0.5
    assert answer.status_code == 429
    assert answer.headers["Retry-After"] == "30"  # the backend's own 429, passed through
    assert answer.get_json()["error"]["code"] == "rate_limit_exceeded"
    assert len(a.requests) == 1
    again = chat(client, "only-a")  # a asked for 30 s: the next request is refused without calling it
    assert again.status_code == 429 and again.get_json()["error"]["code"] == "upstream_rate_limited"
    assert int(again.headers["Retry-After"]) >= 29 and len(a.requests) == 1


def test_never_more_attempts_than_configured(make_app, tmp_path, two) -> None:
    a, b = two
    client = make_app(**PLENTY, gateway_config=write_config(tmp_path, a, b, routing="  expose_backend_header: true")).test_client()
    a.behavior = b.behavior = Behavior(mode="status", status=503)
    answer = chat(client, "shared")
    assert answer.status_code == 502  # the last backend failure, as a single backend's
    assert len(a.requests) + len(b.requests) == 3


def test_a_client_error_is_not_retried_and_not_a_backend_failure(make_app, tmp_path, two) -> None:
    a, b = two
    client = make_app(**PLENTY, gateway_config=write_config(tmp_path, a, b)).test_client()
    a.behavior = b.behavior = Behavior(mode="status", status=400)
    for _ in range(5):
        assert chat(client, "shared").status_code == 400
    assert len(a.requests) + len(b.requests) == 5
    rows = client.get("/admin/backends", headers=KEY_HEADERS).get_json()["data"]
    assert all(row["circuit"] == "closed" for row in rows)


def test_the_backend_header_only_when_the_operator_enables_it(make_app, tmp_path, two) -> None:
    a, b = two
    hidden = make_app(**PLENTY, gateway_config=write_config(tmp_path, a, b)).test_client()
    assert "X-Gateway-Backend" not in chat(hidden, "only-a").headers
    (tmp_path / "shown").mkdir()
    shown = make_app(
        **PLENTY, gateway_config=write_config(tmp_path / "shown", a, b, routing="  expose_backend_header: true")
    ).test_client()
    assert chat(shown, "only-a").headers["X-Gateway-Backend"] == "a"
